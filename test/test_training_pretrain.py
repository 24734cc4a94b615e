"""Encoder pretraining (training.pretrain, dsac_pretrain): rendered rooms, per-room heads, the
encoder file, resume, and dsac_train starting from the file."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dsac_ros.cli.pretrain import main as pretrain_main
from dsac_ros.data.synthetic import SyntheticSceneConfig, generate_scene
from dsac_ros.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_encoder,
    load_encoder_into,
)
from dsac_ros.models.scene_coordinate_net import SceneCoordinateNet, SceneCoordinateNetConfig
from dsac_ros.training.config import (
    Budget,
    CoordStageConfig,
    LrSchedule,
    Precision,
    Stage,
    TrainConfig,
    preset_config,
    shipped_encoder,
)
from dsac_ros.training.pretrain import (
    PretrainConfig,
    PretrainViews,
    RoomHeads,
    pretrain,
    render_room,
)
from dsac_ros.training.runtime import Runtime
from dsac_ros.training.session import open_session
from dsac_ros.training.trainer import train

SMALL_NET = SceneCoordinateNetConfig.small()
TINY_VIEWS = PretrainViews(walk_frames=2, random_views=1, width=64, height=48, fx_px=55.0)


def _config(out: Path, **kw) -> PretrainConfig:
    base = PretrainConfig(out_dir=out, rooms=2, views=TINY_VIEWS, net=SMALL_NET, minutes=None,
                          iterations=4, batch_size=2, precision=Precision.FP32, threads=1,
                          log_every=2)
    return replace(base, **kw)


def test_rendered_views_and_targets_agree_with_the_camera():
    """Every cell target reprojects onto its cell centre through the view's own camera."""
    room = render_room(10_000, TINY_VIEWS)
    assert room.images_vhw3.shape == (3, 48, 64, 3) and room.images_vhw3.dtype == torch.uint8
    assert room.coords_v3hw.shape == (3, 3, 6, 8)
    world = room.coords_v3hw.float() + room.centre_3.view(1, 3, 1, 1)
    assert torch.isfinite(world).all()  # a closed room: every ray hits something
    cam = room.T_cw_v44[:, None, :3, :3].float() @ world.flatten(2).transpose(1, 2)[..., None]
    cam = cam[..., 0] + room.T_cw_v44[:, None, :3, 3].float()
    assert (cam[..., 2] > 0).all()
    uv = (room.K_33.float() @ (cam / cam[..., 2:]).transpose(1, 2)).transpose(1, 2)[..., :2]
    v, u = torch.meshgrid(torch.arange(6) * 8 + 4.0, torch.arange(8) * 8 + 4.0, indexing='ij')
    expected = torch.stack([u, v], -1).reshape(1, 48, 2)
    assert (uv - expected).abs().max() < 0.05  # float16 targets: millimetres along the ray


def test_room_heads_are_separate_regressors():
    heads = RoomHeads(rooms=3, channels=4, width=8)
    features = torch.randn(2, 4, 2, 3)
    out = heads(features, torch.tensor([0, 2]))
    assert out.shape == (2, 3, 2, 3)
    out.sum().backward()
    assert heads.w1.grad[1].abs().sum() == 0  # room 1 was not in the batch
    assert heads.w1.grad[0].abs().sum() > 0 and heads.w1.grad[2].abs().sum() > 0


