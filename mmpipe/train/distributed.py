"""Data-parallel training (DDP) for the shared loop, and where a training runs: processes,
device, precision, threads.

One process per core group (or GPU), launched by ``torchrun``; every process runs the same
task on the same step. A system's batch is a pure function of the step, so every process
knows the whole *global* batch: it forms it (rows, random draws, cached text states), takes
its contiguous share (:func:`shard`, what ``DistributedSampler`` does for an epoch of
indices, here for the step's batch) through the encoders, and puts every process's
embeddings back together with :func:`mmpipe.nn.losses.gather_features` (open_clip's:
all-gather, then the local tensor re-inserted so it carries the gradient). Every process
then computes the global-batch loss, the same number everywhere, and its gradient with
respect to its own rows; :func:`average_gradients_` (the all-reduce DDP does) makes every
process's gradient the single-process gradient of that loss, up to the order of float sums.
Weights start equal (:func:`broadcast_parameters_`) and every process takes the same
optimizer step, so they stay equal; rank 0 writes checkpoints and logs.

Why not ``torch.nn.parallel.DistributedDataParallel``: a task calls its model's encoders,
not ``forward``, a phase may freeze most of the model (PinCLIP's fusion phase) and a loss
may own trained weights outside it (board proxies); DDP's reducer is built once, for
``forward`` and one set of trained parameters. One flattened all-reduce after backward is
what it does for a step, without the overlap with backward that only pays on GPUs.

Rank and world size are read here (:func:`world`) and nowhere else.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

# How many tasks of the executor may run at once (its max_concurrent): they share the cores.
CONCURRENCY_ENV = "MMPIPE_CONCURRENCY"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ComputeConfig:
    """How a training runs, not what it learns: never part of a checkpoint's configuration,
    so a run may resume with another number of processes or on another device."""

    processes: int = 1  # > 1: torchrun with this many processes (DDP), launched as a subprocess
    device: str = "auto"  # auto: the process's GPU (LOCAL_RANK) when CUDA is there, else cpu
    bf16: bool = False  # bf16 autocast of the training forward (GPUs; CPUs with AVX-512 bf16)
    threads: int = 0  # torch threads per process; 0: the cores divided among the processes sharing them

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


def compute_of(settings) -> ComputeConfig:
    """A system's :class:`ComputeConfig` (its settings' ``compute`` group); one process on the
    default device for a system whose settings have none."""
    return getattr(settings, "compute", None) or ComputeConfig()


def world() -> tuple[int, int]:
    """(rank, world size) of this process: torch.distributed's when initialised, else the
    launcher's environment (``RANK``/``WORLD_SIZE``, as torchrun sets), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard(n: int) -> slice:
    """This process's contiguous share of a global batch of ``n`` rows (``np.array_split``'s
    split: the first ``n % world`` ranks take one row more). Rank order is row order, so the
    gathered embeddings line up with the global batch.

    >>> shard(7)
    slice(0, 7, None)
    """
    rank, size = world() if distributed() else (0, 1)
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def threads_per_process(processes: int = 1, concurrency: int | None = None, cores: int | None = None) -> int:
    """Torch threads for one of ``processes`` training processes while ``concurrency`` tasks of
    the executor (``MMPIPE_CONCURRENCY``, default 1) run at once: the cores shared evenly, at
    least one each. More threads than cores makes every process wait on the others' spin loops.

    >>> threads_per_process(2, concurrency=1, cores=16)
    8
    >>> threads_per_process(4, concurrency=2, cores=2)
    1
    """
    if concurrency is None:
        concurrency = int(os.environ.get(CONCURRENCY_ENV, "1") or 1)
    if cores is None:  # the cores this process may run on (a container's or taskset's share)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, processes * concurrency))


def set_threads(compute: ComputeConfig, processes: int | None = None) -> int:
    """The one place a training sets ``torch.set_num_threads``: ``compute.threads``, else the
    cores divided among ``processes`` (default: the world size) times the executor's concurrency."""
    threads = compute.threads or threads_per_process(processes or world()[1])
    torch.set_num_threads(threads)
    return threads


def select_device(name: str = "auto") -> torch.device:
    """``cuda`` (the process's own GPU: ``LOCAL_RANK``, as torchrun sets) when asked for or
    when ``auto`` finds one, else the CPU."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA device")
    index = int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``bf16``, else nothing: matmuls and convolutions in
    bf16, reductions and losses in float32. bf16 keeps float32's range: no loss scaling."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; to a GPU through pinned memory, asynchronously (the copy
    overlaps the kernels already queued), as a ``DataLoader(pin_memory=True)`` does."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@contextlib.contextmanager
def process_group(backend: str | None = None, timeout_s: float = 600.0) -> Iterator[tuple[int, int]]:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``) for the duration; nccl with a GPU each, else gloo. Without a launcher (no
    ``WORLD_SIZE``) it is one process and nothing is initialised. Yields (rank, world size)."""
    size = int(os.environ.get("WORLD_SIZE", 1))
    if size <= 1 or dist.is_initialized():
        yield world()
        return
    # nccl needs a GPU per process; more processes than GPUs (or none) talk through gloo
    backend = backend or ("nccl" if torch.cuda.device_count() >= size else "gloo")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield world()
    finally:
        dist.destroy_process_group()


def _flat_all_reduce_(tensors: list[torch.Tensor], scale: float) -> None:
    """All-reduce (sum) ``tensors`` in place as one flat buffer per dtype and device, times ``scale``."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    for group in groups.values():
        flat = torch.cat([tensor.reshape(-1) for tensor in group])
        dist.all_reduce(flat)
        flat.mul_(scale)
        offset = 0
        for tensor in group:
            tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()


def average_gradients_(params: Iterable[nn.Parameter]) -> None:
    """Every process's gradients replaced by their mean over the processes (DDP's all-reduce).
    Every process runs the same code on the same step, so a parameter has a gradient on all
    of them or on none."""
    if not distributed():
        return
    grads = [param.grad for param in params if param.grad is not None]
    if grads:
        _flat_all_reduce_(grads, 1.0 / dist.get_world_size())


@torch.no_grad()
def broadcast_parameters_(modules: Iterable[nn.Module | None]) -> None:
    """Rank 0's parameters and buffers on every process (DDP does this when it wraps a model):
    a resumed or warm-started run starts from one set of weights everywhere."""
    if not distributed():
        return
    for module in modules:
        if module is None:
            continue
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def broadcast_float(value: float | None) -> float:
    """Rank 0's ``value`` on every process (others may pass None): decisions taken on it, such
    as early stopping, then agree everywhere."""
    if not distributed():
        return float(value)
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return float(box[0])


def barrier() -> None:
    if distributed():
        dist.barrier()
