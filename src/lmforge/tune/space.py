"""Search spaces: a TOML file of ranges and choices over recipe fields, as Optuna distributions.

A space file mirrors a recipe: one table per section, one entry per field to search. Any field
that `lmforge train` accepts can be searched, the `model.depth` and `model.preset` shorthands
included:

    [optim]
    lr = { low = 1e-4, high = 1e-2, log = true }   # a float range on a log scale
    weight_decay = { low = 0.0, high = 0.2 }       # a float range
    [schedule]
    warmup_steps = { low = 0, high = 200, step = 50 }   # integer ends: an int range
    kind = ["cosine", "wsd"]                        # choices (or { choices = [...] })
    [model]
    depth = [2, 3, 4]

Each entry becomes an Optuna distribution named by its dotted field (`optim.lr`), which is
also how trials, the dashboard and `best.toml` name it. Before any trial runs, every end of
every range and every choice is put into the recipe alone and checked by `load_run_config`,
so a misspelt field or a value of the wrong type is an error naming the space file and the
field. Values that only fail together (a width the head count does not divide) are left to
the trials, which record them as failed with the reason.

The grid sampler needs finite values: choices, integer ranges, or float ranges with a `step`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmforge.config import ConfigError, load_toml

# A grid with more points than this is almost surely a range given by mistake.
MAX_GRID_POINTS = 10_000

_SPEC_KEYS = ("low", "high", "log", "step", "choices", "type")


class SpaceError(ConfigError):
    """A search space that cannot be searched: names the file, the field and what to change."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_param(name: str, spec: Any, source: str) -> ParamSpec:
    where = f"{source}: {name}"
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise SpaceError(
            f"{where} = {spec!r}: give a range {{ low = ..., high = ... }} or a list of choices; "
            "a fixed value belongs in the recipe (or as a --section.field override)"
        )
    unknown = sorted(set(spec) - set(_SPEC_KEYS))
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {unknown}; known keys are {list(_SPEC_KEYS)}")
    if "choices" in spec:
        extra = sorted(set(spec) - {"choices", "type"})
        if extra:
            raise SpaceError(f"{where}: choices cannot be combined with {extra}")
        return ParamSpec(name=name, kind="categorical", choices=tuple(spec["choices"]), where=where)
    if "low" not in spec or "high" not in spec:
        raise SpaceError(f"{where}: a range needs both low and high (or give choices = [...])")
    low, high = spec["low"], spec["high"]
    if not (_is_number(low) and _is_number(high)):
        raise SpaceError(f"{where}: low and high must be numbers, got {low!r} and {high!r}")
    kind = spec.get("type")
    if kind is None:
        step = spec.get("step")
        integral = all(isinstance(v, int) for v in (low, high)) and (
            step is None or isinstance(step, int)
        )
        kind = "int" if integral else "float"
    if kind not in ("int", "float"):
        raise SpaceError(f"{where}: type must be 'int' or 'float', got {kind!r}")
    return ParamSpec(
        name=name,
        kind=kind,
        low=low,
        high=high,
        log=spec.get("log", False),
        step=spec.get("step"),
        where=where,
    )


def parse_space(data: dict[str, Any], source: str = "space") -> SearchSpace:
    """A SearchSpace from the parsed TOML of a space file (`source` names it in errors)."""
    params = []
    for section, fields in data.items():
        looks_like_spec = (
            isinstance(fields, dict) and bool(fields) and set(fields) <= set(_SPEC_KEYS)
        )
        if not isinstance(fields, dict) or looks_like_spec:
            raise SpaceError(
                f"{source}: {section!r} at the top level: put each field under its section, "
                "e.g. [optim] lr = { low = 1e-4, high = 1e-2, log = true }"
            )
        for field_name, spec in fields.items():
            params.append(_parse_param(f"{section}.{field_name}", spec, source))
    if not params:
        raise SpaceError(f"{source}: the space is empty; add a field to search, e.g. [optim] lr")
    return SearchSpace(params=tuple(params), source=source)


