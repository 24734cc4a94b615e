"""Where and how training runs: device, autocast precision, and torchrun (DDP) process groups."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import logging
import os
from typing import Iterator

import torch
import torch.distributed as dist

from dsac_ros.device import bf16_supported, resolve_device
from dsac_ros.training.config import Precision

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """device: torch device of this process. amp_dtype: autocast dtype of the coordinate-net
    forward (None = float32). rank / world_size: torchrun process index and count (0 / 1
    without torchrun)."""

    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self, enabled: bool = True) -> contextlib.AbstractContextManager:
        """Autocast context for network forwards (a no-op in float32)."""
        if self.amp_dtype is None or not enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def resolve_amp_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device`` (None = float32)."""
    precision = Precision(precision)
    if precision is Precision.FP32:
        return None
    if device.type == 'cuda':
        if precision is Precision.FP16:
            return torch.float16
        if precision is Precision.BF16 or bf16_supported(device):
            return torch.bfloat16
        return torch.float16
    if device.type == 'cpu':
        if precision is Precision.FP16:
            raise ValueError('fp16 autocast is not supported for CPU training; use bf16 or fp32')
        if precision is Precision.BF16 or bf16_supported(device):
            return torch.bfloat16
        return None
    return None


def setup_runtime(device: str | torch.device, precision: Precision) -> Runtime:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), initialise the process group
    when WORLD_SIZE > 1 (nccl on CUDA, gloo otherwise) and pick the device and precision."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    dev = resolve_device(device, local_rank=local_rank, strict=True)
    if world_size > 1 and not dist.is_initialized():
        backend = 'nccl' if dev.type == 'cuda' else 'gloo'
        if dev.type == 'cuda':
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        _LOG.info('rank %d/%d: process group %s on %s', rank, world_size, backend, dev)
    return Runtime(device=dev, amp_dtype=resolve_amp_dtype(precision, dev), rank=rank,
                   world_size=world_size, local_rank=local_rank)


def teardown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean_(tensors: list[torch.Tensor], runtime: Runtime) -> None:
    """Average tensors over all ranks in place (one flat all-reduce)."""
    if not runtime.distributed or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= runtime.world_size
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def broadcast_flag(value: bool, runtime: Runtime) -> bool:
    """Rank 0's boolean, on every rank (e.g. 'stop now'); any rank may raise it (max)."""
    if not runtime.distributed:
        return value
    t = torch.tensor([1.0 if value else 0.0],
                     device=runtime.device if runtime.device.type == 'cuda' else 'cpu')
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None: unchanged)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
