"""Data-parallel training across the processes `torchrun` starts (gloo on CPU, NCCL on CUDA).

The families step their own optimizers inside `training_step` (several per model, an EMA beside
them), so the model is not wrapped in `DistributedDataParallel`; instead every process holds a
full replica and `GradientSync` averages each parameter's gradient across processes as autograd
accumulates it, in one coalesced all-reduce at the end of every backward pass. Gradient clipping
and logging inside a family therefore see the averaged gradient, every optimizer steps on the
same numbers in every process, and the replicas stay identical with no change to the families.

What differs per process is the data shard and the noise (`noise_seed`), so buffers computed from
local batches (BatchNorm running statistics, the autoencoder's fitted latent Gaussians) drift
apart; `sync_buffers` averages them before every validation and checkpoint, so the validated,
checkpointed and saved model is one well-defined model.

`Cluster.from_env` reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE);
without them (or with WORLD_SIZE=1) everything here is a no-op and training is single-process.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cluster:
    """Where this process stands among the training processes (one per rank)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def active(self) -> bool:
        """True when training is spread over more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes."""
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Cluster:
        """The cluster torchrun describes in the environment; a single process without it."""
        env = os.environ if environ is None else environ
        if "WORLD_SIZE" not in env:
            return cls()

        def read(key: str, default: str) -> int:
            raw = env.get(key, default)
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{key} must be an integer, got {raw!r}") from None

        world_size = read("WORLD_SIZE", "1")
        rank = read("RANK", "0")
        values = {
            "rank": rank,
            "world_size": world_size,
            "local_rank": read("LOCAL_RANK", str(rank)),
            "local_world_size": read("LOCAL_WORLD_SIZE", str(world_size)),
        }
        cluster = cls(**values)
        if cluster.world_size < 1 or not 0 <= cluster.rank < cluster.world_size:
            raise ValueError(
                f"RANK={cluster.rank} is not in 0..WORLD_SIZE-1={cluster.world_size - 1}"
            )
        if not 0 <= cluster.local_rank < max(cluster.local_world_size, 1):
            raise ValueError(
                f"LOCAL_RANK={cluster.local_rank} is not in 0..{cluster.local_world_size - 1}"
            )
        return cluster


SINGLE = Cluster()


