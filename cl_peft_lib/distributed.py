"""Data-parallel training with ``torch.distributed``, launched by ``torchrun``.

The shared loop (:mod:`cl_peft_lib.loop`) runs unchanged in one process; under
``torchrun --nproc_per_node N`` (``WORLD_SIZE > 1`` in the environment) every process
joins one process group (NCCL on GPUs, gloo on CPUs) and

* trains on its shard of every task: one seeded permutation, identical on all ranks,
  padded to a multiple of ``N`` and strided by rank, exactly as
  :class:`~torch.utils.data.DistributedSampler` does (the file-backed path uses that sampler);
  each rank's batch is ``ceil(batch_size / N)``, so the *global* batch stays the method's
  ``batch_size`` and its published learning rate keeps its meaning;
* averages gradients with one flat all-reduce per step (:func:`average_gradients`);
* runs ``end_task`` (NCM means, k-means, ...) on the whole task on every rank, so the
  method's state stays identical everywhere (it is cheap next to training);
* evaluates a shard of every test set per rank and all-reduces the counts;
* writes checkpoints and ``results.json`` from rank 0 only; on resume every rank loads.

Why not :class:`torch.nn.parallel.DistributedDataParallel`? Methods compute extra losses
from state their ``forward`` stashed (the prompt-key surrogate), and in any step some
parameters get no gradient (keys and prompts that were not selected, heads of other tasks),
differently on each rank. DDP needs ``find_unused_parameters=True`` for that (a graph walk
every step) and then hands *zero* gradients to parameters unused on one rank, so Adam moves
parameters that a single process would have left alone. Reducing the gradients ourselves
after ``backward`` is simple and exact: a parameter that no rank used keeps ``grad=None``
(the optimizer skips it, as in one process); one that any rank used gets the sum over ranks
divided by ``N``, i.e. the gradient of the mean loss over the global batch. The price is no
overlap of communication with the backward pass: negligible for PEFT's few trainable
parameters, one all-reduce of the model per step for full fine-tuning.

Chapter: README ("Several GPUs", ``distributed.py``).
"""
from __future__ import annotations

import atexit
import math
import os
from typing import Any, NamedTuple, Sequence

import torch
import torch.distributed as dist


class Shard(NamedTuple):
    """Which part of a data set this rank reads.

    Attributes:
        rank: this process's rank.
        world: number of processes.
        seed: base seed of the shuffling permutation (the permutation of epoch ``e`` is
            ``randperm(n)`` under ``manual_seed(seed + e)``, as in ``DistributedSampler``).
        epoch: the epoch (``set_epoch``).
        pad: repeat the first indices so every rank gets the same number of items (training:
            same number of steps, no rank waits in an all-reduce); evaluation uses ``False``
            so that nothing is counted twice.
    """

    rank: int
    world: int
    seed: int = 0
    epoch: int = 0
    pad: bool = True


