"""An lm-evaluation-harness `LM` for lmforge checkpoints, so the harness's own tasks run on them.

    pip install 'lmforge[harness]'

    import lm_eval
    from lmforge.eval.harness import LMForgeLM

    lm = LMForgeLM(run="runs/x", checkpoint="best", batch_size=16)
    results = lm_eval.simple_evaluate(model=lm, tasks=["hellaswag"], num_fewshot=0)

Importing this module also registers the class as the harness model `lmforge`
(``simple_evaluate(model="lmforge", model_args="run=runs/x")``).

The harness's tasks fetch their data sets from the Hugging Face Hub; without network access
they run only from a local copy (a warm `datasets` cache with ``HF_DATASETS_OFFLINE=1``, or a
task YAML whose `dataset_path: json` points at local files).

The three request types are answered by lmforge's own code, so a score here and from
`lmforge eval --task` mean the same: `loglikelihood` by `lmforge.eval.scoring` (the harness's
tokenization and truncation), `loglikelihood_rolling` by its rolling windows after a BOS or
an EOS (the harness's `prefix_token_id`), `generate_until` by `lmforge.infer.generate` (greedy
unless `do_sample`, stopping at the `until` strings and EOS). `lm-eval` is an optional extra,
imported here only: the rest of lmforge never needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmforge.deps import MissingDependency, install_hint
from lmforge.eval.lm import LocalLM
from lmforge.eval.scoring import sequence_logprobs
from lmforge.infer.generate import GenerationConfig

DEFAULT_MAX_GEN_TOKS = 256  # the harness's default for generate_until

try:
    from lm_eval.api.model import LM as _HarnessLM
    from lm_eval.api.registry import register_model as _register_model
except ImportError:  # the optional extra is not installed: the class below says so when built
    _HarnessLM = object
    _register_model = None


def rolling_loglikelihood(lm: LocalLM, text: str) -> float:
    """log p(text) after what an empty context is (`encode_pair`: a BOS, else an EOS).

    Every token is predicted once, with as much context as fits.
    """
    tok = lm.tokenizer
    ids = [*(tok.encode_prompt("") or [tok.eos_id]), *tok.encode(text)]
    scored = sequence_logprobs(lm.model, ids)
    return float(sum(v for v in scored.logprobs[1:] if v is not None))


def generation_config(gen_kwargs: dict[str, Any] | None) -> GenerationConfig:
    """The harness's `generate_until` keyword arguments as a `GenerationConfig`."""
    kw = dict(gen_kwargs or {})
    until = kw.pop("until", None)
    stops = [until] if isinstance(until, str) else list(until or [])
    max_new = DEFAULT_MAX_GEN_TOKS
    for name in ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens"):
        if kw.get(name) is not None:
            max_new = int(kw[name])
            break
    do_sample = bool(kw.get("do_sample", False))
    temperature = float(kw.get("temperature", 1.0 if do_sample else 0.0))
    if not do_sample:
        temperature = 0.0
    return GenerationConfig(
        max_new_tokens=max_new,
        temperature=temperature,
        top_k=int(kw.get("top_k") or 0),
        top_p=float(kw.get("top_p") or 1.0),
        seed=kw.get("seed"),
        stop=tuple(s for s in stops if s),
    )


class LMForgeLM(_HarnessLM):  # type: ignore[misc, valid-type]
    """lm-evaluation-harness `LM` backed by an lmforge run directory."""

    def __init__(
        self,
        run: str | Path | None = None,
        checkpoint: str = "best",
        device: str = "auto",
        batch_size: int | str = 16,
        local: LocalLM | None = None,
        **_: Any,  # the harness passes extra settings (max_length, ...) that do not apply
    ) -> None:
        if _register_model is None:
            raise MissingDependency(install_hint("lm_eval", "harness", "lm-eval"))
        super().__init__()
        if local is None:
            if run is None:
                raise ValueError("give the run directory: LMForgeLM(run='runs/x')")
            local = LocalLM.from_run(run, which=checkpoint, device=device)
        self.local = local
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16

    @property
    def tokenizer_name(self) -> str:
        return f"lmforge-{self.local.tokenizer.fingerprint[:16]}"

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list:
        pairs = [tuple(r.args) for r in requests]
        scores = self.local.loglikelihood(
            pairs, batch_size=self.batch_size, progress=not disable_tqdm
        )
        return [(s.logprob, s.is_greedy) for s in scores]

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list:
        return [rolling_loglikelihood(self.local, r.args[0]) for r in requests]

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for r in requests:
            context, gen_kwargs = r.args
            (done,) = self.local.generate([context], generation_config(gen_kwargs))
            out.append(done.text)
        return out


if _register_model is not None:
    _register_model("lmforge")(LMForgeLM)
