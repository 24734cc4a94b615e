"""DSAC estimator: hypothesis sampling, scoring, RANSAC / SoftAM / DSAC selection, refinement,
the differentiable expected pose loss (paper Sec. 2-3); RGB (P4P) or RGB-D (Kabsch) mode; and
the settings a model travels with."""

from dsac_ros.dsac.config import EstimatorConfig, PoseMode, ScoreFn, ScoreFunction, Selection
from dsac_ros.dsac.estimator import DsacEstimator, PoseEstimate, expected_pose_loss
from dsac_ros.dsac.rgbd import cell_depths
from dsac_ros.dsac.settings import (
    MODEL_SETTINGS_KEY,
    ModelSettings,
    Scoring,
    default_inlier_threshold_px,
    model_settings_metadata,
    read_model_settings,
)

__all__ = [
    'MODEL_SETTINGS_KEY',
    'DsacEstimator',
    'EstimatorConfig',
    'ModelSettings',
    'PoseEstimate',
    'PoseMode',
    'ScoreFn',
    'ScoreFunction',
    'Scoring',
    'Selection',
    'cell_depths',
    'default_inlier_threshold_px',
    'expected_pose_loss',
    'model_settings_metadata',
    'read_model_settings',
]
