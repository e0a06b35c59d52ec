"""Training on several processes: DDP or FSDP2 applied from outside the model, under torchrun.

`torchrun --nproc-per-node N -m lmforge train ...` starts N copies of the trainer with RANK,
WORLD_SIZE and LOCAL_RANK set; `init_world` joins them into one process group (gloo on CPUs,
nccl on GPUs) and `parallelize` wraps the unchanged model: DistributedDataParallel (every rank
holds the whole model and gradients are averaged) or FSDP2's `fully_shard` on each block and
then the root (parameters, gradients and optimizer state sharded across ranks). A run without
torchrun is a world of one and none of this runs.

What a setting means does not depend on the world size: `train.batch_size` sequences form one
micro-batch of the *global* batch and each rank computes its `batch_size / N` rows of it
(`TokenWindows.batch(shard=...)`), so N processes see exactly the tokens one process would,
and the averaged gradients, the LR schedule and the logged losses are the same up to float
summation order.

Checkpoints of a distributed run go through `torch.distributed.checkpoint` with its
safetensors storage (`HuggingFaceStorageWriter`): each rank writes its own shards and the
reader reassembles them for whatever world size loads them, 1 included, without unpickling
anything. Rank 0 also writes the consolidated `model.safetensors`, so `eval`, `generate` and
`serve` read a distributed run like any other.
"""

from __future__ import annotations

import datetime
import os
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

SHARDED_DIR = "sharded"  # the DCP folder inside a checkpoint of a distributed run


@dataclass(kw_only=True)
class DistributedConfig:
    """How a run launched by torchrun with several processes splits the work."""

    # ddp: a whole replica per rank, gradients all-reduced; fsdp: FSDP2, everything sharded.
    strategy: Literal["ddp", "fsdp"] = "ddp"
    # auto: nccl when training on CUDA, else gloo.
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    timeout_s: float = 600.0  # how long a collective may wait for a slow rank

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"distributed.timeout_s must be positive, got {self.timeout_s}")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The world torchrun describes in the environment (a world of one without it)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init_world(cfg: DistributedConfig, device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun set up; return the world and this rank's device."""
    world = world_from_env()
    if not world.distributed:
        return world, device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    backend = cfg.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(seconds=cfg.timeout_s),
            device_id=device if backend == "nccl" else None,
        )
    return world, device


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def parallelize(model: nn.Module, world: World, cfg: DistributedConfig) -> nn.Module:
    """The module to call in the training step; `model` itself is sharded in place by FSDP.

    Build the optimizer on `model` (the inner module), never on the DDP wrapper.
    """
    if not world.distributed:
        return model
    if cfg.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [world.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=device_ids)
    from torch.distributed.fsdp import fully_shard

    # Each block is one unit (its parameters are gathered just before it runs and freed
    # after); the root takes what is left: embeddings, final norm and the tied head.
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def gradient_sync(module: nn.Module, sync: bool) -> AbstractContextManager:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if sync:
        return nullcontext()
    if hasattr(module, "no_sync"):  # DDP
        return module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(False)
        return _ResyncFSDP(module)
    return nullcontext()


class _ResyncFSDP(AbstractContextManager):
    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __exit__(self, *exc: Any) -> None:
        self.module.set_requires_gradient_sync(True)


def all_reduce_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Sum float values over all ranks (in float64, so per-rank sums add up exactly enough)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_ints(values: list[int], world: World, device: torch.device) -> list[int]:
    """Rank 0's values on every rank (decisions that must agree, such as when to stop)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return [int(v) for v in t.tolist()]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


# ---------------------------------------------------------------- checkpoints


def full_model_state(model: nn.Module, world: World) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU (a collective under FSDP: every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not world.distributed:
        return model.state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def _flat_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """The model and optimizer state keyed by parameter name, flattened for safetensors.

    Returns (model state, optimizer state, flat tensors, non-tensor optimizer values): the
    first two are the live dicts that `set_state_dict` takes back after loading into the flat
    tensors, which share their storage.
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    flat, seen = {}, set()
    for name, value in msd.items():
        local = value.to_local() if hasattr(value, "to_local") else value
        if local.data_ptr() in seen:
            continue  # a tied weight is stored once; loading fills both names' storage
        seen.add(local.data_ptr())
        flat[f"model.{name}"] = value
    scalars: dict[str, dict[str, Any]] = {}
    for name, state in osd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                flat[f"optim.{name}.{key}"] = value
            else:
                scalars.setdefault(name, {})[key] = value
    return msd, osd, flat, scalars


def save_sharded(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, dict[str, Any]]:
    """Write model and optimizer shards to `path` (all ranks); return the non-tensor values."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    _, _, flat, scalars = _flat_state(model, optimizer)
    dcp.save(flat, storage_writer=HuggingFaceStorageWriter(str(path), save_distributed=True))
    return scalars


def load_sharded(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scalars: dict[str, dict[str, Any]],
) -> None:
    """Load shards written at any world size into this world's model and optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_state_dict

    msd, osd, flat, _ = _flat_state(model, optimizer)
    with warnings.catch_warnings():
        # Loading in a single process is intended (a 2 -> 1 resume); DCP warns about it.
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single")
        dcp.load(flat, storage_reader=HuggingFaceStorageReader(str(path)))
    for name, values in scalars.items():
        osd["state"].setdefault(name, {}).update(values)
    set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd)


def load_full_into(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    twin: nn.Module,
    twin_optimizer: torch.optim.Optimizer,
) -> None:
    """Copy a single-process model and optimizer (`twin`, already loaded) into a sharded or
    replicated one: the 1 -> N resume."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_state_dict,
    )

    msd, osd = get_state_dict(twin, twin_optimizer)
    options = StateDictOptions(full_state_dict=True)
    set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd, options=options)
