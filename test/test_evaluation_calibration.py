"""Covariance calibration (NEES): Gaussian pose errors drawn from a known covariance are
calibrated; a covariance four times too small asks for a scale of four."""

from __future__ import annotations

import numpy as np
import torch

from dsac_ros.evaluation.calibration import CHI2_6_MEDIAN, covariance_calibration, pose_nees
from dsac_ros.geometry.transforms import pose_to_matrix_np, se3_exp


def _case(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(6, 6)) * np.array([0.01] * 3 + [0.005] * 3)[:, None]
    cov = A @ A.T + 1e-6 * np.eye(6)
    T_est = pose_to_matrix_np(rng.normal(size=(n, 3)), rng.normal(size=(n, 4)))
    xi = rng.multivariate_normal(np.zeros(6), cov, size=n)
    T_gt = T_est @ se3_exp(torch.from_numpy(xi)).numpy()  # the estimator's convention
    return T_est, T_gt, np.broadcast_to(cov, (n, 6, 6))


def test_calibrated_covariance_has_chi_square_nees():
    T_est, T_gt, cov = _case()
    c = covariance_calibration(T_est, T_gt, cov)
    assert c.frames == len(T_est)
    assert abs(c.nees_mean - 6.0) < 0.3 and abs(c.nees_median - CHI2_6_MEDIAN) < 0.3
    assert abs(c.within_95_pct - 95.0) < 1.5 and abs(c.scale - 1.0) < 0.06


def test_overconfident_covariance_asks_for_a_scale_and_invalid_frames_are_skipped():
    T_est, T_gt, cov = _case()
    c = covariance_calibration(T_est, T_gt, cov / 4.0)
    assert abs(c.scale - 4.0) < 0.25 and c.within_95_pct < 60
    fixed = covariance_calibration(T_est, T_gt, cov / 4.0, scale=c.scale)
    assert abs(fixed.nees_median - CHI2_6_MEDIAN) < 1e-6
    valid = np.zeros(len(T_est), bool)
    valid[:10] = True
    assert np.isnan(pose_nees(T_est, T_gt, cov, valid)[10:]).all()
    assert covariance_calibration(T_est[:0], T_gt[:0], cov[:0]).frames == 0
