"""Optional dependencies: importing one where it is needed, or saying how to install it.

Some stages need packages that most users never install (`transformers` for Hugging Face
interop, `gguf` for llama.cpp files, `openai` for evaluating a server, `lm-eval` for the
harness adapter). They are imported inside the functions that use them, through `require`,
so a missing one gives a single line naming the lmforge extra that brings it.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependency(ImportError, ValueError):
    """An optional package is not installed (a ValueError too, so the CLI prints one line)."""


def install_hint(module: str, extra: str, package: str | None = None) -> str:
    """What to run to get `module`: the lmforge extra, or the package alone."""
    return (
        f"this needs the `{module}` package; install it with "
        f"`pip install 'lmforge[{extra}]'` (or `pip install {package or module}`)"
    )


def require(module: str, extra: str, *, package: str | None = None) -> ModuleType:
    """Import `module`, or raise MissingDependency saying which lmforge extra installs it.

    `package` is the name pip knows it by, where that differs (`lm-eval` for `lm_eval`).
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(install_hint(module, extra, package)) from None
