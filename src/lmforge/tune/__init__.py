"""Hyperparameter search over recipe fields, on Optuna: `lmforge tune`.

`space.py` reads a search-space TOML onto Optuna distributions and checks it against the
recipe; `search.py` runs the study (samplers, pruners, workers, resume); `report.py` writes the
table of trials, the best config as a recipe, and the plots.
"""

from lmforge.tune.search import TuneConfig, run_sweep
from lmforge.tune.space import SearchSpace, SpaceError, load_space, parse_space

__all__ = ["SearchSpace", "SpaceError", "TuneConfig", "load_space", "parse_space", "run_sweep"]
