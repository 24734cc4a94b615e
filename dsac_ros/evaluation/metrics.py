"""Pose-error metrics of the paper's evaluation (Sec. 4, Tables 1 and 2), pure numpy functions.

A frame counts as localized within (d cm, a deg) when its camera-centre error is below d cm AND
its rotation error is below a degrees. Frames without a pose get infinite errors: they count as
failures and as errors above any median they reach.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from dsac_ros.geometry.transforms import pose_errors_np

#: (translation metres, rotation degrees) thresholds reported: 5cm/5deg (paper Table 1) first.
THRESHOLDS: tuple[tuple[float, float], ...] = ((0.05, 5.0), (0.02, 2.0), (0.10, 10.0))


def threshold_key(max_m: float, max_deg: float) -> str:
    """Name of a threshold pair, e.g. (0.05, 5) -> '5cm_5deg'."""
    return f'{100.0 * max_m:g}cm_{max_deg:g}deg'


def frame_errors(T_cw_est_n44: np.ndarray, T_cw_gt_n44: np.ndarray,
                 valid_n: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame rotation error (degrees) and camera-centre error (metres).

    Args:
        T_cw_est_n44: (N, 4, 4) estimated world-to-camera poses.
        T_cw_gt_n44: (N, 4, 4) ground-truth world-to-camera poses.
        valid_n: (N,) bool, False where there is no estimate (errors become inf); None = all.

    Returns:
        (rotation_deg_n, translation_m_n) float64 arrays.
    """
    est = np.asarray(T_cw_est_n44, dtype=np.float64).reshape(-1, 4, 4)
    gt = np.asarray(T_cw_gt_n44, dtype=np.float64).reshape(-1, 4, 4)
    if est.shape != gt.shape:
        raise ValueError(f'{est.shape[0]} estimates but {gt.shape[0]} ground-truth poses')
    if est.shape[0] == 0:
        return np.zeros(0), np.zeros(0)
    deg, m = pose_errors_np(est, gt)
    bad = ~np.isfinite(est).reshape(len(est), -1).all(axis=1)
    if valid_n is not None:
        valid_n = np.asarray(valid_n, dtype=bool).reshape(-1)
        if valid_n.shape[0] != est.shape[0]:
            raise ValueError(f'valid has {valid_n.shape[0]} entries for {est.shape[0]} frames')
        bad |= ~valid_n
    deg[bad] = np.inf
    m[bad] = np.inf
    return deg, m


def within(rotation_deg: np.ndarray, translation_m: np.ndarray, max_m: float,
           max_deg: float) -> np.ndarray:
    """Bool mask of the frames with translation < max_m AND rotation < max_deg."""
    rotation_deg = np.asarray(rotation_deg, dtype=np.float64)
    translation_m = np.asarray(translation_m, dtype=np.float64)
    if rotation_deg.shape != translation_m.shape:
        raise ValueError('rotation and translation errors differ in shape: '
                         f'{rotation_deg.shape} vs {translation_m.shape}')
    return (translation_m < max_m) & (rotation_deg < max_deg)


def percent_within(rotation_deg: np.ndarray, translation_m: np.ndarray, max_m: float,
                   max_deg: float) -> float:
    """Percentage (0..100) of frames with translation < max_m AND rotation < max_deg; NaN
    without frames."""
    ok = within(rotation_deg, translation_m, max_m, max_deg)
    if ok.size == 0:
        return float('nan')
    return float(100.0 * ok.mean())


def median(errors: np.ndarray) -> float:
    """Median of errors where inf (no pose) counts as the largest value; NaN when empty."""
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        return float('nan')
    return float(np.median(errors))


@dataclass(frozen=True)
class ErrorSummary:
    """Summary of one selection mode on one set of frames.

    frames: number of frames; localized_pct: % with a valid pose; median_rotation_deg /
    median_translation_m: medians over all frames (no pose = inf); within_pct: threshold key
    (e.g. '5cm_5deg') -> % of frames within it.
    """

    frames: int
    localized_pct: float
    median_rotation_deg: float
    median_translation_m: float
    within_pct: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(rotation_deg: np.ndarray, translation_m: np.ndarray,
              valid: np.ndarray | None = None,
              thresholds: tuple[tuple[float, float], ...] = THRESHOLDS) -> ErrorSummary:
    """ErrorSummary of per-frame errors (degrees, metres); `valid` (bool) defaults to finite."""
    rotation_deg = np.asarray(rotation_deg, dtype=np.float64).reshape(-1)
    translation_m = np.asarray(translation_m, dtype=np.float64).reshape(-1)
    if valid is None:
        valid = np.isfinite(rotation_deg) & np.isfinite(translation_m)
    valid = np.asarray(valid, dtype=bool).reshape(-1)
    n = rotation_deg.size
    return ErrorSummary(
        frames=int(n),
        localized_pct=float(100.0 * valid.mean()) if n else float('nan'),
        median_rotation_deg=median(rotation_deg),
        median_translation_m=median(translation_m),
        within_pct={threshold_key(m, d): percent_within(rotation_deg, translation_m, m, d)
                    for m, d in thresholds},
    )


__all__ = ['THRESHOLDS', 'ErrorSummary', 'frame_errors', 'median', 'percent_within',
           'summarize', 'threshold_key', 'within']
