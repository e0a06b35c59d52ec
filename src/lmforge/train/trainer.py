"""The training loop: one function from a run config to a trained, checkpointed model.

Written by hand because it is the heart of the project and small enough to read at once:
gradient accumulation, clipping, the LR schedule, mixed precision picked by the hardware,
optional `torch.compile`, periodic evaluation on the validation split, best/last checkpoints,
exact resume, metrics to JSONL and TensorBoard, and a loss-curve PNG at the end. Launched by
torchrun with several processes it trains data-parallel (DDP or FSDP2, applied from outside the
model by `lmforge.train.distributed`); rank 0 alone logs and writes plots.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch

from lmforge.config import ConfigError, apply_overrides, from_dict, load_toml, to_dict
from lmforge.io import write_json_atomic
from lmforge.model import FAMILIES, build_model, config_class
from lmforge.model.gpt import PRESETS, GPTConfig, depth_dial
from lmforge.tokenizer.encode import read_token_meta
from lmforge.tokenizer.tokenizer import load_tokenizer
from lmforge.train import checkpoint as ckpt
from lmforge.train import distributed as D
from lmforge.train.metrics import MetricsLog, plot_losses
from lmforge.train.objectives import build_objective, training_seq_len
from lmforge.train.optim import OptimConfig, build_optimizer
from lmforge.train.schedule import ScheduleConfig, lr_factor

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class DataConfig:
    # Token shards written by `lmforge tokenizer encode`. A relative path is looked up in the
    # run directory first, then in the current directory.
    tokens: str = "tokens"
    train_split: str = "train"
    val_split: str = "val"


@dataclass(kw_only=True)
class TrainConfig:
    max_steps: int = 2000  # with max_time_s: an upper bound
    # Train for this many seconds (evaluation and checkpoints not counted) and stretch the
    # LR schedule to end there, re-estimating the number of steps from the speed so far.
    max_time_s: float = 0.0
    batch_size: int = 32  # sequences per micro-batch
    # Tokens per training window; 0 = model.max_seq_len. Shorter windows make cheaper steps
    # while validation still reads max_seq_len: for a decoder with rotary positions and
    # model.attn_window <= seq_len, which then reads long text at the span it trained on.
    seq_len: int = 0
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    eval_interval: int = 250  # steps between val-loss evaluations (and at the end)
    eval_tokens: int = 0  # val tokens per periodic evaluation; 0 = the whole split
    eval_batch_size: int = 64
    log_interval: int = 10
    checkpoint_interval: int = 0  # steps between checkpoints; 0 = at evaluations only
    keep_checkpoints: int = 1  # how many recent step checkpoints to keep besides the best
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # torch.compile the training forward and backward. The compilation runs on one batch
    # before the clock starts (outside max_time_s; the summary reports it as compile_s), as
    # speedrun timings count it: ~30 s cold on a 2-core CPU, a few seconds from inductor's
    # on-disk cache. Batches of another shape (seq2seq lengths, the RNN's carried state)
    # still recompile inside the clock.
    compile: bool = False
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps
    seed: int = 1337
    peak_flops: float = 0.0  # for MFU; 0 = known GPU peak, or a measured fp32 matmul on CPU
    threads: int = 0  # torch intra-op threads on CPU; 0 = PyTorch's default

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "batch_size",
            "grad_accum_steps",
            "eval_interval",
            "log_interval",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.checkpoint_interval < 0:
            raise ValueError(
                f"train.checkpoint_interval must be >= 0 (0 = at evaluations), "
                f"got {self.checkpoint_interval}"
            )
        if self.max_time_s < 0:
            raise ValueError(f"train.max_time_s must be >= 0 (0 = no limit), got {self.max_time_s}")
        if self.seq_len < 0:
            raise ValueError(
                f"train.seq_len must be >= 0 (0 = model.max_seq_len), got {self.seq_len}"
            )


@dataclass(kw_only=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    # A family's config (GPTConfig, EncoderConfig, Seq2SeqConfig, RNNConfig), picked by the
    # recipe's `[model] family` in `load_run_config`.
    model: Any = field(default_factory=GPTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: D.DistributedConfig = field(default_factory=D.DistributedConfig)


def load_run_config(
    recipe: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """A RunConfig from a TOML recipe (or the defaults) with `section.field` overrides.

    Two shorthands in `[model]` expand before the fields are read, and fields given
    explicitly win over what they expand to: `preset` (a name from `model.gpt.PRESETS`) and
    `depth` (the one-dial family of `model.gpt.depth_dial`, which also sets `optim.lr`).
    `base` (a saved config.json) stands in for the recipe when resuming without one.
    """
    data = load_toml(recipe) if recipe else dict(base or {})
    data.pop("tokenizer", None)  # recorded in config.json for reference, not a setting
    data = apply_overrides(data, overrides or {})
    where = str(recipe) if recipe else "defaults"
    try:
        data = dict(data)
        model_data = dict(data.pop("model", {}))
        family = model_data.get("family", "gpt")
        if family == "gpt":
            data = expand_model_shorthands({**data, "model": model_data})
            model_data = data.pop("model")
        if family not in FAMILIES:
            raise ConfigError(f"model.family={family!r} is not one of {sorted(FAMILIES)}")
        cfg = from_dict(RunConfig, data)
        return replace(cfg, model=from_dict(config_class(family), model_data, "model"))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def expand_model_shorthands(data: dict[str, Any]) -> dict[str, Any]:
    """Replace `model.preset` and `model.depth` by the fields they stand for."""
    model = dict(data.get("model", {}))
    expanded: dict[str, Any] = {}
    preset = model.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"model.preset={preset!r} is not one of {sorted(PRESETS)}")
        expanded.update(PRESETS[preset])
    depth = model.pop("depth", None)
    optim = dict(data.get("optim", {}))
    if depth is not None:
        model_fields, lr = depth_dial(_coerce_int(depth, "model.depth"))
        expanded.update(model_fields)
        optim.setdefault("lr", lr)
    return {**data, "model": {**expanded, **model}, "optim": optim}


def _coerce_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}: got {value!r}, expected a positive integer")
    return value


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype. 'auto' is bf16 only on a GPU that runs it fast, else fp32.

    On CPUs without AMX, bf16 matmuls are many times slower than fp32, so auto never
    picks them there.
    """
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


_GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}
_cpu_peak_cache: dict[int, float] = {}


def peak_flops(device: torch.device) -> float:
    """The device's peak for MFU: a table for GPUs, a measured fp32 matmul rate on CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in _GPU_PEAK_BF16.items():
            if key in name:
                return value
        return 0.0
    threads = torch.get_num_threads()
    if threads not in _cpu_peak_cache:
        # Its own generator: drawing from the global one would shift the dropout masks of a
        # run seeded just before (the first run in a process would differ from later ones).
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(1024, 1024, generator=gen)
        b = torch.randn(1024, 1024, generator=gen)
        a @ b  # warm up
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.3:
            a @ b
            n += 1
        _cpu_peak_cache[threads] = 2 * 1024**3 * n / (time.perf_counter() - t0)
    return _cpu_peak_cache[threads]


def resolve_tokens_dir(tokens: str, run_dir: Path) -> Path:
    path = Path(tokens)
    if not path.is_absolute() and (run_dir / path).exists():
        return run_dir / path
    return path


def copy_tokenizer(tokens_meta: dict[str, Any], run_dir: Path) -> Any:
    """Copy the tokenizer into the run, so the run alone can be evaluated and served.

    Sentence pairs with separate vocabularies bring the target's too (`tokenizer-tgt`).
    """
    copies = [(Path(tokens_meta["tokenizer_dir"]), "tokenizer", "tokenizer_fingerprint")]
    if tokens_meta.get("shared_vocab") is False:
        tgt = Path(tokens_meta["tokenizer_dir"]).parent / "tokenizer-tgt"
        copies.append((tgt, "tokenizer-tgt", "tgt_tokenizer_fingerprint"))
    for src, name, key in copies:
        dst = run_dir / name
        if src.resolve() == dst.resolve():
            continue
        tokenizer = load_tokenizer(src)
        if tokenizer.fingerprint != tokens_meta[key]:
            raise ConfigError(
                f"the tokenizer at {src} is not the one the data was encoded with "
                "(fingerprints differ); encode the data again"
            )
        dst.mkdir(parents=True, exist_ok=True)
        for file in ("tokenizer.json", "tokenizer_meta.json"):
            shutil.copyfile(src / file, dst / file)
    return load_tokenizer(run_dir / "tokenizer")


def read_data_meta(data_dir: Path, family: str) -> dict[str, Any]:
    """The meta of a run's training data: sentence pairs for seq2seq, token shards otherwise."""
    from lmforge.data.pairs import is_pairs_dir, read_pairs_meta

    if family == "seq2seq":
        return read_pairs_meta(data_dir)
    if is_pairs_dir(data_dir):
        raise ConfigError(
            f"{data_dir} holds sentence pairs, which only model.family='seq2seq' trains on; "
            f"a {family!r} model reads token shards from `lmforge tokenizer encode`"
        )
    return read_token_meta(data_dir)


