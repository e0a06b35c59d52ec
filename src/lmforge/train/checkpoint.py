"""Checkpoints: safetensors weights, JSON config, and everything `--resume` needs.

A run directory holds `checkpoints/step-NNNNNNN/` folders, each complete in itself:

    model.safetensors        the weights (tied LM head stored once, as tok_emb.weight)
    config.json              the resolved run config (model shape, tokenizer, training)
    train_state.safetensors  optimizer tensors and the torch RNG state
    train_state.json         step, tokens seen, best val loss, optimizer hyperparameters

and `checkpoints/index.json` naming the `last` and `best` ones. A folder is written under a
temporary name and renamed into place, then the index is replaced atomically: a crash at any
moment leaves the previous checkpoint intact. Nothing is ever unpickled.

A checkpoint of a distributed run (see `lmforge.train.distributed`) holds the same
`model.safetensors`, `config.json` and `train_state.json`, but its optimizer state (and the
model again, sharded) is in `sharded/`, written by every rank through
`torch.distributed.checkpoint`, with one `rng-rank-N.safetensors` per rank. It resumes at any
world size, and the folder is renamed into place only once every rank has written its part.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.io import write_json_atomic
from lmforge.train import distributed as D


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, or does not fit the model."""


def model_state(model: nn.Module, world: D.World | None = None) -> dict[str, torch.Tensor]:
    """The state dict to save: tensors shared between names (tied weights) appear once.

    In a distributed run this is a collective (FSDP gathers the shards): every rank calls it.
    """
    # Parameters are listed once however many modules share them; buffers follow by name.
    names = {name for name, _ in model.named_parameters()}
    params = {id(p) for p in model.parameters()}
    names |= {name for name, b in model.named_buffers() if id(b) not in params}
    state = D.full_model_state(model, world or D.World())
    return {k: v.detach().contiguous().cpu() for k, v in state.items() if k in names}


def load_model_weights(model: nn.Module, path: str | Path) -> None:
    """Load safetensors weights into `model`, explaining any mismatch."""
    path = Path(path)
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"no weights file at {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({e}); use another checkpoint (checkpoints/index.json "
            "lists them) or retrain"
        ) from None
    expected = model_state(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + "; ".join(wrong[:5]))
        if missing:
            parts.append(f"missing keys: {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected[:5]}")
        raise CheckpointError(
            f"{path} does not fit this model ({', '.join(parts)}); build the model from the "
            "config.json saved beside the weights"
        )
    model.load_state_dict(state, strict=False)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into named tensors and a JSON-able remainder."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    if len(meta["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError(
            f"the checkpoint's optimizer has {len(meta['param_groups'])} parameter groups and "
            f"this run's has {len(optimizer.param_groups)}: optim.name, optim.embed_lr or "
            "optim.head_lr differs from the run's; resume with the settings it started with"
        )
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    run_dir: str | Path,
    *,
    step: int,
    model: nn.Module,
    config: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    train_state: dict[str, Any] | None = None,
    is_best: bool = False,
    keep: int = 1,
    world: D.World | None = None,
) -> Path:
    """Write checkpoint `step-NNNNNNN`, point `last` (and `best` if asked) at it, prune old ones.

    In a distributed run every rank calls this; rank 0 alone renames and updates the index.
    """
    world = world or D.World()
    ckpt_root = Path(run_dir) / "checkpoints"
    name = f"step-{step:07d}"
    final = ckpt_root / name
    if world.distributed:
        tmp = ckpt_root / f".{name}.partial"  # one name that every rank agrees on
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        D.barrier(world)
    else:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=ckpt_root))
    try:
        weights = model_state(model, world)
        if world.is_main:
            save_file(weights, str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
        if optimizer is not None:
            if world.distributed:
                scalars = D.save_sharded(tmp / D.SHARDED_DIR, model, optimizer)
                rng = {"rng.torch": torch.get_rng_state()}
                save_file(rng, str(tmp / f"rng-rank-{world.rank}.safetensors"))
                meta = {"scalars_by_name": scalars, "world_size": world.size}
            else:
                tensors, meta = _optimizer_tensors(optimizer)
                tensors["rng.torch"] = torch.get_rng_state()
                save_file(tensors, str(tmp / "train_state.safetensors"))
            if world.is_main:
                state = dict(train_state or {}, step=step, optimizer=meta)
                (tmp / "train_state.json").write_text(json.dumps(state, indent=2) + "\n", "utf-8")
        D.barrier(world)  # every rank's shards are on disk before the folder counts
    except BaseException:
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)  # a half-written copy must not pile up
        raise
    if not world.is_main:
        D.barrier(world)
        return final
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)

    index = read_index(run_dir, missing_ok=True)
    index["last"] = name
    if is_best or "best" not in index:
        index["best"] = name
    history = [n for n in index.get("history", []) if n != name] + [name]
    keep_names = set(history[-max(1, keep) :]) | {index["best"], index["last"]}
    index["history"] = [n for n in history if n in keep_names]
    write_json_atomic(ckpt_root / "index.json", index)
    for old in set(history) - keep_names:
        shutil.rmtree(ckpt_root / old, ignore_errors=True)
    D.barrier(world)  # no rank goes on (and perhaps saves again) before the index is written
    return final


