"""Evaluation metrics on hand-made inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dsac_ros.evaluation.metrics import (
    THRESHOLDS,
    frame_errors,
    median,
    percent_within,
    summarize,
    threshold_key,
)


def pose_T_cw(yaw_deg: float, centre_m) -> np.ndarray:
    """World-to-camera pose with rotation about z by yaw_deg and camera centre centre_m."""
    a = math.radians(yaw_deg)
    R = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ np.asarray(centre_m, dtype=np.float64)
    return T


def test_frame_errors_known_offsets():
    gt = np.stack([pose_T_cw(30.0, [1.0, 2.0, 1.5])] * 3)
    est = np.stack([pose_T_cw(33.0, [1.0, 2.0, 1.5]),    # 3 deg, 0 m
                    pose_T_cw(30.0, [1.03, 2.04, 1.5]),  # 0 deg, 5 cm
                    pose_T_cw(-150.0, [1.0, 2.0, 1.5])])  # 180 deg
    deg, m = frame_errors(est, gt)
    np.testing.assert_allclose(deg, [3.0, 0.0, 180.0], atol=1e-4)
    np.testing.assert_allclose(m, [0.0, 0.05, 0.0], atol=1e-9)


def test_frame_errors_invalid_and_nan_are_inf():
    gt = np.stack([np.eye(4)] * 3)
    est = gt.copy()
    est[2, 0, 3] = np.nan
    deg, m = frame_errors(est, gt, valid_n=[True, False, True])
    assert deg[0] == 0.0 and m[0] == 0.0
    assert np.isinf(deg[1:]).all() and np.isinf(m[1:]).all()
    with pytest.raises(ValueError):
        frame_errors(est[:2], gt)
    with pytest.raises(ValueError):
        frame_errors(est, gt, valid_n=[True])


def test_percent_within_is_a_joint_strict_threshold():
    deg = np.array([1.0, 6.0, 1.0, 4.9, np.inf])
    m = np.array([0.01, 0.01, 0.06, 0.049, np.inf])
    assert percent_within(deg, m, 0.05, 5.0) == pytest.approx(40.0)
    assert percent_within(deg, m, 0.10, 10.0) == pytest.approx(80.0)
    assert percent_within(deg, m, 0.02, 2.0) == pytest.approx(20.0)
    assert percent_within([5.0], [0.01], 0.05, 5.0) == 0.0  # strictly below
    assert math.isnan(percent_within([], [], 0.05, 5.0))
    with pytest.raises(ValueError):
        percent_within([1.0], [1.0, 2.0], 0.05, 5.0)


def test_median_counts_failures_as_large():
    assert median([1.0, 2.0, 3.0]) == 2.0
    assert median([1.0, np.inf, np.inf]) == np.inf
    assert median([1.0, 3.0, np.inf, np.inf, 2.0]) == 3.0
    assert math.isnan(median([]))


def test_summarize():
    deg = np.array([1.0, 6.0, 1.0, 4.9, np.inf])
    m = np.array([0.01, 0.01, 0.06, 0.049, np.inf])
    s = summarize(deg, m)
    assert s.frames == 5 and s.localized_pct == pytest.approx(80.0)
    assert s.median_rotation_deg == pytest.approx(4.9)
    assert s.median_translation_m == pytest.approx(0.049)
    assert list(s.within_pct) == ['5cm_5deg', '2cm_2deg', '10cm_10deg']
    assert s.within_pct == pytest.approx({'5cm_5deg': 40.0, '2cm_2deg': 20.0,
                                          '10cm_10deg': 80.0})
    assert s.to_dict()['within_pct']['5cm_5deg'] == pytest.approx(40.0)
    assert threshold_key(*THRESHOLDS[0]) == '5cm_5deg'
