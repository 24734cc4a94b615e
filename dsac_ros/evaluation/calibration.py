"""Is the estimator's pose covariance honest? Normalised estimation error squared (NEES).

For a frame with estimate T_wc_est, ground truth T_wc_gt and covariance Sigma of the twist
xi = (rho m, phi rad) with T_wc_gt = T_wc_est @ se3_exp(xi) (the estimator's convention,
`dsac_ros.dsac.estimator.PoseEstimate.covariance_b66`), ``NEES = xi^T Sigma^-1 xi``. For a
calibrated Gaussian estimate NEES follows a chi-square law with 6 degrees of freedom: mean 6,
median 5.35, 95 % of frames below 12.59. The report also gives the factor ``scale`` by which
Sigma would have to be multiplied for the median NEES to be chi-square's (robust to the few
gross failures that dominate a mean): the node's ``covariance_scale`` parameter.
xi is taken to first order (rho = the translation of T_wc_est^-1 T_wc_gt, phi its rotation
vector), exact enough for the errors of frames that localize (a few degrees).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from dsac_ros.geometry.transforms import inflate_pose_covariance_np, matrix_to_axis_angle

CHI2_6_MEDIAN = 5.348121
CHI2_6_P95 = 12.591587


@dataclass(frozen=True)
class CovarianceCalibration:
    """NEES statistics over the frames with a pose (NaN when there is none).

    Attributes:
        frames: frames with a pose and a finite covariance.
        nees_mean / nees_median: expected 6 / 5.35 when calibrated.
        within_95_pct: % of frames with NEES below chi-square(6)'s 95 % bound (expected 95).
        scale: factor on the covariance that brings the median NEES to 5.35 (> 1: the
            covariance is too small, overconfident).
    """

    frames: int
    nees_mean: float
    nees_median: float
    within_95_pct: float
    scale: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def pose_nees(T_wc_est_n44: np.ndarray, T_wc_gt_n44: np.ndarray, covariance_n66: np.ndarray,
              valid_n: np.ndarray | None = None) -> np.ndarray:
    """(N,) NEES per frame (NaN where not valid or the covariance is not positive definite)."""
    est = np.asarray(T_wc_est_n44, np.float64).reshape(-1, 4, 4)
    gt = np.asarray(T_wc_gt_n44, np.float64).reshape(-1, 4, 4)
    cov = np.asarray(covariance_n66, np.float64).reshape(-1, 6, 6)
    valid = np.ones(len(est), bool) if valid_n is None else np.asarray(valid_n, bool).copy()
    delta = np.linalg.inv(est) @ gt
    phi = matrix_to_axis_angle(torch.from_numpy(delta[:, :3, :3])).numpy()
    xi = np.concatenate([delta[:, :3, 3], phi], axis=1)
    out = np.full(len(est), np.nan)
    for i in np.flatnonzero(valid & np.isfinite(cov).all(axis=(1, 2))):
        try:
            chol = np.linalg.cholesky(cov[i])
        except np.linalg.LinAlgError:
            continue
        z = np.linalg.solve(chol, xi[i])
        out[i] = float(z @ z)
    return out


def covariance_calibration(T_wc_est_n44: np.ndarray, T_wc_gt_n44: np.ndarray,
                           covariance_n66: np.ndarray, valid_n: np.ndarray | None = None,
                           scale: float = 1.0, floor_std_m: float = 0.0,
                           floor_std_rad: float = 0.0) -> CovarianceCalibration:
    """NEES statistics of the covariances as given, or as the node publishes them (``scale``
    and the floors of `dsac_ros.geometry.transforms.inflate_pose_covariance_np`)."""
    cov = np.asarray(covariance_n66, np.float64).reshape(-1, 6, 6)
    if scale != 1.0 or floor_std_m or floor_std_rad:
        cov = np.stack([inflate_pose_covariance_np(c, scale, floor_std_m, floor_std_rad)
                        for c in cov]) if len(cov) else cov
    nees = pose_nees(T_wc_est_n44, T_wc_gt_n44, cov, valid_n)
    nees = nees[np.isfinite(nees)]
    if not nees.size:
        nan = float('nan')
        return CovarianceCalibration(0, nan, nan, nan, nan)
    median = float(np.median(nees))
    return CovarianceCalibration(
        frames=int(nees.size), nees_mean=float(nees.mean()), nees_median=median,
        within_95_pct=float(100.0 * np.mean(nees <= CHI2_6_P95)),
        scale=median / CHI2_6_MEDIAN)


__all__ = ['CHI2_6_MEDIAN', 'CHI2_6_P95', 'CovarianceCalibration', 'covariance_calibration',
           'pose_nees']
