"""Small corpora bundled with lmforge, so a first run needs no download.

Each corpus is a folder holding `input.txt` and a `PROVENANCE.md` saying where it came from.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from lmforge.data.document import DataError

BUNDLED = {
    "tinyshakespeare": (
        "Tiny Shakespeare: 1.1 MB of plays as one plain-ASCII text file (40,000 lines), "
        "karpathy/char-rnn's input.txt, the same file as nanoGPT's shakespeare_char; "
        "public domain"
    ),
}


def corpus_path(name: str) -> Path:
    """Path of the text file of the bundled corpus `name` (see `BUNDLED`)."""
    if name not in BUNDLED:
        raise DataError(
            f"no bundled corpus named {name!r}; available: {', '.join(sorted(BUNDLED))}"
        )
    resource = files(__name__).joinpath(name, "input.txt")
    # Installed as plain files (wheel or editable), the resource is a real path already.
    path = Path(str(resource))
    if not path.is_file():
        raise DataError(
            f"bundled corpus {name!r} is missing at {path}; reinstall lmforge "
            "(pip install --force-reinstall lmforge)"
        )
    return path
