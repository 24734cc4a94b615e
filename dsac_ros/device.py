"""Where computation runs: one device resolver and the bf16 capability check.

Used by inference (relocalizer, estimator, node) and training alike, so the two agree on what
'auto' means. Callers choose the policy for a CUDA request on a machine without CUDA: inference
falls back to the CPU with a warning (a robot keeps localizing), training raises (hours on the
CPU by accident help nobody).
"""

from __future__ import annotations

from enum import Enum
import functools
import logging
from typing import Any, Callable

import torch

__all__ = ['Device', 'bf16_supported', 'check_device_name', 'cpu_bf16_supported',
           'resolve_device']

_LOG = logging.getLogger(__name__)


class Device(str, Enum):
    """Device names a configuration accepts ('cuda:N' is accepted too); AUTO picks CUDA when
    present."""

    AUTO = 'auto'
    CPU = 'cpu'
    CUDA = 'cuda'


def check_device_name(device: str | torch.device) -> None:
    """Raise ValueError unless ``device`` is 'auto', 'cpu', 'cuda' or 'cuda:N'."""
    name = str(device)
    if name in (Device.AUTO.value, Device.CPU.value):
        return
    if name == Device.CUDA.value or (name.startswith('cuda:') and name[5:].isdigit()):
        return
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


def resolve_device(requested: str | torch.device = Device.AUTO.value, *,
                   local_rank: int | None = None, strict: bool = False,
                   warn: Callable[[str], Any] | None = None) -> torch.device:
    """The torch device for a requested name.

    Args:
        requested: 'auto' (CUDA when available, else the CPU), 'cpu', 'cuda', 'cuda:N' or a
            torch.device.
        local_rank: torchrun's LOCAL_RANK: 'auto' and an index-less 'cuda' then become
            ``cuda:<local_rank % device_count>``; None keeps 'cuda' without an index (the
            current CUDA device).
        strict: a CUDA request without CUDA raises ValueError (training); otherwise the CPU is
            used and a warning given (inference).
        warn: where the warning goes (e.g. a ROS node's ``logger.warning``); the ``logging``
            module when None.
    """
    name = str(requested.value if isinstance(requested, Device) else requested)
    has_cuda = torch.cuda.is_available()
    if name == Device.AUTO.value:
        if not has_cuda:
            return torch.device('cpu')
        name = Device.CUDA.value
    device = torch.device(name)
    if device.type != 'cuda':
        return device
    if not has_cuda:
        if strict:
            raise ValueError(f'device {name} requested but CUDA is not available')
        text = f'device {name!r} requested but CUDA is not available: using the CPU'
        (warn or _LOG.warning)(text)
        return torch.device('cpu')
    if device.index is None and local_rank is not None:
        return torch.device('cuda', local_rank % torch.cuda.device_count())
    return device


@functools.lru_cache(maxsize=None)
def cpu_bf16_supported() -> bool:
    """True when this CPU runs bf16 convolutions natively (oneDNN + AVX512-BF16/AMX).

    Without native bf16 the emulation is slower than float32, so automatic precision choices
    keep float32.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        capability = ''
    flags = ''
    try:
        with open('/proc/cpuinfo', encoding='ascii', errors='replace') as f:
            flags = f.read()
    except OSError:
        pass
    if 'avx512_bf16' not in flags and 'amx_bf16' not in flags and 'AMX' not in capability:
        return False
    try:
        conv = torch.nn.Conv2d(3, 4, 3)
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            y = conv(torch.rand(1, 3, 8, 8))
        return y.dtype == torch.bfloat16 and bool(torch.isfinite(y.float()).all())
    except RuntimeError:
        return False


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively: CUDA with bf16 support, or a CPU with
    AVX512-BF16 / AMX (`cpu_bf16_supported`)."""
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    if device.type == 'cpu':
        return cpu_bf16_supported()
    return False
