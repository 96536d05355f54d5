"""One training loop for every family: seeded, checkpointed, resumable, early-stopping.

Each family supplies its optimisation step (`GenerativeModel.training_step`); this loop owns
batching, validation, checkpoints (model, optimizers, RNG states, step, early-stopping state,
history) written atomically, resume after a kill, early stopping and a wall-clock budget.
Same seed + same data + same thread count -> bit-identical weights on the CPU, with or without
a resume. `device` picks where the model and batches live ("auto": CUDA when available).

Under `torchrun` (WORLD_SIZE > 1) the same loop trains data-parallel: each process takes an
equal share of every global batch (`batch_size` stays the global batch, so steps and images
seen match a single process), gradients are averaged across processes (training/distributed.py),
and only rank 0 writes checkpoints and reports progress; every rank resumes from rank 0's
checkpoint. Without torchrun nothing changes: a single process trains bit for bit as before.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from models.base import Batch, GenerativeModel
from models.config import Config, require
from models.io import atomic_write_bytes, atomic_write_json, build_model, save_model
from models.tensors import resolve_device
from pipelines.training import distributed
from pipelines.training.distributed import SINGLE, Cluster
from pipelines.training.resources import available_cores

log = logging.getLogger(__name__)
CHECKPOINT_VERSION = 1
CHECKPOINT_FILE = "last.pt"
_INIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class TrainConfig(Config):
    """The trainer's settings (`train:` in params.yaml, merged with `<family>.train`)."""

    steps: int = 1000
    batch_size: int = 128
    seed: int = 0
    val_every: int = 200  # steps between validations (and early-stopping checks)
    val_size: int = 500  # validation images used per check
    checkpoint_every: int = 200
    patience: int = 0  # validations without improvement before stopping; 0 = never stop early
    min_delta: float = 0.0
    time_budget_s: float = 0.0  # stop after this many seconds of training; 0 = no budget
    num_threads: int = 0  # 0 = all cores available to this process
    log_every: int = 20
    progress: bool = True
    device: str = "auto"  # "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1"

    def validate(self) -> None:
        for name in ("steps", "batch_size", "val_every", "val_size", "checkpoint_every",
                     "log_every"):  # fmt: skip
            value = getattr(self, name)
            require(value >= 1, f"train.{name} must be >= 1, got {value}")
        for name in ("patience", "num_threads", "time_budget_s", "min_delta"):
            value = getattr(self, name)
            require(value >= 0, f"train.{name} must be >= 0, got {value}")
        try:
            resolve_device(self.device, check_available=False)  # CUDA is checked at train time
        except ValueError as exc:
            raise ValueError(f"train.device: {exc}") from None


@dataclass
class TrainResult:
    model: GenerativeModel
    steps_done: int
    stopped_early: bool
    out_of_time: bool
    resumed_from: int | None
    wall_time_s: float
    images_per_s: float
    best_val_loss: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    processes: int = 1  # data-parallel training processes (torchrun's WORLD_SIZE)


def fingerprint(family: str, model_config: dict, cfg: TrainConfig, data_version: str) -> str:
    """Identifies a training job: a checkpoint is resumed only by the same job.

    Progress bars, the time budget and the device do not change the job (a checkpoint
    records its device type separately, see `_load_checkpoint`).
    """
    ignored = ("progress", "time_budget_s", "device")
    job = {
        "family": family,
        "model": model_config,
        "data": data_version,
        "train": {k: v for k, v in asdict(cfg).items() if k not in ignored},
    }
    return hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()[:16]


def job_config(model: GenerativeModel) -> dict[str, Any]:
    """The model config as a training job sees it: `bf16_autocast` as the precision the steps
    run in on the model's device (true/false), not as it was asked for ("auto"), so a
    checkpoint resumes where the arithmetic is the same and nowhere else."""
    config = model.config.to_dict()
    if "bf16_autocast" in config:
        config["bf16_autocast"] = model.training_precision == "bf16"
    return config


class _Batches:
    """Batch `step` of a seeded epoch-wise permutation: a pure function of (seed, step)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.per_epoch = max(1, n // self.batch_size)
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm[i * self.batch_size : (i + 1) * self.batch_size]


def _write_checkpoint(payload: dict, path: Path) -> None:
    """`torch.save` into memory, then one atomic, fsynced write (never a half checkpoint)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_checkpoint(
    path: Path, expected: str, device: torch.device, cluster: Cluster = SINGLE
) -> dict | None:
    """The checkpoint of this job on this kind of device, else None (logged).

    In data-parallel training rank 0 reads the file and sends its bytes to every rank, so all
    resume from the same checkpoint (no shared filesystem needed between nodes).
    """
    if cluster.active:
        data = path.read_bytes() if cluster.is_main and path.is_file() else None
        data = distributed.broadcast_bytes(data, cluster)
        source = None if data is None else io.BytesIO(data)
    else:
        source = path if path.is_file() else None
    if source is None:
        return None
    try:
        ckpt = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt checkpoint must not block training
        log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None
    if ckpt.get("version") != CHECKPOINT_VERSION or ckpt.get("fingerprint") != expected:
        log.warning("ignoring checkpoint %s from a different job (config or data changed)", path)
        return None
    if ckpt.get("device_type", "cpu") != device.type:  # generator states differ per device
        log.warning("ignoring checkpoint %s written on %s", path, ckpt.get("device_type", "cpu"))
        return None
    return ckpt


