"""dsac_extract_bag holds out test frames by default (the last 20 % of the recording), or
tests on a second bag; --test-fraction 0 keeps the old behaviour (every frame in both)."""

from __future__ import annotations

from pathlib import Path
import shutil

import numpy as np
import pytest
from test_data_bags import SCENE, TOPICS

from dsac_ros.cli import extract_bag as extract_cli
from dsac_ros.data.bag_writer import write_scene_bag
from dsac_ros.data.held_out import attach_test_sequence
from dsac_ros.data.seven_scenes import SceneDataset, write_intrinsics_json
from dsac_ros.data.synthetic import generate_scene


@pytest.fixture(scope='module')
def recordings(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A scene, a bag of its training frames and a bag of its test frames (pose topic)."""
    root = tmp_path_factory.mktemp('held_out')
    scene = generate_scene(root / 'room', SCENE)
    write_scene_bag(scene, root / 'train_bag', 'mcap', write_depth=False)
    write_scene_bag(scene, root / 'test_bag', 'mcap', split='test', write_depth=False)
    return scene, root / 'train_bag', root / 'test_bag'


def _extract(bag: Path, out: Path, *extra: str) -> int:
    return extract_cli.main([str(bag), str(out), '--image-topic', TOPICS.image,
                             '--camera-info-topic', TOPICS.camera_info, '--pose-topic',
                             TOPICS.pose, *extra])


def test_default_holds_out_the_end_of_the_recording(recordings, tmp_path, capsys):
    scene, bag, _ = recordings
    assert extract_cli.DEFAULT_TEST_FRACTION == 0.2
    assert _extract(bag, tmp_path / 'out') == 0
    n_test = int(SCENE.train_frames * 0.2)
    assert (tmp_path / 'out' / 'TestSplit.txt').read_text().split() == ['sequence2']
    train, test = SceneDataset(tmp_path / 'out', 'train'), SceneDataset(tmp_path / 'out', 'test')
    assert (len(train), len(test)) == (SCENE.train_frames - n_test, n_test)
    source = SceneDataset(scene, 'train')
    np.testing.assert_allclose(test[0].T_wc, source[SCENE.train_frames - n_test].T_wc,
                               atol=1e-9)
    assert f'{n_test} test' in capsys.readouterr().out
    # The old behaviour on request, with a note.
    assert _extract(bag, tmp_path / 'both', '--test-fraction', '0') == 0
    assert (tmp_path / 'both' / 'TestSplit.txt').read_text().split() == ['sequence1']
    assert 'the test split is the training frames' in capsys.readouterr().out


def test_second_bag_as_test_sequence(recordings, tmp_path, capsys):
    scene, bag, test_bag = recordings
    out = tmp_path / 'pair'
    assert _extract(bag, out, '--test-bag', str(test_bag)) == 0
    assert f'test: {SCENE.test_frames} frames' in capsys.readouterr().out
    assert (out / 'TrainSplit.txt').read_text().split() == ['sequence1']
    assert (out / 'TestSplit.txt').read_text().split() == ['sequence2']
    train, test = SceneDataset(out, 'train'), SceneDataset(out, 'test')
    assert (len(train), len(test)) == (SCENE.train_frames, SCENE.test_frames)
    for got, want in zip(test, SceneDataset(scene, 'test')):
        np.testing.assert_array_equal(got.image_rgb, want.image_rgb)
        np.testing.assert_allclose(got.T_wc, want.T_wc, atol=1e-9)
    assert [p.name for p in tmp_path.iterdir()] == ['pair']  # no temporary folders left
    # Both options at once: argparse refuses (exit status 2).
    with pytest.raises(SystemExit):
        _extract(bag, tmp_path / 'x', '--test-bag', str(test_bag), '--test-fraction', '0.3')


def test_short_recording_hints_at_the_options(recordings, tmp_path, capsys):
    _, bag, _ = recordings
    assert _extract(bag, tmp_path / 'short', '--max-frames', '3') == 2
    assert '--test-fraction 0' in capsys.readouterr().err


def test_attach_test_sequence_needs_one_camera(recordings, tmp_path):
    scene = recordings[0]
    other = tmp_path / 'other'
    shutil.copytree(scene, other)
    write_intrinsics_json(other / 'intrinsics.json', SCENE.K * [[1.1], [1.1], [1]],
                          SCENE.width, SCENE.height)
    with pytest.raises(ValueError, match='other intrinsics'):
        attach_test_sequence(scene, other, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()
