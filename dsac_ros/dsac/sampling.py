"""Seeded sampling of minimal sets (4 distinct valid cells) and uniform draws, batched."""

from __future__ import annotations

import torch
from torch import Tensor


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
            dtype: torch.dtype = torch.float32) -> Tensor:
    """U[0, 1) draws from `generator` (on the generator's device), returned on `device`."""
    gen_device = generator.device if generator is not None else device
    draws = torch.rand(shape, generator=generator, device=gen_device, dtype=dtype)
    return draws.to(device)


def sample_minimal_sets(valid_bm: Tensor, num_sets: int, generator: torch.Generator | None,
                        set_size: int = 4) -> tuple[Tensor, Tensor]:
    """Sample `num_sets` sets of `set_size` distinct valid cells per image.

    Each set is uniform over the subsets of the valid cells: the k-th member is drawn uniformly
    from the n - k cells not drawn yet (an index into the remaining cells, shifted past the
    already drawn ones in ascending order), so no set repeats a cell.

    Args:
        valid_bm: (B, M) bool, True where a cell's scene coordinate is usable.
        num_sets: N, sets per image.
        generator: seeded torch.Generator (any device) or None for the global RNG.
        set_size: cells per set (4 for P4P).

    Returns:
        cells_bnk: (B, N, set_size) long indices into the M cells. For an image with fewer
            than `set_size` valid cells the indices are arbitrary (possibly invalid cells).
        enough_b: (B,) bool, True where the image has at least `set_size` valid cells.
    """
    if valid_bm.dim() != 2:
        raise ValueError(f'valid_bm must be (B, M), got shape {tuple(valid_bm.shape)}')
    B, M = valid_bm.shape
    device = valid_bm.device
    count_b = valid_bm.sum(dim=1)
    enough_b = count_b >= set_size
    # Valid cells first, in cell order (stable sort of the "invalid" flag).
    order_bm = torch.sort((~valid_bm).to(torch.uint8), dim=1, stable=True).indices
    u_bnk = uniform((B, num_sets, set_size), generator, device, torch.float64)
    # Rank among the valid cells: in [0, n - k) for the k-th member.
    chosen: list[Tensor] = []
    for k in range(set_size):  # over the 4 members of a set, not over hypotheses
        remaining_b = (count_b - k).clamp(min=1).to(torch.float64)
        rank_bn = torch.floor(u_bnk[:, :, k] * remaining_b[:, None]).to(torch.long)
        rank_bn = torch.minimum(rank_bn, (remaining_b.to(torch.long) - 1)[:, None])
        if chosen:
            previous_bnk = torch.sort(torch.stack(chosen, dim=-1), dim=-1).values
            for j in range(k):
                rank_bn = rank_bn + (rank_bn >= previous_bnk[:, :, j]).to(torch.long)
        chosen.append(rank_bn)
    rank_bnk = torch.stack(chosen, dim=-1).clamp(max=M - 1)
    cells_bnk = torch.gather(order_bm, 1, rank_bnk.reshape(B, -1)).reshape(B, num_sets, set_size)
    return cells_bnk, enough_b