def _generator_state(ckpt: dict, cluster: Cluster) -> Tensor | None:
    """This rank's saved noise-generator state; None keeps its fresh seed (another world size)."""
    if not cluster.active:
        return ckpt["generator"]
    states = ckpt.get("generators")
    if states is not None and len(states) == cluster.world_size:
        return states[cluster.rank]
    log.warning("checkpoint written by %d process(es), resumed by %d: noise streams restart",
                len(states or [None]), cluster.world_size)  # fmt: skip
    return ckpt["generator"] if cluster.is_main else None


@torch.no_grad()
def validate(
    model: GenerativeModel,
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    cluster: Cluster = SINGLE,
) -> dict:
    """Mean validation metrics over `images`; data-parallel ranks split them and add up."""
    sharded = cluster.active and len(images) >= cluster.world_size
    if sharded:
        images, labels = distributed.shard(images, cluster), distributed.shard(labels, cluster)
    model.eval()
    device = model.device
    totals: dict[str, float] = {}
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        for key, value in model.validation_loss(x, y).items():
            totals[key] = totals.get(key, 0.0) + float(value) * len(x)
    model.train()
    if sharded:
        names = list(totals)  # the same names, in the same order, on every rank
        sums = distributed.sum_floats([totals[k] for k in names] + [len(images)], cluster)
        return {f"val_{k}": v / sums[-1] for k, v in zip(names, sums, strict=False)}
    return {f"val_{k}": v / len(images) for k, v in totals.items()}


