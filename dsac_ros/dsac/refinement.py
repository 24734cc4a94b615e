"""When a hypothesis stops refining: the rule shared by the RGB (PnP) and RGB-D (Kabsch)
refinement rounds of the estimator."""

from __future__ import annotations

from torch import Tensor


def still_active(active_bk: Tensor, inlier_bkm: Tensor, previous_bkm: Tensor | None,
                 min_inliers: int, stop_when_unchanged: bool) -> tuple[Tensor, Tensor | None]:
    """Poses that refine another round, and the inlier sets to compare with next round.

    A pose (B, K) stops for good once it has fewer than `min_inliers` inliers (of
    `inlier_bkm`, (B, K, M) bool) or, with `stop_when_unchanged`, the same inlier set as in the
    previous round (`previous_bkm`, None in the first round).
    """
    active_bk = active_bk & (inlier_bkm.sum(dim=-1) >= min_inliers)
    if not stop_when_unchanged:
        return active_bk, previous_bkm
    if previous_bkm is not None:
        active_bk = active_bk & (inlier_bkm != previous_bkm).any(dim=-1)
    return active_bk, inlier_bkm
