"""Decoding speed of lmforge's KV-cached `generate_ids` against Hugging Face's `generate`.

Both run the same weights (ours converted with `to_hf_gpt2`), batch 1, from the same prompt,
with EOS disabled so each produces exactly `--new-tokens` tokens; tokens/s counts the new
tokens over the whole call (prefill included). Greedy and sampling (temperature 1, no top-k or
top-p) are timed separately; repeats alternate between the two libraries (and which goes
first), and the median is reported. The greedy outputs are compared token by token: on the same
weights both should pick the same argmax (a near-tie can flip under float rounding, so the
length of the common prefix is reported when they differ).

    python benchmarks/generate_speed.py
    python benchmarks/generate_speed.py --new-tokens 200 --shape 4,4,128,512,65

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import transformers

from lmforge.export.hf_gpt2 import to_hf_gpt2
from lmforge.infer.generate import GenerationConfig, generate_ids, prepare_for_decoding
from lmforge.model.gpt import GPT, GPTConfig


def parse_shape(text: str) -> GPTConfig:
    """`n_layers,n_heads,d_model,max_seq_len,vocab_size` -> GPTConfig."""
    try:
        n_layers, n_heads, d_model, max_seq_len, vocab_size = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--shape {text!r}: expected five integers n_layers,n_heads,d_model,ctx,vocab"
        ) from None
    return GPTConfig(
        vocab_size=vocab_size,
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        max_seq_len=max_seq_len,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_lmforge(model: GPT, prompt: list[int], n: int, sample: bool) -> list[int]:
    cfg = GenerationConfig(
        max_new_tokens=n, temperature=1.0 if sample else 0.0, seed=0, stop_at_eos=False
    )
    return list(generate_ids(model, prompt, cfg))


@torch.inference_mode()
def run_hf(hf, prompt: list[int], n: int, sample: bool) -> list[int]:
    device = hf.transformer.wte.weight.device
    ids = torch.tensor([prompt], device=device)
    if sample:
        torch.manual_seed(0)
    out = hf.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=sample,
        temperature=1.0 if sample else None,
        top_k=0 if sample else None,  # HF's default top_k is 50; ours samples the whole vocab
        top_p=1.0 if sample else None,
        use_cache=True,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def timed(run, sample: bool, device: torch.device) -> tuple[float, list[int]]:
    sync(device)
    t0 = time.perf_counter()
    tokens = run(sample)
    sync(device)
    return time.perf_counter() - t0, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--new-tokens", type=int, default=500)
    parser.add_argument(
        "--shape",
        type=parse_shape,
        default=parse_shape("6,6,384,1024,65"),
        help="n_layers,n_heads,d_model,ctx,vocab (default 6,6,384,1024,65)",
    )
    parser.add_argument("--prompt-tokens", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg: GPTConfig = args.shape
    if args.prompt_tokens + args.new_tokens > cfg.max_seq_len:
        parser.error(
            f"prompt ({args.prompt_tokens}) + new tokens ({args.new_tokens}) exceed the "
            f"context ({cfg.max_seq_len}); HF would fail and lmforge would slide its window"
        )

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = GPT(cfg).to(device).eval()
    hf = to_hf_gpt2(model, attn_implementation="sdpa").eval()
    prepare_for_decoding(model)  # what `lmforge generate` and `serve` do after loading
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, cfg.vocab_size, (args.prompt_tokens,), generator=gen).tolist()
    n = args.new_tokens
    runners = {
        "lmforge": lambda sample: run_lmforge(model, prompt, n, sample),
        "hf": lambda sample: run_hf(hf, prompt, n, sample),
    }

    # Warm up allocators and one-time setup (HF builds its generation config on first call).
    run_lmforge(model, prompt, 8, False)
    run_hf(hf, prompt, 8, False)

    results: dict = {}
    greedy_tokens: dict[str, list[int]] = {}
    for mode in ("greedy", "sample"):
        times = {k: [] for k in runners}
        for r in range(args.repeats):
            for key in list(runners) if r % 2 == 0 else list(runners)[::-1]:
                seconds, tokens = timed(runners[key], mode == "sample", device)
                if len(tokens) != n:
                    raise RuntimeError(f"{key} {mode} produced {len(tokens)} tokens, not {n}")
                times[key].append(seconds)
                if mode == "greedy":
                    greedy_tokens[key] = tokens
        speeds = {k: n / statistics.median(v) for k, v in times.items()}
        results[mode] = {
            "lmforge_tokens_per_s": round(speeds["lmforge"], 1),
            "hf_tokens_per_s": round(speeds["hf"], 1),
            "ratio_lmforge_over_hf": round(speeds["lmforge"] / speeds["hf"], 3),
            "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
        }

    ours, theirs = greedy_tokens["lmforge"], greedy_tokens["hf"]
    match = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), n))
    out = {
        "benchmark": "generate_speed",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "shape": {
            "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads,
            "d_model": cfg.d_model,
            "max_seq_len": cfg.max_seq_len,
            "vocab_size": cfg.vocab_size,
            "params": model.num_params(),
        },
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": n,
        "repeats": args.repeats,
        "greedy_identical": ours == theirs,
        "greedy_match_length": match,
        **results,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
