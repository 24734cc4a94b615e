"""The estimator settings a model is trained with and must be deployed with; they travel in its
checkpoint's metadata under one key, `MODEL_SETTINGS_KEY` (docs/CONTRACTS.md).

`model_settings_metadata` writes them (the trainer), `read_model_settings` reads them (the
relocalizer, which the evaluator, the node and the demo all go through). Checkpoints written
before the key existed read as the paper's settings at the same viewing angle: 10 px at
640 px image width, 5 px at 320.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
import json
import logging
from typing import Any, Mapping

from dsac_ros.dsac.config import EstimatorConfig

__all__ = ['MODEL_SETTINGS_KEY', 'ModelSettings', 'Scoring', 'default_inlier_threshold_px',
           'model_settings_metadata', 'read_model_settings']

LOGGER = logging.getLogger(__name__)

MODEL_SETTINGS_KEY = 'model_settings'
"""Checkpoint metadata key holding the JSON of a `ModelSettings`."""

# The paper's tau (Sec. 3) and the image width it is for (7-Scenes, 640x480).
PAPER_INLIER_THRESHOLD_PX = 10.0
PAPER_IMAGE_WIDTH_PX = 640


class Scoring(str, Enum):
    """How hypotheses are scored. AUTO: what the checkpoint records (the Score CNN when it has
    one and its validation found it clearly more accurate than soft inliers, else soft inliers);
    SCORE_NET: the checkpoint's Score CNN; SOFT_INLIERS: the soft inlier count."""

    AUTO = 'auto'
    SCORE_NET = 'score_net'
    SOFT_INLIERS = 'soft_inliers'


def default_inlier_threshold_px(image_width_px: int) -> float:
    """The paper's 10 px at 640 px width, scaled to the model's input width (same angle)."""
    return PAPER_INLIER_THRESHOLD_PX * float(image_width_px) / PAPER_IMAGE_WIDTH_PX


@dataclass(frozen=True)
class ModelSettings:
    """What must travel with a model (units: pixels of the model's input size).

    Attributes:
        inlier_threshold_px: tau the model was trained (stage 3) and is deployed with.
        soft_inlier_beta: sharpness of the soft inlier count (1/px).
        score_alpha: selection temperature on Score CNN outputs (`EstimatorConfig`).
        soft_inlier_alpha: selection temperature on soft inlier counts.
        scoring: SCORE_NET or SOFT_INLIERS, the scoring the model is deployed with.
        amp_dtype: autocast dtype of the coordinate network in training ('bfloat16',
            'float16') or None (float32); the relocalizer runs bf16 only for bf16 models.
        inlier_threshold_cm: the RGB-D mode's 3D inlier threshold (cm) the model was trained
            with; None: not recorded (the estimator's default applies).
    The Score CNN's own input scaling (error clamp, its soft-inlier feature's threshold and
    beta) is part of its config, stored with its weights.
    """

    inlier_threshold_px: float = PAPER_INLIER_THRESHOLD_PX
    soft_inlier_beta: float = EstimatorConfig.soft_inlier_beta
    score_alpha: float = EstimatorConfig.score_alpha
    soft_inlier_alpha: float = EstimatorConfig.soft_inlier_alpha
    scoring: Scoring = Scoring.SOFT_INLIERS
    amp_dtype: str | None = None
    inlier_threshold_cm: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, 'scoring', Scoring(self.scoring))
        if self.scoring is Scoring.AUTO:
            raise ValueError('a model records score_net or soft_inliers, not auto')
        self.apply(EstimatorConfig())  # validates the numbers

    def apply(self, config: EstimatorConfig) -> EstimatorConfig:
        """`config` with this model's thresholds, beta and temperatures (the RGB-D threshold
        where recorded)."""
        config = replace(config, inlier_threshold_px=float(self.inlier_threshold_px),
                         soft_inlier_beta=float(self.soft_inlier_beta),
                         score_alpha=float(self.score_alpha),
                         soft_inlier_alpha=float(self.soft_inlier_alpha))
        return self.fill_unset(config)

    def fill_unset(self, config: EstimatorConfig) -> EstimatorConfig:
        """`config` with its unset (None) RGB-D threshold taken from this model."""
        if config.inlier_threshold_cm is None and self.inlier_threshold_cm is not None:
            config = replace(config, inlier_threshold_cm=float(self.inlier_threshold_cm))
        return config

    def use_score_net(self, scoring: Scoring | str = Scoring.AUTO) -> bool:
        """Whether to score with the Score CNN: ``scoring`` unless AUTO, else the model's."""
        scoring = Scoring(scoring)
        return (self.scoring if scoring is Scoring.AUTO else scoring) is Scoring.SCORE_NET


def model_settings_metadata(settings: ModelSettings) -> dict[str, str]:
    """{MODEL_SETTINGS_KEY: JSON} to merge into a checkpoint's metadata."""
    values = asdict(settings)
    values['scoring'] = settings.scoring.value
    return {MODEL_SETTINGS_KEY: json.dumps(values, sort_keys=True)}


def read_model_settings(metadata: Mapping[str, Any] | None,
                        image_size: tuple[int, int]) -> ModelSettings:
    """The `ModelSettings` of a checkpoint from its metadata and input size (height, width).

    Without the key (older checkpoints): tau = `default_inlier_threshold_px(width)`, the
    defaults otherwise, the amp dtype from the older 'precision' / 'amp_dtype' / 'autocast'
    entries and the RGB-D threshold from an 'inlier_threshold_cm' entry. Unknown fields are
    ignored; a malformed entry raises ValueError.
    """
    metadata = dict(metadata or {})
    raw = metadata.get(MODEL_SETTINGS_KEY)
    if raw is None:
        legacy = ' '.join(str(metadata.get(k, '')).lower()
                          for k in ('precision', 'amp_dtype', 'autocast'))
        amp = 'bfloat16' if ('bf16' in legacy or 'bfloat16' in legacy) else None
        try:
            cm = float(metadata['inlier_threshold_cm'])
        except (KeyError, TypeError, ValueError):
            cm = None
        return ModelSettings(inlier_threshold_px=default_inlier_threshold_px(image_size[1]),
                             amp_dtype=amp, inlier_threshold_cm=cm)
    try:
        values = json.loads(raw) if isinstance(raw, str) else dict(raw)
        known = {f.name for f in fields(ModelSettings)}
        return ModelSettings(**{k: v for k, v in values.items() if k in known})
    except (TypeError, ValueError) as exc:
        raise ValueError(f'bad {MODEL_SETTINGS_KEY} entry in checkpoint metadata {raw!r}: '
                         f'{exc}') from exc