def fit_model_to_data(model_cfg: Any, meta: dict[str, Any], tokenizer: Any) -> Any:
    """The model config with what the data decides: vocabulary sizes (when 0) and, for
    seq2seq, the special ids of the run's tokenizer."""
    updates: dict[str, Any] = {}
    if model_cfg.vocab_size == 0:
        updates["vocab_size"] = meta["vocab_size"]
    elif model_cfg.vocab_size < meta["vocab_size"]:
        raise ConfigError(
            f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
            f"{meta['vocab_size']} tokens; set model.vocab_size = 0 to take it from the tokenizer"
        )
    if model_cfg.family == "seq2seq":
        if not meta["shared_vocab"]:
            if model_cfg.tgt_vocab_size == 0:
                updates["tgt_vocab_size"] = meta["tgt_vocab_size"]
            elif model_cfg.tgt_vocab_size < meta["tgt_vocab_size"]:
                raise ConfigError(
                    f"model.tgt_vocab_size={model_cfg.tgt_vocab_size} is smaller than the "
                    f"target tokenizer's {meta['tgt_vocab_size']} tokens; set it to 0"
                )
        for role in ("pad", "bos", "eos"):
            value = getattr(tokenizer, f"{role}_id")
            if value is None:
                raise ConfigError(
                    f"a seq2seq model needs a {role} token, and the run's tokenizer has none; "
                    "prepare the pairs with a vocabulary trained by `lmforge data pairs`"
                )
            updates[f"{role}_id"] = value
    try:
        return replace(model_cfg, **updates)
    except ValueError as e:
        raise ConfigError(f"[model]: {e}") from None


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_eval: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) the run in `run_dir`; return a summary with the final val loss.

    `on_eval(step, val_loss)` is called after every evaluation, once that step's checkpoint is
    saved; an exception it raises (a hyperparameter search pruning the trial) stops training
    and propagates.
    Under torchrun with several processes every rank calls this, and the run is distributed.
    """
    device = resolve_device(cfg.train.device)
    world, device = D.init_world(cfg.distributed, device)
    try:
        return _train(cfg, Path(run_dir), world, device, resume, progress, on_eval)
    finally:
        D.close_world(world)


def _train(
    cfg: RunConfig,
    run_dir: Path,
    world: D.World,
    device: torch.device,
    resume: bool,
    progress: bool,
    on_eval: Callable[[int, float], None] | None,
) -> dict[str, Any]:
    tc = cfg.train
    existing = ckpt.read_index(run_dir, missing_ok=True)
    if existing and not resume:
        raise ConfigError(
            f"{run_dir} already holds checkpoints; pass --resume to continue that run, "
            "or choose another --out"
        )
    if resume and not existing:
        raise ConfigError(f"--resume: {run_dir} has no checkpoint to resume from")
    check_distributed(cfg, world)
    seq_len = training_seq_len(cfg)  # refuses windows the model cannot train on, early
    D.barrier(world)  # no rank creates files before every rank has read the index
    run_dir.mkdir(parents=True, exist_ok=True)

    if tc.threads:
        torch.set_num_threads(tc.threads)
    dtype = resolve_precision(tc.precision, device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    tokens_dir = resolve_tokens_dir(cfg.data.tokens, run_dir)
    meta = read_data_meta(tokens_dir, cfg.model.family)
    if world.is_main:
        copy_tokenizer(meta, run_dir)
    D.barrier(world)
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    cfg = replace(cfg, model=fit_model_to_data(cfg.model, meta, tokenizer))
    objective = build_objective(cfg, tokens_dir, tokenizer, device)

    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    model = build_model(cfg.model).to(device)
    step_module = D.parallelize(model, world, cfg.distributed)
    optimizer = build_optimizer(model, cfg.optim, device.type)
    if world.distributed:
        torch.manual_seed(tc.seed + world.rank)  # but each rank its own dropout masks
    config_dict = to_dict(cfg)
    config_dict["tokenizer"] = {"kind": tokenizer.kind, "fingerprint": tokenizer.fingerprint}

    start_step, best_val, tokens_seen, elapsed_before, train_s = 0, math.inf, 0, 0.0, 0.0
    if resume:
        src = ckpt.checkpoint_dir(run_dir, "last")
        saved_model = ckpt.read_config(src).get("model", {})
        if saved_model:
            saved_model.setdefault("family", "gpt")  # saved before there were families
        # A field the checkpoint predates was trained at its default: not a change.
        defaults = {f.name: f.default for f in fields(type(cfg.model)) if f.default is not MISSING}
        changed = sorted(
            k for k, v in config_dict["model"].items() if saved_model.get(k, defaults.get(k)) != v
        )
        if saved_model and changed:
            raise ConfigError(
                f"--resume: {src.name} was trained with other model settings "
                f"({', '.join(changed)}); resume with the recipe the run started with, or with "
                "none at all to reuse "
                f"{run_dir / 'config.json'}"
            )
        # The optimizer state (moments, step counts) comes from the checkpoint, but every
        # setting of each group (peak LR, betas, weight decay) from this run's config: a
        # resume with a new --optim.lr means it, whatever world size wrote the checkpoint.
        settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        state = _load_resume_state(cfg, src, model, optimizer, world, device)
        for group, setting in zip(optimizer.param_groups, settings, strict=True):
            group.update(setting)
        start_step = state["step"]
        best_val = state.get("best_val_loss", math.inf)
        tokens_seen = state.get("tokens_seen", 0)
        elapsed_before = state.get("elapsed_s", 0.0)
        train_s = state.get("train_s", 0.0)
        if world.is_main:
            log.info("resumed %s at step %d", src, start_step)
    metrics = None
    if world.is_main:
        write_json_atomic(run_dir / "config.json", config_dict)
        metrics = MetricsLog(run_dir, resume_step=start_step if resume else None)

    step_fn = torch.compile(step_module) if tc.compile else step_module
    flops_per_token = model.flops_per_token(seq_len)
    # Only rank 0 logs MFU; a matmul benchmark on every rank at once would skew it.
    peak = (tc.peak_flops or peak_flops(device)) if world.is_main else 0.0
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def run_eval(step: int) -> float:
        result = objective.evaluate(
            model, autocast=autocast, max_tokens=tc.eval_tokens or None, world=world
        )
        record = {"step": step, "val_loss": result["loss"]}
        if "bits_per_byte" in result:
            record["val_bpb"] = result["bits_per_byte"]
        if "masked_accuracy" in result:
            record["val_masked_accuracy"] = result["masked_accuracy"]
        if metrics is not None:
            metrics.write(record)
        if not math.isfinite(result["loss"]):
            raise FloatingPointError(
                f"val loss became {result['loss']} at step {step}; nothing was saved. Lower "
                "optim.lr or enable train.grad_clip, then resume from the last checkpoint"
            )
        return result["loss"]

    def save(step: int, *, is_best: bool) -> None:
        # Losses since the last log line have not been checked yet: never save NaN weights.
        # Every rank must decide alike, or some would wait in the save's collectives forever.
        (bad,) = D.all_reduce_sum([0.0 if torch.isfinite(window_loss) else 1.0], world, device)
        if bad:
            raise FloatingPointError(
                f"loss became non-finite before step {step}; nothing was saved. Lower "
                "optim.lr or enable train.grad_clip, then resume from the last checkpoint"
            )
        ckpt.save_checkpoint(
            run_dir,
            step=step,
            model=model,
            config=config_dict,
            optimizer=optimizer,
            train_state={
                "best_val_loss": best_val,
                "tokens_seen": tokens_seen,
                "elapsed_s": elapsed_before + (time.perf_counter() - t_start),
                "train_s": train_s,
            },
            is_best=is_best,
            keep=tc.keep_checkpoints,
            world=world,
        )

    bar = None
    if progress and world.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=tc.max_steps, initial=start_step, desc="train", unit="step", mininterval=1.0
        )
    model.train()
    compile_s = 0.0
    if tc.compile:
        # The warm-up must leave no trace: its dropout draws come from a forked generator and
        # a carried state (the RNN's) is put back, so a compiled run and its resume match.
        t_compile = time.perf_counter()
        carried = getattr(objective, "state", None)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            batch = objective.batch(start_step * tc.grad_accum_steps, (world.rank, world.size))
            with autocast:
                loss, _ = objective.loss(step_fn, batch)
            loss.backward()  # compiles the backward too; the gradients are thrown away
        optimizer.zero_grad(set_to_none=True)
        if hasattr(objective, "state"):
            objective.state = carried
        if device.type == "cuda":
            torch.cuda.synchronize()
        compile_s = time.perf_counter() - t_compile
        if world.is_main:
            log.info("compiled the training step in %.1f s", compile_s)
    t_start = time.perf_counter()
    t_window, window_tokens, last_loss, val_loss = time.perf_counter(), 0, math.nan, math.nan
    window_loss, loss_steps = torch.zeros((), device=device), 0  # since the last log line
    horizon = tc.max_steps  # the step the LR schedule ends at
    done = start_step
    session_s = 0.0  # training seconds in this process (a resumed run's speed may differ)
    try:
        for step in range(start_step, tc.max_steps):
            t_step = time.perf_counter()
            factor = lr_factor(step, horizon, cfg.schedule)
            # What the log shows: AdamW's LR (Muon groups have their own peak).
            lr = cfg.optim.lr * factor
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            step_tokens = 0
            for micro in range(tc.grad_accum_steps):
                batch = objective.batch(
                    step * tc.grad_accum_steps + micro, shard=(world.rank, world.size)
                )
                with D.gradient_sync(step_module, micro == tc.grad_accum_steps - 1):
                    with autocast:
                        loss, n_tokens = objective.loss(step_fn, batch)
                    scaler.scale(loss / tc.grad_accum_steps).backward()
                window_loss += loss.detach()
                step_tokens += n_tokens * world.size
            if tc.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            tokens_seen += step_tokens
            window_tokens += step_tokens
            loss_steps += 1
            done = step + 1
            step_s = time.perf_counter() - t_step
            train_s += step_s
            session_s += step_s
            if tc.max_time_s:
                per_step = session_s / (done - start_step)
                horizon = min(tc.max_steps, done + int((tc.max_time_s - train_s) / per_step))
                out_of_time = train_s >= tc.max_time_s
                # Ranks time themselves differently; rank 0's clock decides for all.
                horizon, out_of_time = D.broadcast_ints([horizon, out_of_time], world, device)
                if bar is not None:
                    bar.total = horizon
            last = done >= horizon or bool(tc.max_time_s and out_of_time)

            if done % tc.log_interval == 0 or last:
                # The mean over the steps since the last log line: one step's loss is noisy.
                (summed,) = D.all_reduce_sum([window_loss.item()], world, device)
                last_loss = summed / world.size / (loss_steps * tc.grad_accum_steps)
                window_loss.zero_()
                loss_steps = 0
                if not math.isfinite(last_loss):
                    raise FloatingPointError(
                        f"loss became {last_loss} at step {done}; lower optim.lr or enable "
                        "train.grad_clip"
                    )
                dt = time.perf_counter() - t_window
                tok_s = window_tokens / dt
                # Each rank computes 1/N of the step on its own device.
                mfu = window_tokens * flops_per_token / dt / peak / world.size if peak else 0.0
                if metrics is not None:
                    metrics.write(
                        {
                            "step": done,
                            "loss": last_loss,
                            "lr": lr,
                            "tokens": tokens_seen,
                            "tokens_per_s": tok_s,
                            "mfu": mfu,
                            "elapsed_s": elapsed_before + time.perf_counter() - t_start,
                            "train_s": train_s,
                        }
                    )
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{last_loss:.3f}", tok_s=f"{tok_s:,.0f}", mfu=f"{mfu:.1%}"
                    )
                t_window, window_tokens = time.perf_counter(), 0

            at_eval = done % tc.eval_interval == 0 or last
            at_ckpt = tc.checkpoint_interval and done % tc.checkpoint_interval == 0
            if at_eval:
                val_loss = run_eval(done)
                is_best = val_loss < best_val
                best_val = min(best_val, val_loss)
                if bar is not None:
                    bar.set_postfix(loss=f"{last_loss:.3f}", val=f"{val_loss:.3f}")
                save(done, is_best=is_best)
                if on_eval is not None:
                    on_eval(done, val_loss)
                t_window, window_tokens = time.perf_counter(), 0
            elif at_ckpt:
                save(done, is_best=False)
                t_window, window_tokens = time.perf_counter(), 0
            if bar is not None:
                bar.update(1)
            if last:
                break
    finally:  # also on an error or Ctrl-C: flush TensorBoard, end the progress bar
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
    elapsed = elapsed_before + time.perf_counter() - t_start
    if metrics is not None:
        plot_losses(metrics.path, run_dir / "loss.png")
    return {
        "run_dir": str(run_dir),
        "steps": done,
        "tokens_seen": tokens_seen,
        "final_val_loss": val_loss,
        "best_val_loss": best_val,
        "train_loss": last_loss,
        "elapsed_s": elapsed,
        "train_seconds": train_s,
        "compile_s": compile_s,
        "params": model.num_params(),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "world_size": world.size,
    }


def check_distributed(cfg: RunConfig, world: D.World) -> None:
    """Settings that cannot work at this world size, explained before anything runs."""
    if not world.distributed:
        return
    if cfg.train.batch_size % world.size:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} does not divide among {world.size} "
            "processes: the batch is global and each rank takes an equal share; choose a "
            f"multiple of {world.size}"
        )
    if cfg.distributed.backend == "nccl" and resolve_device(cfg.train.device).type != "cuda":
        raise ConfigError(
            "distributed.backend='nccl' needs CUDA devices; use 'gloo' (or 'auto') on CPUs"
        )
    if cfg.distributed.strategy == "fsdp" and cfg.model.family != "gpt":
        raise ConfigError(
            f"distributed.strategy='fsdp' shards the blocks of a GPT; train a "
            f"{cfg.model.family!r} model with distributed.strategy='ddp'"
        )
    if cfg.distributed.strategy == "fsdp" and cfg.optim.name == "muon":
        raise ConfigError(
            "optim.name='muon' needs whole weight matrices, which FSDP shards; use "
            "distributed.strategy='ddp' with Muon, or optim.name='adamw' with FSDP"
        )


def _load_resume_state(
    cfg: RunConfig,
    src: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    world: D.World,
    device: torch.device,
) -> dict[str, Any]:
    """Load checkpoint `src` into this world's model and optimizer, whatever world wrote it."""
    if ckpt.is_sharded(src):  # written by a distributed run: DCP reshards it for this world
        return ckpt.load_sharded_train_state(src, model, optimizer, world)
    if not world.distributed:
        ckpt.load_model_weights(model, src / "model.safetensors")
        return ckpt.load_train_state(src, optimizer)
    # A single-process checkpoint into N processes: load it as one process would, then hand
    # the whole state to the wrapped model, which keeps its own part.
    twin = build_model(cfg.model)  # on the CPU: the accelerator holds only this rank's part
    twin_optimizer = build_optimizer(twin, cfg.optim, "cpu")
    ckpt.load_model_weights(twin, src / "model.safetensors")
    state = ckpt.load_train_state(src, twin_optimizer)
    D.load_full_into(model, optimizer, twin, twin_optimizer)
    torch.manual_seed(cfg.train.seed + world.rank)
    return state
