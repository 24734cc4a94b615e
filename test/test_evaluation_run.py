"""evaluate() + reports on a synthetic scene, with an oracle network (exact scene coordinates:
every mode must localize every frame) and with a tiny real checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_relocalizer import SCENE, oracle_relocalizer, tiny_checkpoint

from dsac_ros.data.seven_scenes import SceneDataset
from dsac_ros.data.synthetic import generate_scene
from dsac_ros.dsac import EstimatorConfig, Selection
from dsac_ros.evaluation.metrics import summarize
from dsac_ros.evaluation.report import (
    combined_summaries,
    format_table,
    ground_plane_axes,
    write_report,
)
from dsac_ros.evaluation.run import EvaluationConfig, evaluate, frame_indices


@pytest.fixture(scope='module')
def scene(tmp_path_factory):
    return generate_scene(tmp_path_factory.mktemp('eval') / 'synth', SCENE)


@pytest.fixture(scope='module')
def oracle_result(scene):
    frames = list(SceneDataset(scene, 'test'))
    reloc = oracle_relocalizer(frames)
    result = evaluate(reloc, scene, EvaluationConfig(estimator=EstimatorConfig(num_hypotheses=64)))
    return result, reloc, frames


def test_oracle_localizes_every_frame_in_every_mode(oracle_result):
    result, reloc, frames = oracle_result
    assert set(result.selections) == {s.value for s in Selection}
    assert result.frame_names == tuple(f.name for f in frames)
    np.testing.assert_allclose(result.T_wc_gt_n44, np.stack([f.T_wc for f in frames]))
    # The network ran once per frame (plus one warm-up call), shared by the three modes.
    assert reloc.coord_net.calls == len(frames) + 1
    for sel in result.selections.values():
        assert sel.valid_n.all()
        assert sel.translation_m_n.max() < 0.01 and sel.rotation_deg_n.max() < 0.5
        assert sel.summary.within_pct == {'5cm_5deg': 100.0, '2cm_2deg': 100.0,
                                          '10cm_10deg': 100.0}
        assert sel.summary.median_translation_m < 0.005
        assert (sel.estimator_ms_n > 0).all()
    assert (result.network_ms_n >= 0).all()


def test_report_files_and_table(oracle_result, tmp_path):
    result, _, _ = oracle_result
    files = write_report([result, result], tmp_path)
    for key in ('results', f'{result.scene}_error_cdf', f'{result.scene}_top_view',
                f'{result.scene}_2_top_view'):
        assert files[key].is_file() and files[key].stat().st_size > 0
    assert files[f'{result.scene}_top_view'].read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    data = json.loads(files['results'].read_text())
    scene = data['scenes'][0]
    assert scene['frames'] == len(result.frame_names)
    frame = scene['selections']['dsac']['frames'][0]
    assert frame['valid'] and frame['translation_m'] < 0.01 and len(frame['T_wc']) == 4
    assert data['complete']['ransac']['within_pct']['5cm_5deg'] == 100.0
    table = format_table([result])
    lines = table.splitlines()
    assert lines[0].startswith('Accuracy') and '5cm' in lines[0]
    assert lines[1].split() == ['Scene', 'RANSAC', 'SoftAM', 'DSAC']
    assert lines[2].split() == [result.scene, '100.0%', '100.0%', '100.0%']
    assert 'Median pose errors' in table and 'network' in table
    two = format_table([result, result])
    assert 'Average' in two and 'Complete' in two


def test_failures_count_in_combined_summaries(oracle_result):
    result, _, _ = oracle_result
    sel = result.selections['ransac']
    inf = np.full_like(sel.rotation_deg_n, np.inf)
    failed = type(sel)(**{**sel.__dict__, 'valid_n': np.zeros_like(sel.valid_n),
                          'rotation_deg_n': inf, 'translation_m_n': inf,
                          'summary': summarize(inf, inf)})
    bad = type(result)(**{**result.__dict__, 'selections': {'ransac': failed}})
    combined = combined_summaries([result, bad])
    assert combined['complete']['ransac']['within_pct']['5cm_5deg'] == pytest.approx(50.0)
    assert combined['average']['ransac']['within_pct']['5cm_5deg'] == pytest.approx(50.0)
    assert '-, -' in format_table([bad])


def test_ground_plane_of_synthetic_scene_is_xy(oracle_result):
    result, _, _ = oracle_result
    assert ground_plane_axes(result.T_wc_gt_n44) == (0, 1, 2)
    # A y-down world (7-Scenes style): rotate the synthetic poses so world z maps to -y.
    R = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    T = result.T_wc_gt_n44.copy()
    T[:, :3, :] = np.einsum('ij,njk->nik', R, T[:, :3, :])
    assert ground_plane_axes(T) == (0, 2, 1)


def test_real_checkpoint_and_max_frames(scene, tmp_path):
    path = tiny_checkpoint(tmp_path / 'tiny.pt')
    config = EvaluationConfig(selections=('dsac',), max_frames=2, device='cpu',
                              estimator=EstimatorConfig(num_hypotheses=16))
    result = evaluate(path, scene, config)
    assert list(result.selections) == ['dsac'] and len(result.frame_names) == 2
    sel = result.selections['dsac']
    assert sel.rotation_deg_n.shape == (2,) and sel.T_wc_n44.shape == (2, 4, 4)
    assert np.all(np.isinf(sel.rotation_deg_n[~sel.valid_n]))


def test_frame_indices_and_config_checks():
    np.testing.assert_array_equal(frame_indices(10, 3), [0, 4, 9])
    np.testing.assert_array_equal(frame_indices(3, 10), [0, 1, 2])
    assert frame_indices(0, None).size == 0
    with pytest.raises(ValueError):
        EvaluationConfig(max_frames=0)
    with pytest.raises(ValueError):
        EvaluationConfig(selections=('best',))
    with pytest.raises(ValueError):
        EvaluationConfig(selections=())


def test_rgbd_side_by_side_on_the_same_frames(scene, tmp_path):
    frames = list(SceneDataset(scene, 'test'))
    reloc = oracle_relocalizer(frames)
    config = EvaluationConfig(selections=('ransac', 'dsac'), depth=True, depth_noise=0.01,
                              estimator=EstimatorConfig(num_hypotheses=64))
    result = evaluate(reloc, scene, config)
    assert list(result.selections) == ['ransac', 'ransac_rgbd', 'dsac', 'dsac_rgbd']
    assert reloc.coord_net.calls == len(frames) + 1  # one network output for both modes
    for key, sel in result.selections.items():
        assert sel.mode.value == ('rgbd' if key.endswith('_rgbd') else 'rgb')
        assert sel.valid_n.all() and sel.depth_fallbacks == 0
        assert sel.translation_m_n.max() < 0.02 and sel.rotation_deg_n.max() < 1.0
    assert result.depth_noise == 0.01
    table = format_table([result])
    assert 'RANSAC RGB-D' in table and 'est. DSAC RGB-D' in table
    data = json.loads(write_report([result], tmp_path)['results'].read_text())
    scene_json = data['scenes'][0]
    assert scene_json['selections']['dsac_rgbd']['mode'] == 'rgbd'
    assert scene_json['depth_noise'] == 0.01
    with pytest.raises(ValueError, match='depth_noise'):
        EvaluationConfig(depth=True, depth_noise=-0.1)
