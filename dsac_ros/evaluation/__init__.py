"""Evaluation of relocalization accuracy (paper Sec. 4): metrics, runs and reports."""

from dsac_ros.evaluation.metrics import (
    THRESHOLDS,
    ErrorSummary,
    frame_errors,
    percent_within,
    summarize,
)
from dsac_ros.evaluation.run import EvaluationConfig, SceneResult, SelectionResult, evaluate

__all__ = [
    'THRESHOLDS',
    'ErrorSummary',
    'EvaluationConfig',
    'SceneResult',
    'SelectionResult',
    'evaluate',
    'frame_errors',
    'percent_within',
    'summarize',
]
