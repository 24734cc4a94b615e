"""One device resolver for inference and training, and the bf16 capability check."""

from __future__ import annotations

import pytest
import torch

from dsac_ros.device import bf16_supported, check_device_name, resolve_device


def test_cuda_request_falls_back_to_cpu_with_warning():
    warnings: list[str] = []
    device = resolve_device('cuda', warn=warnings.append)
    if torch.cuda.is_available():
        assert device.type == 'cuda' and not warnings
    else:
        assert device == torch.device('cpu') and 'CUDA is not available' in warnings[0]
    assert resolve_device('cpu') == torch.device('cpu')


def test_auto_strict_and_local_rank():
    expected = 'cuda' if torch.cuda.is_available() else 'cpu'
    assert resolve_device('auto').type == expected
    assert resolve_device(torch.device('cpu'), strict=True) == torch.device('cpu')
    if torch.cuda.is_available():
        assert resolve_device('auto').index is None
        assert resolve_device('auto', local_rank=0) == torch.device('cuda', 0)
    else:
        with pytest.raises(ValueError, match='CUDA is not available'):
            resolve_device('cuda:0', strict=True)
        assert resolve_device('auto', local_rank=3) == torch.device('cpu')


def test_device_names_and_bf16_check():
    for name in ('auto', 'cpu', 'cuda', 'cuda:1'):
        check_device_name(name)
    for name in ('gpu', 'cuda:x', ''):
        with pytest.raises(ValueError, match='device must be'):
            check_device_name(name)
    assert isinstance(bf16_supported(torch.device('cpu')), bool)