def load_space(path: str | Path) -> SearchSpace:
    """Read a space TOML file (see the module docstring for its form)."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"search space {path} does not exist")
    try:
        data = load_toml(path)
    except ConfigError as e:
        raise SpaceError(str(e).replace("recipe", "search space", 1)) from None
    return parse_space(data, str(path))


def validate_space(
    space: SearchSpace, recipe: str | Path | None, overrides: dict[str, Any] | None = None
) -> None:
    """Check every end of every range and every choice on the recipe, before any trial runs.

    Each value is set alone on top of the recipe and its overrides, so the error names the one
    field and value that does not fit (a field the config does not have, a wrong type, a value
    its section refuses).
    """
    from lmforge.train.trainer import load_run_config

    overrides = dict(overrides or {})
    try:
        load_run_config(recipe, overrides)
    except ConfigError as e:
        raise ConfigError(f"the recipe of the sweep does not load: {e}") from None
    for param in space.params:
        for value in param.probe_values():
            try:
                load_run_config(recipe, {**overrides, param.name: value})
            except ConfigError as e:
                raise SpaceError(
                    f"{param.where} = {value!r} does not fit the recipe: {e}; fix the field "
                    "name or its values in the search space"
                ) from None


@dataclass(kw_only=True)
class ParamSpec:
    """One searched field: a float or int range (optionally log or stepped) or choices."""

    name: str  # dotted recipe field, e.g. "optim.lr"
    kind: Literal["float", "int", "categorical"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    where: str = ""  # "space.toml: optim.lr", for errors

    def __post_init__(self) -> None:
        where = self.where or self.name
        if self.kind == "categorical":
            if not self.choices:
                raise SpaceError(f"{where}: choices is empty; list at least one value")
            for choice in self.choices:
                if not (choice is None or isinstance(choice, (bool, int, float, str))):
                    raise SpaceError(
                        f"{where}: choice {choice!r} is not a number, string or boolean; "
                        "Optuna stores only those (search list fields like optim.betas through "
                        "their own recipe, or not at all)"
                    )
            if len(set(map(repr, self.choices))) != len(self.choices):
                raise SpaceError(f"{where}: choices {list(self.choices)} repeat a value")
            return
        if not isinstance(self.log, bool):
            raise SpaceError(f"{where}: log must be true or false, got {self.log!r}")
        if self.low > self.high:
            raise SpaceError(f"{where}: low={self.low} is above high={self.high}")
        if self.log and self.low <= 0:
            raise SpaceError(f"{where}: a log range needs low > 0, got low={self.low}")
        if self.step is not None:
            if not _is_number(self.step) or self.step <= 0:
                raise SpaceError(f"{where}: step must be a positive number, got {self.step!r}")
            if self.log and (self.kind == "float" or self.step != 1):
                raise SpaceError(
                    f"{where}: a log range cannot have a step (Optuna samples it continuously); "
                    "drop log or step, or list the values as choices"
                )
        if self.kind == "int":
            for key in ("low", "high", "step"):
                value = getattr(self, key)
                if value is not None and not float(value).is_integer():
                    raise SpaceError(f"{where}: an int range needs integer {key}, got {value}")
            self.low, self.high = int(self.low), int(self.high)
            self.step = int(self.step) if self.step is not None else None
        else:
            self.low, self.high = float(self.low), float(self.high)

    def distribution(self) -> Any:
        """The Optuna distribution this field is sampled from."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def grid_values(self) -> list[Any]:
        """The finite values a grid search runs through, or an error saying what to change."""
        if self.kind == "categorical":
            return list(self.choices)
        step = self.step or 1
        if self.kind == "float" and self.step is None:
            raise SpaceError(
                f"{self.where or self.name} is a float range [{self.low}, {self.high}]: the grid "
                "sampler needs finite values; give choices = [...] (log-spaced values by hand "
                "for a log range) or a step, or use --sampler tpe, random or gp"
            )
        n = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        if n > MAX_GRID_POINTS:
            raise SpaceError(
                f"{self.where or self.name}: the range gives {n:,} grid values; raise its step "
                "or list fewer choices"
            )
        if self.kind == "int":
            return [self.low + i * step for i in range(n)]
        return [round(self.low + i * step, 12) for i in range(n)]

    def probe_values(self) -> list[Any]:
        """The values checked against the recipe before a sweep: each end, or each choice."""
        if self.kind == "categorical":
            return list(self.choices)
        return [self.low] if self.low == self.high else [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        """Sample this field in an Optuna trial."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.name, self.low, self.high, step=self.step or 1, log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict[str, Any]:
        """The field as it would be written in a space file (for comparing studies)."""
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


@dataclass(kw_only=True)
class SearchSpace:
    """The searched fields of a sweep, in the order the space file lists them."""

    params: tuple[ParamSpec, ...]
    source: str = "space"

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise SpaceError(f"{self.source}: field(s) {repeated} are listed twice")

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def suggest(self, trial: Any) -> dict[str, Any]:
        """{dotted field: value} for one trial, sampled by the study's sampler."""
        return {p.name: p.suggest(trial) for p in self.params}

    def grid(self) -> dict[str, list[Any]]:
        """Every field's values for Optuna's GridSampler (raises SpaceError for a float range)."""
        grid = {p.name: p.grid_values() for p in self.params}
        size = math.prod(len(v) for v in grid.values())
        if size > MAX_GRID_POINTS:
            raise SpaceError(
                f"{self.source}: the grid has {size:,} points; list fewer choices or use "
                "--sampler tpe or random"
            )
        return grid

    def to_dict(self) -> dict[str, Any]:
        return {p.name: p.to_dict() for p in self.params}
