"""NodeSettings: specs next to the fields, one validation, one path to the estimator config."""

from __future__ import annotations

import pytest

from dsac_ros.device import Device
from dsac_ros.dsac import EstimatorConfig, Selection
from dsac_ros.ros.parameters import PARAMETER_SPECS, NodeSettings, Reliability, TfMode


def test_specs_sit_on_the_fields_and_choices_come_from_the_enums():
    assert PARAMETER_SPECS['selection'].choices == tuple(s.value for s in Selection)
    assert PARAMETER_SPECS['device'].choices == tuple(d.value for d in Device)
    assert PARAMETER_SPECS['input_reliability'].choices == tuple(r.value for r in Reliability)
    assert PARAMETER_SPECS['tf_mode'].choices == tuple(m.value for m in TfMode)
    assert PARAMETER_SPECS['image_topic'].read_only
    assert not PARAMETER_SPECS['num_hypotheses'].read_only
    assert all(spec.description for spec in PARAMETER_SPECS.values())


@pytest.mark.parametrize('name,value,reason', [
    ('num_hypotheses', 0, 'minimum'), ('num_hypotheses', 5000, 'maximum'),
    ('selection', 'best', 'not one of'), ('inlier_threshold_px', 'wide', 'number'),
    ('map_frame', '/map', 'frame id'), ('image_topic', '', 'must not be empty'),
    ('continuous', 1, 'bool'), ('max_rate_hz', float('nan'), 'finite'),
    ('tf_mode', 'map_to_base', 'not one of'), ('odom_frame', '', 'frame id'),
    ('base_frame', '/base_link', 'frame id'), ('tf_camera_frame', 'map', 'frame of its own'),
    ('base_frame', '', 'needs a base_frame'), ('odom_frame', 'map', 'must differ'),
])
def test_invalid_values_are_refused_with_the_parameter_named(name, value, reason):
    with pytest.raises(ValueError, match=reason) as error:
        NodeSettings(**{name: value})
    assert name in str(error.value)


def test_a_camera_without_a_robot():
    """No base frame: fine with map_to_camera or none, refused with map_to_odom."""
    assert NodeSettings(base_frame='', tf_mode='map_to_camera').base_frame == ''
    assert NodeSettings(base_frame='', tf_mode='none').tf_mode == 'none'


def test_estimator_config_is_one_conversion():
    settings = NodeSettings(selection='dsac', num_hypotheses=64, inlier_threshold_px=12,
                            refinement_steps=3, min_inliers=70, seed=9)
    assert settings.inlier_threshold_px == 12.0 and isinstance(settings.inlier_threshold_px,
                                                               float)
    base = EstimatorConfig(soft_inlier_beta=0.25)
    config = settings.estimator_config(base)
    assert config == EstimatorConfig(selection=Selection.DSAC, num_hypotheses=64,
                                     inlier_threshold_px=12.0, refinement_steps=3,
                                     min_inliers_for_pose=70, seed=9, soft_inlier_beta=0.25)
    # Threshold 0: the base's (the checkpoint's settings).
    assert NodeSettings(inlier_threshold_px=0.0).estimator_config(
        EstimatorConfig(inlier_threshold_px=5.0)).inlier_threshold_px == 5.0
    with pytest.raises(ValueError, match='inlier_threshold_px'):
        NodeSettings(inlier_threshold_px=0.2)
    # The node's ranges lie inside the estimator's: the extremes convert.
    for name, spec in PARAMETER_SPECS.items():
        if spec.min_value is not None and name in ('num_hypotheses', 'inlier_threshold_px',
                                                   'refinement_steps', 'min_inliers'):
            for value in (spec.min_value, spec.max_value):
                value = type(getattr(NodeSettings(), name))(value)
                NodeSettings(**{name: value}).estimator_config()
