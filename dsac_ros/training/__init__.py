"""Training: componentwise (coordinates, score) and end-to-end (DSAC / SoftAM) stages."""

from dsac_ros.training.config import (
    Budget,
    CoordStageConfig,
    EndToEndStageConfig,
    LrSchedule,
    Precision,
    Preset,
    Schedule,
    ScoreStageConfig,
    Stage,
    TrainConfig,
    preset_config,
    with_budget,
)

__all__ = [
    'Budget',
    'CoordStageConfig',
    'EndToEndStageConfig',
    'LrSchedule',
    'Precision',
    'Preset',
    'Schedule',
    'ScoreStageConfig',
    'Stage',
    'TrainConfig',
    'preset_config',
    'with_budget',
]