def setup(cluster: Cluster, device: torch.device) -> torch.device:
    """Join the process group (once per process) and return this process's device.

    On CUDA each process takes the GPU of its LOCAL_RANK and the group uses NCCL; on the CPU
    it uses gloo. The rendezvous (MASTER_ADDR, MASTER_PORT) comes from torchrun's environment.
    """
    if not cluster.active:
        return device
    if device.type == "cuda":
        if device.index not in (None, cluster.local_rank):
            log.warning("device %s ignored: rank %d uses cuda:%d (its LOCAL_RANK)",
                        device, cluster.rank, cluster.local_rank)  # fmt: skip
        device = torch.device("cuda", cluster.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        bound = {"device_id": device} if backend == "nccl" else {}  # NCCL: one GPU per rank
        dist.init_process_group(backend, rank=cluster.rank, world_size=cluster.world_size, **bound)
        atexit.register(_shutdown)
        log.info("rank %d/%d joined the %s process group on %s",
                 cluster.rank, cluster.world_size, backend, device)  # fmt: skip
    elif dist.get_backend() != backend:
        raise ValueError(
            f"the process group uses {dist.get_backend()}, but training on {device.type} "
            f"needs {backend}"
        )
    return device


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def noise_seed(seed: int, cluster: Cluster) -> int:
    """The seed of this rank's training generator: rank 0 keeps the single-process seed."""
    return seed + 1 + cluster.rank


def check_batch_size(batch_size: int, cluster: Cluster) -> None:
    """Every rank takes an equal share of the global batch (ValueError otherwise)."""
    if batch_size % cluster.world_size:
        raise ValueError(
            f"train.batch_size ({batch_size}) must be divisible by the number of training "
            f"processes ({cluster.world_size}): each takes an equal share of every batch"
        )


def shard(indices: Tensor, cluster: Cluster) -> Tensor:
    """This rank's contiguous share of a global batch's indices."""
    return indices.tensor_split(cluster.world_size)[cluster.rank]


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat_into(flat: Tensor, tensors: Sequence[Tensor]) -> None:
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


class GradientSync:
    """Averages the gradients of `module`'s trainable parameters across all ranks.

    A post-accumulate hook on every parameter notes which gradients a backward pass produced;
    a callback queued on the autograd engine then all-reduces them together, in a fixed order
    (the parameters' order in the module), once the pass ends and before control returns to
    the family's code. Every rank runs the same family code on the same step, so the same
    parameters receive gradients on every rank (the GAN's G, D and E passes each sync their
    own). `close` removes the hooks, so the trained model carries none.
    """

    def __init__(self, module: nn.Module, cluster: Cluster) -> None:
        self.world_size = cluster.world_size
        self.params = [p for p in module.parameters() if p.requires_grad]
        self._ready: set[int] = set()
        self._queued = False
        self._handles = [
            p.register_post_accumulate_grad_hook(self._hook(i)) for i, p in enumerate(self.params)
        ]

    def _hook(self, index: int):
        def mark(_: Tensor) -> None:
            self._ready.add(index)
            if not self._queued:
                # the engine runs queued callbacks when this backward pass completes
                torch.autograd.Variable._execution_engine.queue_callback(self.all_reduce)
                self._queued = True

        return mark

    @torch.no_grad()
    def all_reduce(self) -> None:
        """Average the gradients noted since the last call (sum, then divide by world size)."""
        grads = [self.params[i].grad for i in sorted(self._ready)]
        self._ready.clear()
        self._queued = False
        if not grads:
            return
        flat = _flat(grads)
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        _unflat_into(flat, grads)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers into every rank's replica."""
    tensors = list(module.parameters()) + list(module.buffers())
    device = comm_device()
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = _flat(group).to(device)
        dist.broadcast(flat, src=0)
        _unflat_into(flat.to(group[0].device), group)


@torch.no_grad()
def sync_buffers(module: nn.Module, cluster: Cluster) -> None:
    """Make every buffer equal on all ranks: float buffers that differ are averaged, others
    (integer counters, constants) take rank 0's values.

    Buffers that already agree are left untouched (bit for bit), so constants such as fixed
    noise never pick up rounding from an average.
    """
    if not cluster.active:
        return
    floats = [b for b in module.buffers() if b.is_floating_point()]
    others = [b for b in module.buffers() if not b.is_floating_point()]
    device = comm_device()
    if floats:
        mine = _flat(floats).to(device, torch.float64)
        reference = mine.clone()
        dist.broadcast(reference, src=0)
        differs = torch.stack(
            [chunk.ne(ref).any() for chunk, ref in zip(_chunks(mine, floats),
                                                       _chunks(reference, floats), strict=True)]
        ).to(torch.int32)  # fmt: skip
        dist.all_reduce(differs, op=dist.ReduceOp.MAX)
        dist.all_reduce(mine)
        mean = mine.div_(cluster.world_size)
        for buf, avg, flag in zip(floats, _chunks(mean, floats), differs.tolist(), strict=True):
            if flag:
                buf.copy_(avg.view_as(buf))
    for buf in others:
        value = buf.to(device)
        dist.broadcast(value, src=0)
        buf.copy_(value)


def _chunks(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    return list(flat.split([t.numel() for t in like]))


def average_floats(values: Mapping[str, float], cluster: Cluster) -> dict[str, float]:
    """The mean of each named value over the ranks (every rank passes the same names)."""
    if not cluster.active or not values:
        return dict(values)
    names = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in names], dtype=torch.float64)
    tensor = tensor.to(comm_device())
    dist.all_reduce(tensor)
    means = (tensor / cluster.world_size).tolist()
    return {k: means[names.index(k)] for k in values}


def sum_floats(values: Sequence[float], cluster: Cluster) -> list[float]:
    """Element-wise sums over the ranks, bit-identical on every rank (rank 0's result)."""
    tensor = torch.tensor(list(values), dtype=torch.float64, device=comm_device())
    dist.all_reduce(tensor)
    dist.broadcast(tensor, src=0)  # decisions taken from these (early stopping) must agree
    return tensor.tolist()


def any_rank(flag: bool, cluster: Cluster) -> bool:
    """True on every rank when `flag` is true on at least one."""
    if not cluster.active:
        return flag
    tensor = torch.tensor([int(flag)], dtype=torch.int32, device=comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def gather_bytes(state: Tensor, cluster: Cluster) -> list[Tensor]:
    """Every rank's uint8 tensor of the same length (e.g. generator states), in rank order."""
    local = state.to(comm_device())
    out = [torch.empty_like(local) for _ in range(cluster.world_size)]
    dist.all_gather(out, local)
    return [t.cpu() for t in out]


def broadcast_bytes(data: bytes | None, cluster: Cluster) -> bytes | None:
    """Rank 0's bytes (None when it has none) on every rank: how all resume from its checkpoint."""
    device = comm_device()
    size = torch.tensor([-1 if data is None else len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    n = int(size.item())
    if n <= 0:
        return None if n < 0 else b""
    if cluster.is_main:
        payload = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    else:
        payload = torch.empty(n, dtype=torch.uint8, device=device)
    dist.broadcast(payload, src=0)
    return payload.cpu().numpy().tobytes()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
