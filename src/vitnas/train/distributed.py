"""Data-parallel training under `torchrun` (gloo on CPU, NCCL on GPU).

Supernet steps use different parameter subsets, so instead of DDP's `find_unused_parameters`
graph walk every step, every rank samples the *same* subnet and gradients are averaged with one
coalesced all-reduce: exact, and cheap.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from vitnas.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def resolve_device(device: str = "auto") -> torch.device:
    """`--device` (auto | cpu | cuda | cuda:N) as a torch device: the one rule of every stage.
    Asking for CUDA where there is none is a `ConfigError` naming the option."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device}: not a device name") from None


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    asked = resolve_device(device)
    use_cuda = asked.type == "cuda"
    if use_cuda and world > 1:  # one GPU per local rank
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    elif use_cuda:  # one process: the GPU asked for (cuda:1 stays cuda:1; plain cuda is the current one)
        dev = asked if asked.index is not None else torch.device("cuda", torch.cuda.current_device())
    else:
        dev = asked
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def average_gradients(params, world_size: int) -> None:
    """Average `.grad` over ranks in one flattened all-reduce (ranks ran the same subnet, so the
    same parameters have gradients everywhere)."""
    if world_size <= 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat.div_(world_size)
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(synced)


def replicas_in_sync(model: torch.nn.Module, world_size: int) -> bool:
    """Whether every rank holds the same weights (a cheap checksum compared across ranks)."""
    if world_size <= 1:
        return True
    with torch.no_grad():
        s = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
        lo, hi = s.clone(), s.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.isclose(lo, hi, rtol=1e-9, atol=1e-9).item())



# ---- exchanging Python values between ranks, without pickle --------------------------------------
def _all_gather_bytes(data: bytes, info: DistInfo) -> list[bytes]:
    size = torch.tensor([len(data)], dtype=torch.int64, device=info.device)
    sizes = [torch.zeros_like(size) for _ in range(info.world_size)]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    buf = torch.zeros(longest, dtype=torch.uint8, device=info.device)
    if data:
        buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(info.device)
    parts = [torch.empty_like(buf) for _ in range(info.world_size)]
    dist.all_gather(parts, buf)
    return [bytes(p[:int(s.item())].cpu().numpy()) for p, s in zip(parts, sizes, strict=True)]


def _broadcast_bytes(data: bytes, info: DistInfo) -> bytes:
    size = torch.tensor([len(data)], dtype=torch.int64, device=info.device)
    dist.broadcast(size, src=0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=info.device)
    if info.is_main and data:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src=0)
    return bytes(buf.cpu().numpy())


def gather_map(fn, items: list, info: DistInfo) -> list:
    """`fn(items)` (a batched map: one JSON value per item, in order) with the items split across ranks.

    Rank r evaluates items r, r + W, r + 2W, ... (strided, so costly and cheap candidates spread
    evenly); the values travel as JSON and every rank returns the whole list in the original
    order, the list one process returns. Ranks call this together, with equal `items`.
    """
    if not info.enabled:
        return list(fn(items))
    mine = items[info.rank::info.world_size]
    local = list(fn(mine)) if mine else []
    if len(local) != len(mine):
        raise RuntimeError(f"rank {info.rank}: {len(local)} values for {len(mine)} items")
    parts = [json.loads(b) for b in _all_gather_bytes(json.dumps(local).encode(), info)]
    out: list = [None] * len(items)
    for rank, values in enumerate(parts):
        out[rank::info.world_size] = values
    return out


def broadcast(value, info: DistInfo):
    """Rank 0's `value` on every rank. It travels through `torch.save` and is read back with
    `weights_only=True` (plain containers, numbers, strings and tensors), as a checkpoint is."""
    if not info.enabled:
        return value
    buf = io.BytesIO()
    if info.is_main:
        torch.save(value, buf)
    data = _broadcast_bytes(buf.getvalue(), info)
    return value if info.is_main else torch.load(io.BytesIO(data), weights_only=True)
