"""`lmforge generate` and `lmforge serve`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lmforge.cli import _checkpoint_arg, command


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = wilder")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0 = all)")
    p.add_argument(
        "--top-p", type=float, default=1.0, help="sample among the likeliest tokens summing to p"
    )
    p.add_argument(
        "--stop", action="append", default=[], help="stop before this string (repeatable)"
    )
    p.add_argument("--seed", type=int, help="random seed, for a reproducible sample")


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory written by `lmforge train`")
    p.add_argument("--prompt", default="", help="text to continue (default: start a document)")
    p.add_argument(
        "--chat",
        action="store_true",
        help="treat --prompt as a user message: wrap it in the run's chat template "
        "(tokenizer/chat_template.jinja, else the default) with the generation prompt, and "
        "print only the answer (for runs tuned with `lmforge finetune sft`)",
    )
    p.add_argument("--system", default="", help="with --chat: a system message first")
    _sampling_args(p)
    p.add_argument("--no-cache", action="store_true", help="recompute the context each step")
    _checkpoint_arg(p)


@command("generate", help="sample text from a run, streamed to stdout", args=_generate_args)
def cmd_generate(a: argparse.Namespace) -> int:
    from lmforge.infer.generate import (
        Completion,
        GenerationConfig,
        prepare_for_decoding,
        stream_text,
    )
    from lmforge.infer.load import load_run
    from lmforge.train.trainer import resolve_device

    device = resolve_device(a.device)
    stops = tuple(a.stop)
    if a.chat:
        model, tokenizer, prompt, end = _chat_prompt(a, device)
        stops += (end,) if end else ()
    else:
        run = load_run(
            a.run, which=a.checkpoint, device=device, families={"gpt", "rnn"},
            command="lmforge generate",
        )  # fmt: skip
        model, tokenizer, prompt = run.model, run.tokenizer, a.prompt
        sys.stdout.write(a.prompt)
    prepare_for_decoding(model)
    cfg = GenerationConfig(
        max_new_tokens=a.max_new_tokens,
        temperature=a.temperature,
        top_k=a.top_k,
        top_p=a.top_p,
        stop=stops,
        seed=a.seed,
        use_cache=not a.no_cache,
    )
    for piece in stream_text(model, tokenizer, prompt, cfg):
        if isinstance(piece, Completion):
            break
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _chat_prompt(a: argparse.Namespace, device: Any) -> tuple[Any, Any, list[int], str | None]:
    """`generate --chat`: the model, its tokenizer, the ids of --prompt as a user turn (after
    --system) in the run's own chat template with the generation prompt, and the text that
    ends an assistant turn where it is not an EOS token."""
    from lmforge.finetune.sft import is_adapter_run, load_sft_model, prompt_ids
    from lmforge.infer.load import load_run
    from lmforge.tokenizer.chat import template_for_run, turn_end
    from lmforge.tokenizer.tokenizer import load_tokenizer

    if is_adapter_run(a.run):  # LoRA adapters saved without --merge
        model, _ = load_sft_model(a.run, device)
    else:
        model = load_run(
            a.run, which=a.checkpoint, device=device, families={"gpt"}, command="generate --chat"
        ).model
    tokenizer = load_tokenizer(Path(a.run) / "tokenizer")
    template = template_for_run(Path(a.run) / "tokenizer")
    messages = [{"role": "system", "content": a.system}] if a.system else []
    messages.append({"role": "user", "content": a.prompt})
    room = max(1, model.config.max_seq_len - a.max_new_tokens)
    ids = prompt_ids(tokenizer, template, messages, room)
    return model, tokenizer, ids, turn_end(template, tokenizer)


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory written by `lmforge train`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument(
        "--max-prompt-tokens", type=int, default=0, help="longest prompt accepted (0 = context)"
    )
    p.add_argument(
        "--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask"
    )
    p.add_argument("--model-name", help="the model id reported by /v1/models (default: run name)")
    _checkpoint_arg(p)


@command(
    "serve", help="serve a run over HTTP (/generate and OpenAI-compatible /v1)", args=_serve_args
)
def cmd_serve(a: argparse.Namespace) -> int:
    from lmforge.serve.app import ServeConfig, serve

    cfg = ServeConfig(
        host=a.host,
        port=a.port,
        max_prompt_tokens=a.max_prompt_tokens,
        max_tokens_limit=a.max_tokens_limit,
        model_name=a.model_name or Path(a.run).resolve().name,
        checkpoint=a.checkpoint,
        device=a.device,
    )
    serve(a.run, cfg)
    return 0