def read_index(run_dir: str | Path, *, missing_ok: bool = False) -> dict[str, Any]:
    path = Path(run_dir) / "checkpoints" / "index.json"
    if not path.exists():
        if missing_ok:
            return {}
        raise CheckpointError(
            f"{run_dir} has no checkpoints (no {path}); train first with "
            f"`lmforge train --recipe R.toml --out {run_dir}`"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupt ({e})") from None


def checkpoint_dir(run_dir: str | Path, which: str = "best") -> Path:
    """The folder of checkpoint `which`: 'best', 'last', or a folder name like step-0000100."""
    index = read_index(run_dir)
    name = index.get(which, which)
    path = Path(run_dir) / "checkpoints" / name
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint {which!r} of {run_dir} not found at {path}; available: "
            f"{sorted(p.name for p in path.parent.glob('step-*'))}"
        )
    return path


def read_config(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt_dir} has no config.json") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupt ({e})") from None


def is_sharded(ckpt_dir: Path) -> bool:
    """Whether a checkpoint was written by a distributed run (its state is in `sharded/`)."""
    return (ckpt_dir / D.SHARDED_DIR).is_dir()


def load_sharded_train_state(
    ckpt_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, world: D.World
) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG from a distributed run's checkpoint, at
    any world size; return its train_state.json."""
    json_path = ckpt_dir / "train_state.json"
    try:
        state = json.loads(json_path.read_text(encoding="utf-8"))
        D.load_sharded(
            ckpt_dir / D.SHARDED_DIR, model, optimizer, state["optimizer"]["scalars_by_name"]
        )
    except (FileNotFoundError, KeyError, SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt_dir} sharded training state is unreadable ({e})") from None
    rng_path = ckpt_dir / f"rng-rank-{world.rank}.safetensors"
    if rng_path.exists():  # a rank the saving run did not have starts from its seed
        torch.set_rng_state(load_file(str(rng_path))["rng.torch"])
    return state


def load_train_state(ckpt_dir: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore optimizer and RNG from a checkpoint folder; return its train_state.json."""
    json_path = ckpt_dir / "train_state.json"
    tensor_path = ckpt_dir / "train_state.safetensors"
    if not json_path.exists() or not tensor_path.exists():
        raise CheckpointError(f"{ckpt_dir} holds weights only, no optimizer state to resume from")
    try:
        tensors = load_file(str(tensor_path))
        state = json.loads(json_path.read_text(encoding="utf-8"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt_dir} training state is truncated or corrupt ({e})") from None
    _load_optimizer(optimizer, tensors, state["optimizer"])
    torch.set_rng_state(tensors["rng.torch"])
    return state