def test_pretraining_writes_a_loadable_encoder_and_resumes(tmp_path: Path):
    out = tmp_path / 'pre'
    path = pretrain(_config(out))
    raw = torch.load(path, weights_only=True)
    assert raw['format'] == 'dsac_ros.encoder'
    enc = load_encoder(path)
    assert enc.metadata['pretrain_steps'] == 4 and enc.metadata['recipe_rooms'] == 2
    assert enc.net_config == SMALL_NET
    cached = sorted((out / 'rooms').iterdir())
    assert len(cached) == 2
    stamps = [p.stat().st_mtime_ns for p in cached]
    lines: list[str] = []
    pretrain(_config(out, iterations=6, progress=lines.append))
    assert any('resuming pretraining at step 4' in line for line in lines)
    assert not any('rendered' in line for line in lines)  # rooms came from the cache
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert load_encoder(path).metadata['pretrain_steps'] == 6
    net = SceneCoordinateNet(SMALL_NET)
    load_encoder_into(net, load_encoder(path))
    state = load_encoder(path).state_dict
    assert all(torch.equal(net.encoder.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match='pretrained encoder is for'):
        load_encoder_into(SceneCoordinateNet(), load_encoder(path))


def test_a_curriculum_run_starts_from_an_earlier_encoder_and_records_it(tmp_path: Path):
    first = pretrain(_config(tmp_path / 'four_rooms'))
    start = load_encoder(first)
    out = tmp_path / 'more_rooms'
    lines: list[str] = []
    # lr 0: the weights must come out exactly as they went in (BatchNorm statistics do move)
    path = pretrain(_config(out, rooms=3, init_encoder=first, lr=LrSchedule(0.0),
                            progress=lines.append))
    assert any('starting from the encoder' in line for line in lines)
    grown = load_encoder(path)
    params = {name for name, _ in SceneCoordinateNet(SMALL_NET).encoder.named_parameters()}
    assert all(torch.equal(grown.state_dict[k], start.state_dict[k]) for k in params)
    assert grown.metadata['init_encoder'] == start.origin == f'encoder.pt sha256:{start.digest}'
    assert grown.metadata['init_encoder_steps'] == 4 and grown.metadata['recipe_rooms'] == 3
    # a resumed run keeps the lineage without reading the first file again
    first.unlink()
    resumed = load_encoder(pretrain(_config(out, rooms=3, init_encoder=first, iterations=6)))
    assert resumed.metadata['pretrain_steps'] == 6
    assert resumed.metadata['init_encoder'] == grown.metadata['init_encoder']
    assert pretrain_main(['--out', str(tmp_path / 'bad'), '--iterations', '1', '--init-encoder',
                          str(tmp_path / 'missing.pt')]) == 2


def test_corrupt_and_foreign_encoder_files_are_clear_errors(tmp_path: Path):
    path = pretrain(_config(tmp_path / 'pre', iterations=1))
    data = bytearray(path.read_bytes())
    bad = tmp_path / 'truncated.pt'
    bad.write_bytes(bytes(data[:len(data) // 2]))
    with pytest.raises(CheckpointError, match='cannot be read'):
        load_encoder(bad)
    raw = torch.load(path, weights_only=True)
    key = next(k for k, v in raw['state_dict'].items() if v.is_floating_point())
    raw['state_dict'][key] = raw['state_dict'][key] + 1
    tampered = tmp_path / 'tampered.pt'
    torch.save(raw, tampered)
    with pytest.raises(CheckpointError, match='digest'):
        load_encoder(tampered)
    raw['format_version'] = 99
    torch.save(raw, tampered)
    with pytest.raises(CheckpointError, match='version 99'):
        load_encoder(tampered)
    with pytest.raises(CheckpointError, match='not a dsac_ros encoder'):
        load_encoder(tmp_path / 'pre' / 'pretrain_state.pt')


def test_training_starts_from_the_encoder_with_a_fresh_head(tmp_path: Path):
    encoder = pretrain(_config(tmp_path / 'pre'))
    scene = tmp_path / 'scene'
    generate_scene(scene, SyntheticSceneConfig(width=64, height=48, fx=55.0, fy=55.0,
                                               train_frames=8, test_frames=2))
    config = TrainConfig(scene=scene, out_dir=tmp_path / 'run', coord_net=SMALL_NET,
                         encoder=encoder, stages=(Stage.COORDS,), progress_bar=False,
                         precision=Precision.FP32, threads=1, validation_fraction=0.0,
                         coords=CoordStageConfig(budget=Budget(iterations=2),
                                                 crop_fraction=1.0))
    session = open_session(config, Runtime(torch.device('cpu'), None))
    state = load_encoder(encoder).state_dict
    mine = session.coord_net.encoder.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in state.items())
    fresh = SceneCoordinateNet(SMALL_NET).head.state_dict()
    assert session.coord_net.head[-1].weight.abs().max() < 0.01  # small initial offsets
    assert session.coord_net.head[-1].weight.shape == fresh['4.weight'].shape
    result = train(config)
    meta = load_checkpoint(result.model).metadata
    assert meta['encoder'] == load_encoder(encoder).origin  # the same form as pretrain's lineage
    # encoder_lr_scale 0: stage 1 trains the head alone on the pretrained encoder
    frozen = replace(config, out_dir=tmp_path / 'frozen',
                     coords=replace(config.coords, encoder_lr_scale=0.0))
    net = load_checkpoint(train(frozen).model).coord_net
    params = dict(net.encoder.named_parameters())
    assert all(torch.equal(params[k], state[k]) for k in params)
    assert not torch.equal(net.head[-1].weight, session.coord_net.head[-1].weight)
    # freeze_stem: the strided stem stays the pretrained one, the residual blocks learn
    stem_frozen = replace(config, out_dir=tmp_path / 'stem',
                          coords=replace(config.coords, freeze_stem=True))
    net = load_checkpoint(train(stem_frozen).model).coord_net
    stem_names = {k for k, _ in net.stem().named_parameters()}  # the encoder's prefix
    params = dict(net.encoder.named_parameters())
    assert stem_names and all(torch.equal(params[k], state[k]) for k in stem_names)
    assert any(not torch.equal(params[k], state[k]) for k in params if k not in stem_names)


def test_dsac_train_freezes_the_stem_on_request(tmp_path: Path):
    """The stem is the encoder's strided part, up to 1/8 resolution; --freeze-stem keeps it."""
    from dsac_ros.cli.train import build_parser, config_from_args
    stem = SceneCoordinateNet().stem()
    assert len(stem) == 4 and stem(torch.zeros(1, 3, 32, 48)).shape == (1, 128, 4, 6)
    base = ['--scene', str(tmp_path), '--out', str(tmp_path / 'out')]
    parse = build_parser().parse_args
    assert not config_from_args(parse(base), tmp_path).coords.freeze_stem
    assert config_from_args(parse(base + ['--freeze-stem']), tmp_path).coords.freeze_stem


def test_default_preset_starts_from_the_shipped_encoder_where_it_fits():
    default = preset_config('default', '/s', '/o')
    assert default.encoder == shipped_encoder()
    assert preset_config('default', '/s', '/o', coord_net=SMALL_NET).encoder is None
    assert preset_config('paper', '/s', '/o').encoder is None
    shipped = shipped_encoder()
    if shipped is not None:  # the package's file fits the default net and loads
        load_encoder_into(SceneCoordinateNet(), load_encoder(shipped))


def test_dsac_pretrain_cli_rejects_bad_budgets(tmp_path: Path):
    assert pretrain_main(['--out', str(tmp_path / 'o'), '--iterations', '0']) == 2
    assert pretrain_main(['--out', str(tmp_path / 'o'), '--rooms', '0', '--iterations',
                          '1']) == 2