# ---------------------------------------------------------------------- environment
def env_world_size() -> int:
    """``WORLD_SIZE`` as ``torchrun`` sets it (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """``RANK`` as ``torchrun`` sets it (0 when not launched by it); valid before and after the group exists."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """``LOCAL_RANK`` (the GPU index of this process on its host)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    """A process group of more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """Under ``torchrun``, ``cuda``/``cuda:k`` becomes ``cuda:LOCAL_RANK`` (one GPU per process)."""
    if device.type != "cuda" or env_world_size() <= 1:
        return device
    lr = local_rank()
    if lr >= torch.cuda.device_count():
        raise RuntimeError(f"local rank {lr} has no GPU: {torch.cuda.device_count()} visible; "
                           f"use --nproc_per_node <= the number of GPUs")
    return torch.device("cuda", lr)


def init_from_env(device: torch.device) -> bool:
    """Join the process group ``torchrun`` describes, if any; it stays for the process's lifetime.

    Backend: ``$CL_PEFT_DIST_BACKEND`` if set, else NCCL for a CUDA device and gloo otherwise.
    The group is left by :func:`cleanup` at interpreter exit, not after each run: creating the
    default group a second time in one ``torchrun`` process meets the first group's keys in
    the launcher's rendezvous store (gloo then fails with "connectFullMesh ... Connection refused").

    Returns:
        True when this call created the group; False in a single process or when the group
        already exists (created by an earlier run or by the user).
    """
    if env_world_size() <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    backend = os.environ.get("CL_PEFT_DIST_BACKEND") or ("nccl" if device.type == "cuda" else "gloo")
    kw: dict[str, Any] = {}
    if device.type == "cuda":
        dev = local_device(device)
        torch.cuda.set_device(dev)
        if backend == "nccl":
            kw["device_id"] = dev
    try:
        dist.init_process_group(backend, **kw)
    except TypeError:  # torch < 2.3 has no device_id (the GPU is already chosen by set_device)
        dist.init_process_group(backend)
    atexit.register(cleanup)
    return True


def cleanup() -> None:
    """Leave the process group (if one is active)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    """Where collective buffers must live: the current GPU for NCCL, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------------- data
def shard_indices(n: int, shard: Shard, shuffle: bool = False) -> torch.Tensor:
    """This rank's indices of a data set of ``n`` items, identical to ``DistributedSampler``'s.

    The permutation (or ``arange``) is the same on every rank; with ``shard.pad`` it is
    extended by its own first items to a multiple of ``world``; rank ``r`` takes positions
    ``r, r + world, ...``. Consequence used by the loop: with a per-rank batch of
    ``B / world``, the union of the ranks' i-th batches is exactly the single process's
    i-th batch of size ``B`` (when ``world`` divides ``B`` and ``n``).
    """
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(shard.seed + shard.epoch))
    else:
        order = torch.arange(n)
    if shard.pad and n % shard.world:
        total = math.ceil(n / shard.world) * shard.world
        order = order.repeat(math.ceil(total / max(n, 1)))[:total]
    return order[shard.rank::shard.world]


def shard_sampler(ds, shard: Shard, shuffle: bool = False):
    """A sampler for a ``DataLoader``: ``DistributedSampler`` (with ``set_epoch``) when padding,
    else this rank's unpadded strided indices (evaluation)."""
    if shard.pad:
        from torch.utils.data import DistributedSampler

        s = DistributedSampler(ds, num_replicas=shard.world, rank=shard.rank, shuffle=shuffle, seed=shard.seed,
                               drop_last=False)
        s.set_epoch(shard.epoch)
        return s
    return shard_indices(len(ds), shard, shuffle).tolist()


# ---------------------------------------------------------------------- collectives
@torch.no_grad()
def broadcast_parameters(params: Sequence[torch.Tensor], src: int = 0) -> None:
    """Copy rank ``src``'s values into ``params`` on every rank (one flat broadcast)."""
    if not is_distributed() or not params:
        return
    dev = _comm_device()
    flat = torch.cat([p.detach().reshape(-1).to(dev, torch.float32) for p in params])
    dist.broadcast(flat, src)
    o = 0
    for p in params:
        p.copy_(flat[o:o + p.numel()].view_as(p))
        o += p.numel()


@torch.no_grad()
def average_gradients(params: Sequence[torch.Tensor], loss: torch.Tensor) -> torch.Tensor:
    """Average ``params``' gradients and ``loss`` over all ranks, in one all-reduce.

    A parameter whose ``grad`` is None on some ranks counts as zero there; one that is None
    on every rank stays None (see the module docstring for why this matches one process).

    Returns:
        The loss averaged over ranks (detached, float32), the same on every rank.
    """
    world = world_size()
    if world == 1:
        return loss.detach().float()
    dev = _comm_device()
    used = [p.grad is not None for p in params]
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dev, torch.float32)
             for p in params]
    parts += [torch.tensor(used, dtype=torch.float32, device=dev), loss.detach().reshape(1).to(dev, torch.float32)]
    flat = torch.cat(parts)
    dist.all_reduce(flat)
    n_used = flat[-1 - len(params):-1].tolist()
    o = 0
    for p, k in zip(params, n_used):
        g = flat[o:o + p.numel()]
        o += p.numel()
        if k == 0:
            p.grad = None
        elif p.grad is None:
            p.grad = (g / world).view_as(p).to(p.dtype)
        else:
            p.grad.copy_(g.view_as(p)).div_(world)
    return flat[-1] / world


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64; exact for counts)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_logs(logs: dict[str, float]) -> dict[str, float]:
    """Numeric training logs averaged over ranks (keys every rank has); others kept from this rank.

    Each rank's logs describe its half of the last batch; their mean is the global batch's value.
    """
    if not is_distributed():
        return logs
    gathered = all_gather_object(logs)
    out = dict(logs)
    for k, v in logs.items():
        vals = [g.get(k) for g in gathered]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
            out[k] = float(sum(vals) / len(vals))
    return out