def train(
    family: str,
    model_config: dict[str, Any],
    cfg: TrainConfig,
    train_data: tuple[Tensor, Tensor],
    val_data: tuple[Tensor, Tensor],
    checkpoint_dir: Path,
    data_version: str = "",
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    cluster: Cluster | None = None,
) -> TrainResult:
    """Train `family` from its config; resume from a matching checkpoint in `checkpoint_dir`.

    The model is initialised on the CPU (the same weights whatever the device), then moved to
    `cfg.device` with every batch; the training generator lives there too. `cluster` (default:
    torchrun's environment, else one process) spreads the batches over processes; `on_log`
    is called on rank 0 only.
    """
    cluster = Cluster.from_env() if cluster is None else cluster
    device = distributed.setup(cluster, resolve_device(cfg.device))
    threads = max(1, available_cores() // cluster.local_world_size)
    torch.set_num_threads(cfg.num_threads or threads)
    with _INIT_LOCK:  # the global RNG seeds the init: one job at a time (flows use threads)
        torch.manual_seed(cfg.seed)
        model = build_model(family, model_config)
    model.to(device)
    optimizers = model.configure_optimizers()
    generator = torch.Generator(device=device)
    generator.manual_seed(distributed.noise_seed(cfg.seed, cluster))  # rank 0: seed + 1
    images, labels = train_data
    val_images, val_labels = val_data[0][: cfg.val_size], val_data[1][: cfg.val_size]
    batches = _Batches(len(images), cfg.batch_size, cfg.seed)
    distributed.check_batch_size(batches.batch_size, cluster)
    job = fingerprint(family, job_config(model), cfg, data_version)
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_FILE

    state = {
        "step": 0,
        "best": None,
        "best_state": None,
        "bad_checks": 0,
        "history": [],
        "elapsed": 0.0,
        "stopped_early": False,
    }
    resumed_from = None
    ckpt = _load_checkpoint(ckpt_path, job, device, cluster)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][name])
        if (noise_state := _generator_state(ckpt, cluster)) is not None:
            generator.set_state(noise_state)
        torch.set_rng_state(ckpt["torch_rng"])
        state.update({k: ckpt[k] for k in state})
        resumed_from = state["step"]
        log.info("resuming %s from step %d (%s)", family, resumed_from, ckpt_path)
    grad_sync = None
    if cluster.active:  # one model on every rank, gradients averaged as backward ends
        distributed.broadcast_module(model)
        grad_sync = distributed.GradientSync(model, cluster)

    def checkpoint() -> None:
        noise_states = None
        if cluster.active:  # a collective: every rank takes part, rank 0 writes
            distributed.sync_buffers(model, cluster)
            noise_states = distributed.gather_bytes(generator.get_state(), cluster)
            if not cluster.is_main:
                return
        payload = {
            "version": CHECKPOINT_VERSION,
            "fingerprint": job,
            "device_type": device.type,
            "model": model.state_dict(),
            "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            **state,
        }
        if noise_states is not None:
            payload |= {"generators": noise_states, "world_size": cluster.world_size}
        _write_checkpoint(payload, ckpt_path)

    model.train()
    started = time.perf_counter()
    elapsed_before = state["elapsed"]
    running: dict[str, list[float]] = {}
    out_of_time = False
    bar = tqdm(
        total=cfg.steps,
        initial=state["step"],
        desc=f"train {family}",
        disable=not cfg.progress or not cluster.is_main,
        dynamic_ncols=True,
    )
    while state["step"] < cfg.steps and not state["stopped_early"]:
        step = state["step"]
        idx = batches.indices(step)
        if cluster.active:
            idx = distributed.shard(idx, cluster)
        x, y = images[idx].to(device), labels[idx].to(device)
        logs = model.training_step(Batch(x, y, step, generator), optimizers)
        model.on_train_step_end(step)
        state["step"] = step + 1
        for key, value in logs.items():
            running.setdefault(key, []).append(float(value))
        bar.update(1)
        if state["step"] % cfg.log_every == 0 or state["step"] == cfg.steps:
            means = {k: sum(v) / len(v) for k, v in running.items()}
            means = distributed.average_floats(means, cluster)
            running.clear()
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(means.items())[:4]})
            state["history"].append({"step": state["step"], **means})
            if on_log and cluster.is_main:
                on_log(state["step"], means)
        if state["step"] % cfg.val_every == 0 or state["step"] == cfg.steps:
            _check_validation(model, cfg, state, val_images, val_labels, on_log, cluster)
        state["elapsed"] = elapsed_before + time.perf_counter() - started
        spent = bool(cfg.time_budget_s) and state["elapsed"] >= cfg.time_budget_s
        if cfg.time_budget_s and cluster.active:  # ranks stop together: the slowest decides
            spent = distributed.any_rank(spent, cluster)
        if spent and state["step"] < cfg.steps:
            out_of_time = True
            log.warning(
                "%s: wall-clock budget %.0fs spent at step %d",
                family,
                cfg.time_budget_s,
                state["step"],
            )
            break
        if state["step"] % cfg.checkpoint_every == 0:
            checkpoint()
    bar.close()
    checkpoint()
    if grad_sync is not None:
        grad_sync.close()
    if state["best_state"] is not None and cfg.patience:
        model.load_state_dict(state["best_state"])  # early stopping keeps the best weights
    model.eval()
    model.fit_scorer(images)  # with the final weights (a GAN's feature bank; others: nothing)
    done = state["step"] - (resumed_from or 0)
    wall = time.perf_counter() - started
    if done == 0 and state["elapsed"] > 0:  # resumed a finished run: its recorded throughput
        done, wall = state["step"], state["elapsed"]
    return TrainResult(
        model,
        state["step"],
        state["stopped_early"],
        out_of_time,
        resumed_from,
        state["elapsed"],
        done * batches.batch_size / max(wall, 1e-9),
        state["best"],
        state["history"],
        cluster.world_size,
    )


def _check_validation(model, cfg, state, val_images, val_labels, on_log, cluster) -> None:
    if cluster.active:  # validate (and keep as best) the one model all ranks agree on
        distributed.sync_buffers(model, cluster)
    metrics = validate(model, val_images, val_labels, max(cfg.batch_size, 256), cluster)
    state["history"].append({"step": state["step"], **metrics})
    if on_log and cluster.is_main:
        on_log(state["step"], metrics)
    loss = metrics["val_loss"]
    if state["best"] is None or loss < state["best"] - cfg.min_delta:
        state["best"], state["bad_checks"] = loss, 0
        if cfg.patience:
            state["best_state"] = copy.deepcopy(model.state_dict())
    else:
        state["bad_checks"] += 1
        if cfg.patience and state["bad_checks"] >= cfg.patience:
            state["stopped_early"] = True
            log.info(
                "early stop at step %d: val_loss did not improve for %d checks",
                state["step"],
                cfg.patience,
            )


def save_trained(result: TrainResult, out_dir: Path, extra: dict[str, Any] | None = None) -> str:
    """Write the model (weights + config) and its training record; return the weights sha256."""
    out_dir = Path(out_dir)
    sha = save_model(result.model, out_dir, extra=extra)
    atomic_write_json(out_dir / "history.json", result.history)
    atomic_write_json(
        out_dir / "train_metrics.json",
        {
            "steps": result.steps_done,
            "stopped_early": result.stopped_early,
            "out_of_time": result.out_of_time,
            "resumed_from": result.resumed_from,
            "train_wall_time_s": round(result.wall_time_s, 3),
            "train_images_per_s": round(result.images_per_s, 2),
            "best_val_loss": result.best_val_loss,
            "params": result.model.num_parameters(),
            "weights_sha256": sha,
        }
        | ({"processes": result.processes} if result.processes > 1 else {}),
    )
    return sha
