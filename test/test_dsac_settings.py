"""The estimator settings a model travels with: one metadata key, written and read in one place."""

from __future__ import annotations

import json

import pytest

from dsac_ros.dsac import (
    MODEL_SETTINGS_KEY,
    EstimatorConfig,
    ModelSettings,
    Scoring,
    default_inlier_threshold_px,
    model_settings_metadata,
    read_model_settings,
)


def test_round_trip_through_metadata():
    settings = ModelSettings(inlier_threshold_px=5.0, soft_inlier_beta=1.0, score_alpha=0.5,
                             soft_inlier_alpha=0.2, scoring=Scoring.SCORE_NET,
                             amp_dtype='bfloat16')
    metadata = model_settings_metadata(settings)
    assert list(metadata) == [MODEL_SETTINGS_KEY] and isinstance(metadata[MODEL_SETTINGS_KEY], str)
    assert read_model_settings({'other': 1, **metadata}, (240, 320)) == settings
    config = settings.apply(EstimatorConfig(num_hypotheses=64))
    assert (config.inlier_threshold_px, config.soft_inlier_beta, config.score_alpha,
            config.soft_inlier_alpha, config.num_hypotheses) == (5.0, 1.0, 0.5, 0.2, 64)


def test_older_checkpoints_read_as_the_paper_at_their_width():
    assert default_inlier_threshold_px(640) == 10.0 and default_inlier_threshold_px(320) == 5.0
    settings = read_model_settings({'scene': 'x', 'precision': 'bf16'}, (240, 320))
    assert settings.inlier_threshold_px == 5.0 and settings.scoring is Scoring.SOFT_INLIERS
    assert settings.amp_dtype == 'bfloat16'
    assert read_model_settings(None, (480, 640)).inlier_threshold_px == 10.0
    # unknown fields from a newer writer are ignored
    newer = {MODEL_SETTINGS_KEY: json.dumps({'inlier_threshold_px': 4.0, 'future': 1})}
    assert read_model_settings(newer, (240, 320)).inlier_threshold_px == 4.0


@pytest.mark.parametrize('raw', ['not json', json.dumps({'inlier_threshold_px': -1.0}),
                                 json.dumps({'scoring': 'auto'})])
def test_malformed_entries_raise(raw):
    with pytest.raises(ValueError):
        read_model_settings({MODEL_SETTINGS_KEY: raw}, (240, 320))


def test_scoring_choice():
    learned, counted = ModelSettings(scoring='score_net'), ModelSettings()
    assert learned.use_score_net() and not counted.use_score_net()
    assert counted.use_score_net('score_net') and not learned.use_score_net('soft_inliers')
