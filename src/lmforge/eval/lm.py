"""What an evaluation talks to: a checkpoint in this process, or a server (`endpoint.py`).

Tasks only ask two things of a model, the harness's two questions: "how likely is this
continuation after this context" and "what do you write after this prompt". `LocalLM`
answers them with a loaded checkpoint; `lmforge.eval.endpoint.EndpointLM` with any
OpenAI-compatible server. Either can be handed to every task in `lmforge.eval`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lmforge.eval.scoring import Loglik, score_pairs
from lmforge.infer.generate import GenerationConfig, complete, prepare_for_decoding
from lmforge.infer.load import LoadedRun, load_run


@dataclass
class Generated:
    text: str
    finish_reason: str  # "stop" or "length"
    truncated: bool = False  # the prompt was cut on the left to fit the context


class EvalLM(Protocol):
    def loglikelihood(
        self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 16, progress: bool = False
    ) -> list[Loglik]: ...

    def generate(
        self, prompts: Sequence[str], cfg: GenerationConfig, *, progress: bool = False
    ) -> list[Generated]: ...

    def describe(self) -> dict[str, Any]: ...


class LocalLM:
    """A checkpoint loaded in this process (`load_run`)."""

    def __init__(self, run: LoadedRun, run_dir: str | Path | None = None) -> None:
        self.run = run
        self.model, self.tokenizer = run.model, run.tokenizer
        self.run_dir = Path(run_dir) if run_dir is not None else run.checkpoint.parent.parent
        self._decoding_ready = False

    @classmethod
    def from_run(cls, run_dir: str | Path, *, which: str = "best", device: str = "auto"):
        from lmforge.train.trainer import resolve_device

        return cls(
            load_run(
                run_dir,
                which=which,
                device=resolve_device(device),
                families={"gpt"},
                command="task evaluation",
            ),
            run_dir,
        )

    @property
    def max_seq_len(self) -> int:
        return self.model.config.max_seq_len

    def loglikelihood(
        self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 16, progress: bool = False
    ) -> list[Loglik]:
        return score_pairs(
            self.model, self.tokenizer, pairs, batch_size=batch_size, progress=progress
        )

    def generate(
        self, prompts: Sequence[str], cfg: GenerationConfig, *, progress: bool = False
    ) -> list[Generated]:
        if not self._decoding_ready:
            # Faster batch-1 decoding; the weights' values stay, so scores stay (to ~1e-7).
            prepare_for_decoding(self.model)
            self._decoding_ready = True
        items: Any = prompts
        if progress:
            from tqdm.auto import tqdm

            items = tqdm(prompts, desc="generating", unit="prompt")
        out = []
        for prompt in items:
            done = complete(self.model, self.tokenizer, prompt, cfg)
            out.append(
                Generated(
                    text=done.text,
                    finish_reason=done.finish_reason,
                    truncated=done.prompt_tokens > self.max_seq_len,
                )
            )
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "checkpoint",
            "run": str(self.run_dir),
            "checkpoint": self.run.checkpoint.name,
            "max_seq_len": self.max_seq_len,
        }
