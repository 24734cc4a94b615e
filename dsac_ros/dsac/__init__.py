"""DSAC estimator: hypothesis sampling, scoring, RANSAC / SoftAM / DSAC selection, refinement,
and the differentiable expected pose loss (paper Sec. 2-3)."""

from dsac_ros.dsac.config import EstimatorConfig, ScoreFn, ScoreFunction, Selection
from dsac_ros.dsac.estimator import DsacEstimator, PoseEstimate, expected_pose_loss

__all__ = [
    'DsacEstimator',
    'EstimatorConfig',
    'PoseEstimate',
    'ScoreFn',
    'ScoreFunction',
    'Selection',
    'expected_pose_loss',
]
