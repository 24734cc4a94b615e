"""Networks and checkpoint files: shapes, round trip, atomic writes, bad files."""

import fractions
from pathlib import Path

import pytest
import torch

from dsac_ros.models import checkpoint as ckpt_mod
from dsac_ros.models.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    read_checkpoint_dict,
    save_checkpoint,
)
from dsac_ros.models.scene_coordinate_net import SceneCoordinateNet, SceneCoordinateNetConfig
from dsac_ros.models.score_net import ScoreNet, ScoreNetConfig

K = torch.tensor([[60.0, 0.0, 40.0], [0.0, 60.0, 32.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
SIZE = (64, 80)


def _nets(seed: int = 0) -> tuple[SceneCoordinateNet, ScoreNet]:
    torch.manual_seed(seed)
    coord = SceneCoordinateNet(SceneCoordinateNetConfig(stem_widths=(8, 16, 32), num_blocks=2,
                                                        dilations=(1, 2), head_width=32))
    coord.set_scene_mean(torch.tensor([1.0, -2.0, 0.5]))
    # Perturb BN statistics so the round trip also covers buffers.
    for m in coord.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    score = ScoreNet(ScoreNetConfig(width=8, output_scale=100.0))
    return coord.eval(), score.eval()


def test_networks_shapes_and_validation():
    coord, score = _nets()
    y = coord(torch.rand(2, 3, *SIZE))
    assert y.shape == (2, 3, SIZE[0] // 8, SIZE[1] // 8) and y.dtype == torch.float32
    s = score.score_fn(torch.rand(2, 5, 8, 10) * 100)
    assert s.shape == (2, 5)
    with pytest.raises(ValueError, match='multiple'):
        coord(torch.rand(1, 3, 60, 80))
    with pytest.raises(ValueError, match='expected image'):
        coord(torch.rand(1, 1, 64, 80))
    with pytest.raises(ValueError, match='error images'):
        score(torch.rand(3, 8, 10))


def test_round_trip_full_and_half(tmp_path: Path):
    coord, score = _nets()
    images = torch.rand(2, 3, *SIZE)
    errors = torch.rand(4, 1, 8, 10) * 60
    training = {'stage': 'coords', 'step': 7, 'rng': {'torch': torch.get_rng_state()},
                'optimizers': {}}
    path = save_checkpoint(tmp_path / 'full.pt', coord, score, K, SIZE,
                           metadata={'scene': 'x'}, training=training)
    loaded = load_checkpoint(path)
    assert loaded.image_size == SIZE and torch.equal(loaded.K, K)
    assert loaded.metadata == {'scene': 'x'} and loaded.training['step'] == 7
    assert loaded.coord_net.config == coord.config and loaded.score_net.config == score.config
    with torch.no_grad():
        torch.testing.assert_close(loaded.coord_net(images), coord(images), rtol=0, atol=0)
        torch.testing.assert_close(loaded.score_net(errors), score(errors), rtol=0, atol=0)
    # The file holds only weights_only-safe types.
    raw = torch.load(path, weights_only=True)
    assert raw['format_version'] == FORMAT_VERSION

    half = save_checkpoint(tmp_path / 'model.pt', coord, score, K, SIZE, half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    small = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in small.coord_net.parameters())
    torch.testing.assert_close(small.coord_net.scene_mean, coord.scene_mean, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(small.coord_net(images), coord(images), rtol=0, atol=5e-3)


def test_atomic_write_keeps_old_file_on_error(tmp_path: Path, monkeypatch):
    coord, score = _nets()
    path = save_checkpoint(tmp_path / 'c.pt', coord, None, K, SIZE)
    before = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.flush()
        raise OSError('disk full (simulated after a partial write)')

    monkeypatch.setattr(ckpt_mod.torch, 'save', failing_save)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint(path, coord, score, K, SIZE)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / 'new.pt', coord, score, K, SIZE)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not (tmp_path / 'new.pt').exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['c.pt']  # no temp files left
    assert load_checkpoint(path).score_net is None


def test_bad_files_raise_checkpoint_error(tmp_path: Path):
    coord, score = _nets()
    good = save_checkpoint(tmp_path / 'good.pt', coord, score, K, SIZE)
    data = good.read_bytes()

    with pytest.raises(CheckpointError, match='does not exist'):
        load_checkpoint(tmp_path / 'missing.pt')
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match='cannot be read'):
        load_checkpoint(truncated)
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'not a checkpoint at all' * 10)
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)
    corrupted = tmp_path / 'corrupted.pt'
    flipped = bytearray(data)
    mid = len(flipped) // 2
    flipped[mid:mid + 64] = bytes(64)
    corrupted.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError):
        load_checkpoint(corrupted)

    raw = read_checkpoint_dict(good)
    raw['format_version'] = FORMAT_VERSION + 1
    torch.save(raw, tmp_path / 'future.pt')
    with pytest.raises(CheckpointError, match='format version'):
        load_checkpoint(tmp_path / 'future.pt')
    torch.save({'weights': torch.zeros(3)}, tmp_path / 'foreign.pt')
    with pytest.raises(CheckpointError, match='not a dsac_ros checkpoint'):
        load_checkpoint(tmp_path / 'foreign.pt')
    raw = read_checkpoint_dict(good)
    raw['coord_net']['state_dict'].pop('head.0.weight')
    torch.save(raw, tmp_path / 'incomplete.pt')
    with pytest.raises(CheckpointError, match='coordinate net'):
        load_checkpoint(tmp_path / 'incomplete.pt')
    assert issubclass(CheckpointError, ValueError)


def test_unsafe_pickle_is_rejected(tmp_path: Path):
    coord, _ = _nets()
    raw = ckpt_mod.checkpoint_dict(coord, None, K, SIZE)
    # An arbitrary (importable) class: weights_only loading must refuse to build it.
    raw['metadata'] = {'x': fractions.Fraction(1, 3)}
    torch.save(raw, tmp_path / 'evil.pt')
    with pytest.raises(CheckpointError, match='cannot be read'):
        load_checkpoint(tmp_path / 'evil.pt')


def test_score_net_config_backward_compatible():
    d = ScoreNetConfig().to_dict()
    d.pop('output_scale')
    assert ScoreNetConfig.from_dict(d).output_scale == 1.0
    with pytest.raises(ValueError):
        ScoreNetConfig(output_scale=0.0)
