"""Coverage of test views by training views: a hand-built case, bins, train/test overlap, and
the evaluator reporting both (table, JSON, warning)."""

from __future__ import annotations

import math
from pathlib import Path
import shutil

import numpy as np
import pytest
from test_relocalizer import SCENE, oracle_relocalizer

from dsac_ros.data.seven_scenes import SceneDataset
from dsac_ros.data.synthetic import generate_scene
from dsac_ros.data.view_coverage import (
    CoverageConfig,
    coverage_summary,
    nearest_training_views,
    train_test_overlap,
)
from dsac_ros.dsac import EstimatorConfig, Selection
from dsac_ros.evaluation.coverage import accuracy_by_coverage
from dsac_ros.evaluation.report import format_table, scene_to_dict
from dsac_ros.evaluation.run import EvaluationConfig, evaluate


def pose(position, yaw_deg: float = 0.0) -> np.ndarray:
    """Camera-to-world pose at ``position`` whose optical axis (+z) is turned by yaw about the
    camera's y axis (0: looking along world +z)."""
    a = math.radians(yaw_deg)
    T = np.eye(4)
    T[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
    T[:3, 3] = position
    return T


def test_nearest_training_views_hand_built():
    train = np.stack([pose((0, 0, 0)), pose((0.4, 0, 0), 90.0), pose((3, 0, 0), 10.0)])
    test = np.stack([
        pose((0.3, 0, 0)),          # train 1 is closest (0.1 m, 90 deg); train 0 is nearest
        pose((0.4, 0, 0), 90.0),    # exactly on train 1
        pose((3.0, 0.3, 0), 40.0),  # only train 2 is close: 0.3 m, 30 deg -> 'mid'
        pose((1.5, 0, 0), 180.0),   # far from everything
    ])
    nearest = nearest_training_views(test, train)
    np.testing.assert_allclose(nearest.min_distance_m, [0.1, 0.0, 0.3, 1.1], atol=1e-9)
    np.testing.assert_allclose(nearest.angle_at_min_distance_deg, [90, 0, 30, 90], atol=1e-6)
    np.testing.assert_allclose(nearest.min_angle_deg, [0, 0, 30, 90], atol=1e-6)
    np.testing.assert_array_equal(nearest.nearest_index, [0, 1, 2, 1])
    np.testing.assert_allclose(nearest.nearest_distance_m, [0.3, 0.0, 0.3, 1.1], atol=1e-9)
    np.testing.assert_allclose(nearest.nearest_angle_deg, [0, 0, 30, 90], atol=1e-6)
    np.testing.assert_allclose(nearest.nearest_score, [1.2, 0.0, 1.5, 4.5], atol=1e-6)
    assert list(nearest.bins()) == ['mid', 'near', 'mid', 'far']
    # Chunking does not change anything.
    chunked = nearest_training_views(test, train, CoverageConfig(chunk=1))
    np.testing.assert_array_equal(chunked.nearest_index, nearest.nearest_index)
    np.testing.assert_allclose(chunked.nearest_score, nearest.nearest_score)
    # Other scales: within 35 cm and 35 deg, test 2 becomes near.
    wide = nearest_training_views(test, train, CoverageConfig(0.35, 35.0))
    assert list(wide.bins()) == ['near', 'near', 'near', 'far']

    summary = coverage_summary(nearest)
    assert summary['frames'] == 4
    assert summary['nearest_distance_m']['median'] == pytest.approx(0.3)
    assert summary['nearest_distance_m']['p90'] == pytest.approx(np.percentile(
        [0.3, 0.0, 0.3, 1.1], 90))
    assert {k: v['frames'] for k, v in summary['bins'].items()} == {'near': 1, 'mid': 2,
                                                                    'far': 1}
    assert '25 cm and 20 deg' in summary['near_definition']

    rot = np.array([1.0, 1.0, 1.0, np.inf])
    trans = np.array([0.01, 0.2, 0.01, np.inf])
    by_bin = accuracy_by_coverage(nearest, rot, trans)
    assert by_bin['near'].within_pct['5cm_5deg'] == 0.0
    assert by_bin['mid'].within_pct['5cm_5deg'] == 100.0 and by_bin['mid'].frames == 2
    assert by_bin['far'].localized_pct == 0.0
    with pytest.raises(ValueError):
        accuracy_by_coverage(nearest, rot[:2], trans[:2])
    with pytest.raises(ValueError):
        nearest_training_views(test, np.zeros((0, 4, 4)))


def test_train_test_overlap_counts_files_and_identical_poses(tmp_path):
    train = np.stack([pose((0, 0, 0)), pose((1, 0, 0), 30.0)])
    test = np.stack([pose((1, 0, 0), 30.0), pose((1, 0, 0), 31.0), pose((2, 0, 0))])
    files = [tmp_path / f'{k}.png' for k in range(4)]
    overlap = train_test_overlap(files[1:3] + [files[3]], files[:2], test, train)
    assert (overlap.shared_files, overlap.identical_poses, overlap.test_frames) == (1, 1, 3)
    assert overlap.any and 'test frames are also training frames' in overlap.message()
    clean = train_test_overlap(files[2:], files[:2], test[1:], train)
    assert not clean.any and clean.message() == ''


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    """The tiny synthetic scene, and a copy whose test split is its first training sequence
    (as bag extraction with test_fraction 0 writes it)."""
    root = tmp_path_factory.mktemp('coverage')
    scene = generate_scene(root / 'held_out', SCENE)
    same = root / 'same_frames'
    shutil.copytree(scene, same)
    (same / 'TestSplit.txt').write_text('sequence1\n')
    return scene, same


def _evaluate(scene: Path):
    frames = list(SceneDataset(scene, 'test'))
    config = EvaluationConfig(selections=(Selection.RANSAC,),
                              estimator=EstimatorConfig(num_hypotheses=32))
    return evaluate(oracle_relocalizer(frames), scene, config)


def test_evaluator_reports_coverage_and_per_bin_accuracy(scenes):
    result = _evaluate(scenes[0])
    assert result.coverage is not None and not result.coverage.overlap.any
    assert len(result.coverage.nearest) == SCENE.test_frames
    assert result.coverage.train_frames == SCENE.train_frames
    table = format_table([result])
    assert 'Distance of the test views to the training views' in table
    assert 'Accuracy by distance to the training views' in table
    assert 'WARNING' not in table
    data = scene_to_dict(result)
    coverage = data['coverage']
    assert coverage['frames'] == SCENE.test_frames and coverage['overlap']['warning'] is None
    assert coverage['nearest_distance_m']['median'] > 0.0
    n_bins = sum(b['frames'] for b in coverage['accuracy_by_bin']['ransac'].values())
    assert n_bins == SCENE.test_frames
    frame = data['selections']['ransac']['frames'][0]
    assert frame['nearest_train_distance_m'] == pytest.approx(
        float(result.coverage.nearest.nearest_distance_m[0]))
    # The training split evaluated: no coverage (every frame is a training frame by choice).
    frames = list(SceneDataset(scenes[0], 'train'))
    train_result = evaluate(oracle_relocalizer(frames), scenes[0], EvaluationConfig(
        split='train', selections=(Selection.RANSAC,), max_frames=1,
        estimator=EstimatorConfig(num_hypotheses=16)))
    assert train_result.coverage is None and 'Distance of the test' not in format_table(
        [train_result])


def test_evaluator_warns_when_test_frames_are_training_frames(scenes, caplog):
    with caplog.at_level('WARNING', logger='dsac_ros.evaluation.run'):
        result = _evaluate(scenes[1])
    overlap = result.coverage.overlap
    assert overlap.shared_files == overlap.identical_poses == overlap.test_frames > 0
    assert 'test frames are also training frames' in caplog.text
    table = format_table([result])
    assert 'WARNING: test frames are also training frames' in table
    assert scene_to_dict(result)['coverage']['overlap']['shared_files'] == overlap.test_frames
    np.testing.assert_allclose(result.coverage.nearest.nearest_distance_m, 0.0, atol=1e-12)
