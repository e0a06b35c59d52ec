"""model stage: the model families and their configs.

Four families, one config dataclass and one model file each, chosen by `[model] family` in a
recipe (the default is "gpt"):

| family    | config          | model     | file          | trained as                         |
|-----------|-----------------|-----------|---------------|------------------------------------|
| `gpt`     | `GPTConfig`     | `GPT`     | `gpt.py`      | next-token LM (classic or modern)  |
| `bert`    | `EncoderConfig` | `Encoder` | `encoder.py`  | masked LM                          |
| `seq2seq` | `Seq2SeqConfig` | `Seq2Seq` | `seq2seq.py`  | translation (source -> target)     |
| `rnn`     | `RNNConfig`     | `RNNLM`   | `rnn.py`      | next-token LM, truncated BPTT      |

The families other than GPT are imported only when asked for, so the common path stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from lmforge.model.gpt import GPT, GPTConfig
from lmforge.model.layers import KVCache

# family -> (module, config class, model class)
FAMILIES: dict[str, tuple[str, str, str]] = {
    "gpt": ("lmforge.model.gpt", "GPTConfig", "GPT"),
    "bert": ("lmforge.model.encoder", "EncoderConfig", "Encoder"),
    "seq2seq": ("lmforge.model.seq2seq", "Seq2SeqConfig", "Seq2Seq"),
    "rnn": ("lmforge.model.rnn", "RNNConfig", "RNNLM"),
}


class WrongFamilyError(ValueError):
    """A checkpoint of one model family given to a command that needs another."""


def _family_parts(family: str) -> tuple[type, type]:
    if family not in FAMILIES:
        raise ValueError(f"model.family={family!r} is not one of {sorted(FAMILIES)}")
    module, config_name, model_name = FAMILIES[family]
    mod = importlib.import_module(module)
    return getattr(mod, config_name), getattr(mod, model_name)


def config_class(family: str) -> type:
    """The config dataclass of `family`."""
    return _family_parts(family)[0]


def family_of(model_config: dict[str, Any] | Any) -> str:
    """The family a saved `[model]` table (dict) or a config object belongs to.

    Runs saved before families existed have no `family` key: they are GPTs.
    """
    if isinstance(model_config, dict):
        return model_config.get("family", "gpt")
    return getattr(model_config, "family", "gpt")


def model_config_from_dict(data: dict[str, Any]) -> Any:
    """A family's config object from a saved `[model]` table."""
    return config_class(family_of(data))(**data)


def build_model(cfg: Any) -> nn.Module:
    """The model of a family config object."""
    return _family_parts(family_of(cfg))[1](cfg)


def require_family(model_config: dict[str, Any] | Any, allowed: set[str], what: str) -> str:
    """Raise a clear error unless the model belongs to one of `allowed` families."""
    family = family_of(model_config)
    if family not in allowed:
        raise WrongFamilyError(
            f"{what} needs a {' or '.join(sorted(allowed))} model, but this run is a "
            f"{family!r} model; {_USE_INSTEAD.get(family, '')}".rstrip("; ")
        )
    return family


_USE_INSTEAD = {
    "seq2seq": "use `lmforge translate` to decode with it and `lmforge eval --bleu` to score it",
    "bert": "a masked LM does not generate text; use `lmforge eval` for its MLM loss and accuracy",
    "rnn": "an RNN supports `lmforge generate` and `lmforge eval`",
    "gpt": "",
}

__all__ = [
    "FAMILIES",
    "GPT",
    "GPTConfig",
    "KVCache",
    "WrongFamilyError",
    "build_model",
    "config_class",
    "family_of",
    "model_config_from_dict",
    "require_family",
]
