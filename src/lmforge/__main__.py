"""`python -m lmforge` runs the CLI (and is what `torchrun -m lmforge` launches)."""

from lmforge.cli import main

raise SystemExit(main())
