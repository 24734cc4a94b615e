"""DSAC estimator: hypothesis sampling, scoring, RANSAC / SoftAM / DSAC selection, refinement,
and the differentiable expected pose loss (paper Sec. 2-3); RGB (P4P) or RGB-D (Kabsch) mode."""

from dsac_ros.dsac.config import EstimatorConfig, PoseMode, ScoreFn, ScoreFunction, Selection
from dsac_ros.dsac.estimator import DsacEstimator, PoseEstimate, expected_pose_loss
from dsac_ros.dsac.rgbd import cell_depths

__all__ = [
    'DsacEstimator',
    'EstimatorConfig',
    'PoseEstimate',
    'PoseMode',
    'ScoreFn',
    'ScoreFunction',
    'Selection',
    'cell_depths',
    'expected_pose_loss',
]
