"""Training stages on a tiny synthetic scene: losses fall, gradients reach both networks."""

import csv
from dataclasses import replace
import logging
from pathlib import Path
import shutil

import pytest
import torch

from dsac_ros.data.seven_scenes import SceneDataset
from dsac_ros.data.synthetic import SyntheticSceneConfig, generate_scene
from dsac_ros.dsac import (
    EstimatorConfig,
    Scoring,
    Selection,
    default_inlier_threshold_px,
    read_model_settings,
)
from dsac_ros.geometry.camera import cell_centers
from dsac_ros.geometry.scoring import reprojection_errors
from dsac_ros.geometry.transforms import perturb_poses
from dsac_ros.models.checkpoint import load_checkpoint, read_checkpoint_dict
from dsac_ros.models.scene_coordinate_net import SceneCoordinateNet, SceneCoordinateNetConfig
from dsac_ros.models.score_net import ScoreNet, ScoreNetConfig
from dsac_ros.relocalizer import Relocalizer, RelocalizerConfig
from dsac_ros.training.augmentation import AugmentationConfig, augment_batch, crop_batch
from dsac_ros.training.config import (
    COORD_GRAD_UNIT_M,
    Budget,
    CoordStageConfig,
    EndToEndStageConfig,
    HeadStageConfig,
    LrSchedule,
    Precision,
    ReprojectionPhase,
    Schedule,
    ScoreStageConfig,
    Stage,
    TrainConfig,
    all_stages,
    preset_config,
    with_budget,
)
from dsac_ros.training.data import load_training_set, validation_split
from dsac_ros.training.losses import (
    guarded_reprojection_loss,
    reprojection_init_loss,
    reprojection_init_terms,
    score_targets,
)
from dsac_ros.training.novel_views import NovelViewConfig
from dsac_ros.training.runtime import Runtime, setup_runtime
from dsac_ros.training.session import TrainResult, open_session
from dsac_ros.training.stages import (
    _guarded_reprojection_on_frames,
    buffer_cells,
    end_to_end_loss,
    score_net_wins,
    train_e2e,
)
from dsac_ros.training.trainer import train

torch.set_num_threads(1)
SMALL_NET = SceneCoordinateNetConfig(stem_widths=(8, 16, 32), num_blocks=2, dilations=(1, 2),
                                     head_width=64)


@pytest.fixture(scope='module')
def tiny_scene(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('tiny') / 'scene'
    generate_scene(root, SyntheticSceneConfig(width=80, height=64, fx=65.0, fy=65.0,
                                              train_frames=30, test_frames=6))
    return root


def _rows(out: Path, stage: str) -> list[dict]:
    with open(out / 'log.csv', newline='') as f:
        return [r for r in csv.DictReader(f) if r['stage'] == stage]


def _whole_frames(**kw) -> CoordStageConfig:
    """Stage 1 on whole frames: these tests check what a stage learns on the tiny scene's
    80x64 frames, whose default windows (48x32) hold few cells; the windows themselves are
    checked in test_training_augmentation.py and run here in
    test_model_selection_never_reads_the_test_split."""
    return CoordStageConfig(crop_fraction=1.0, **kw)


def _config(scene: Path, out: Path, **kw) -> TrainConfig:
    base = TrainConfig(scene=scene, out_dir=out, progress_bar=False, log_every=5,
                       precision=Precision.FP32, threads=1, coord_net=SMALL_NET)
    return replace(base, **kw)


def test_presets_and_budget():
    paper = preset_config('paper', '/s', '/o')
    assert paper.coords.lr.lr == 1e-4 and paper.coords.lr.schedule is Schedule.STEP_HALF
    assert paper.coords.lr.at(49_999, 0.0) == 1e-4 and paper.coords.lr.at(50_000, 0.0) == 5e-5
    assert paper.e2e.coord_lr.at(10, 0.0) == pytest.approx(1e-4 / 2.0)
    assert paper.e2e.score_lr.at(500, 0.5) == 1e-7
    assert not paper.e2e.through_deployed_scoring  # the paper: through its Score CNN
    default = preset_config('default', '/s', '/o')
    assert default.e2e.through_deployed_scoring
    assert default.coords.lr.at(0, 0.0) == pytest.approx(2e-3)
    assert default.coords.lr.at(0, 0.5) == pytest.approx(1e-3)
    assert default.coords.lr.at(0, 1.0) == pytest.approx(0.0, abs=1e-12)
    timed = with_budget(default, minutes=10.0)
    assert default.stages == (Stage.COORDS, Stage.HEAD, Stage.SCORE, Stage.E2E)
    assert timed.coords.budget == Budget(minutes=6.5)
    assert timed.head.budget == Budget(minutes=1.5)
    assert timed.coords.budget.progress(10**9, 195.0) == pytest.approx(0.5)
    # The paper has no head stage; its coordinate stage gets the head's share too.
    assert all_stages('paper') == paper.stages == (Stage.COORDS, Stage.SCORE, Stage.E2E)
    assert with_budget(paper, minutes=10.0).coords.budget.minutes == pytest.approx(8.0)
    only = with_budget(replace(default, stages=(Stage.E2E,)), minutes=3.0)
    assert only.e2e.budget.minutes == pytest.approx(3.0)
    with pytest.raises(ValueError):
        Budget()
    with pytest.raises(ValueError, match='ransac'):
        EndToEndStageConfig(selection='ransac')


def test_validation_frames_are_each_sequences_tail():
    names = ([f'seq-01/frame-{i:06d}' for i in range(30)]
             + [f'seq-02/frame-{i:06d}' for i in range(5)] + ['seq-03/frame-000000'])
    train_index, validation = validation_split(names, 0.1)
    assert validation.tolist() == [27, 28, 29]  # 10 % of 30; none of 5 or of 1
    assert sorted(train_index.tolist() + validation.tolist()) == list(range(len(names)))
    assert validation_split(names, 0.0)[1].numel() == 0
    assert validation_split(names, 0.2)[1].tolist() == [24, 25, 26, 27, 28, 29, 34]
    assert validation_split(['a', 'b'], 0.99)[1].tolist() == [1]  # one training frame is kept
    with pytest.raises(ValueError):
        validation_split(names, 1.0)


def test_model_selection_never_reads_the_test_split(tiny_scene: Path, tmp_path: Path):
    # Without a test split on disk the checks still run, on the training sequences' tails.
    scene = tmp_path / 'no_test'
    shutil.copytree(tiny_scene, scene)
    (scene / 'TestSplit.txt').write_text('sequence99\n')  # names a folder that does not exist
    config = _config(scene, tmp_path / 'run', stages=(Stage.COORDS, Stage.SCORE),
                     coords=CoordStageConfig(budget=Budget(iterations=3), batch_size=2),
                     score=replace(ScoreStageConfig(), budget=Budget(iterations=3),
                                   batch_size=4))
    result = train(config)
    assert 0.0 < result.validation['coords_val_median_m'] < 10.0
    assert 'scoring_soft_inliers_5cm5deg_pct' in result.validation
    held = validation_split(load_training_set(scene, 'train').names, 0.1)[1]
    assert held.numel() == 3  # the tiny scene's 30 training frames: 3 sequences of 10


def test_stage1_loss_falls_and_files(tiny_scene: Path, tmp_path: Path):
    # Four frames, so that a few dozen steps show a clear drop (fitting them).
    config = _config(tiny_scene, tmp_path / 'run', stages=(Stage.COORDS,), max_frames=4,
                     coords=_whole_frames(budget=Budget(iterations=60), batch_size=4,
                                             lr=LrSchedule(5e-3, Schedule.CONSTANT)),
                     precision=Precision.AUTO)
    result = train(config)
    rows = _rows(config.out_dir, 'coords')
    first, last = float(rows[0]['loss']), float(rows[-1]['loss'])
    assert last < 0.75 * first, (first, last)
    assert result.stages_done == ['coords'] and result.steps == {'coords': 60}
    assert 'coords_val_median_m' not in result.validation  # 4 frames: none held out
    for name in ('checkpoint.pt', 'model.pt', 'log.csv', 'curves.png'):
        assert (config.out_dir / name).is_file(), name
    assert not (config.out_dir / 'model_componentwise.pt').exists()  # no e2e stage to come
    model = load_checkpoint(config.out_dir / 'model.pt')
    assert model.image_size == (64, 80) and model.score_net is None
    # The estimator settings travel: tau at the image width (the paper's 10 px at 640 px).
    settings = read_model_settings(model.metadata, model.image_size)
    assert settings.inlier_threshold_px == default_inlier_threshold_px(80)
    raw = read_checkpoint_dict(config.out_dir / 'checkpoint.pt')
    assert raw['training']['completed'] == ['coords'] and raw['training']['stage'] is None
    # Rerunning a completed stage in the same folder is a no-op.
    again = train(config)
    assert again.steps == {} and again.stages_done == ['coords']


def test_reprojection_init_without_depth_reduces_error(tiny_scene: Path, tmp_path: Path):
    config = _config(tiny_scene, tmp_path / 'nodepth', stages=(Stage.COORDS,), use_depth=False,
                     max_frames=4,
                     coords=_whole_frames(budget=Budget(iterations=80), batch_size=4,
                                             lr=LrSchedule(5e-3, Schedule.CONSTANT)))
    train(config)
    data = load_training_set(tiny_scene, 'train', use_depth=False, max_frames=4)
    assert data.coords_b3hw is None
    net = load_checkpoint(config.out_dir / 'checkpoint.pt').coord_net
    fresh = SceneCoordinateNet(SMALL_NET)
    fresh.set_scene_mean(data.scene_mean())
    fresh.eval()

    def median_px(model: SceneCoordinateNet) -> float:
        with torch.no_grad():
            pred = model(data.images_b3hw.float() / 255)
            T = data.T_cw_b44.float()
            _, err = reprojection_init_loss(pred, T, data.K_33.float(), clamp_px=1000.0)
            return float(err.median())

    before, after = median_px(fresh), median_px(net)
    assert after < 0.5 * before, (before, after)
    assert after < 8.0, after  # pixels, at 80x64

    # The loss itself: perfect predictions (depth-based) have ~zero reprojection error.
    with_depth = load_training_set(tiny_scene, 'train', max_frames=3)
    loss, err = reprojection_init_loss(with_depth.coords_b3hw.nan_to_num(0.0),
                                       with_depth.T_cw_b44, with_depth.K_33)
    valid = torch.isfinite(with_depth.coords_b3hw).all(dim=1)
    assert float(err[valid].max()) < 1e-3


def _coord_error(net: SceneCoordinateNet, data) -> tuple[float, float]:
    """(median coordinate error in m, median reprojection error in px) of the full forward."""
    with torch.no_grad():
        pred = net.eval()(data.images_b3hw.float() / 255)
    dist = (pred - data.coords_b3hw).norm(dim=1)
    _, err = reprojection_init_loss(pred, data.T_cw_b44.float(), data.K_33.float(),
                                    clamp_px=1000.0)
    return float(dist[torch.isfinite(dist)].median()), float(err.median())


@pytest.mark.parametrize('use_depth', [True, False])
def test_head_stage_fits_the_frames_with_the_encoder_frozen(tiny_scene: Path, tmp_path: Path,
                                                            use_depth: bool):
    out = tmp_path / 'run'
    coords = _whole_frames(budget=Budget(iterations=40), batch_size=4,
                              lr=LrSchedule(5e-3, Schedule.CONSTANT))
    base = _config(tiny_scene, out, stages=(Stage.COORDS,), max_frames=4, coords=coords,
                   use_depth=use_depth)
    train(base)
    before = load_checkpoint(out / 'checkpoint.pt').coord_net
    result = train(replace(base, stages=(Stage.COORDS, Stage.HEAD), head=HeadStageConfig(
        budget=Budget(iterations=150), cells_per_step=256)))
    assert result.steps == {'head': 150} and result.stages_done == ['coords', 'head']
    after = load_checkpoint(out / 'checkpoint.pt').coord_net
    encoder = after.encoder.state_dict()
    for name, value in before.encoder.state_dict().items():  # BatchNorm statistics too
        assert torch.equal(value, encoder[name]), name
    assert not torch.equal(before.head[0].weight, after.head[0].weight)
    # Measured with the whole network on the training images, not on the buffer.
    data = load_training_set(tiny_scene, 'train', max_frames=4)
    (m_before, px_before), (m_after, px_after) = _coord_error(before, data), _coord_error(
        after, data)
    if use_depth:  # metres for the first half of the budget, then pixels
        assert m_after < 0.7 * m_before, (m_before, m_after)
    assert px_after < 0.7 * px_before, (px_before, px_after)


def test_guarded_reprojection_loss_ignores_errors_along_the_viewing_ray():
    K = torch.tensor([[100.0, 0.0, 40.0], [0.0, 100.0, 30.0], [0.0, 0.0, 1.0]])
    T_cw = torch.eye(4)
    T_cw[:3, 3] = torch.tensor([0.1, -0.2, 0.3])  # world -> camera
    pix = torch.tensor([[12.0, 20.0], [60.0, 44.0], [40.0, 30.0]])
    depth = torch.tensor([2.0, 3.0, 2.5])
    rays = torch.cat([(pix - K[:2, 2]) / K[0, 0], torch.ones(3, 1)], dim=1)  # z = 1
    target = rays * depth[:, None] - T_cw[:3, 3]  # camera -> world (identity rotation)
    Ts, Ks = T_cw.expand(3, 4, 4), K.expand(3, 3, 3)

    def loss(pred):
        return guarded_reprojection_loss(pred, target, pix, Ts, Ks, ReprojectionPhase(
            guard_m=0.3, metres_per_px=0.01, clamp_px=50.0))

    value, dist = loss(target.clone())
    assert value < 1e-4 and dist.max() < 1e-6
    # 20 cm along each cell's ray: within the guard, and PnP cannot see it.
    along = rays * (depth + 0.2)[:, None] - T_cw[:3, 3]
    value, dist = loss(along)
    assert value < 1e-4 and torch.all(dist > 0.19)
    # 2 cm sideways in x at depths 2 / 3 / 2.5 m: 1 / 0.667 / 0.8 px, a hundredth each.
    sideways = target + torch.tensor([0.02, 0.0, 0.0])
    value, _ = loss(sideways)
    assert value == pytest.approx(0.01 * (1.0 + 0.02 * 100 / 3 + 0.8) / 3, rel=1e-3)
    # Beyond the guard the loss is the distance in metres (here 0.5 m for every cell).
    value, _ = loss(target + torch.tensor([0.0, 0.0, 0.5]))
    assert value == pytest.approx(0.5, rel=1e-4)


def test_stage1_reprojection_phase_sees_the_windows_cameras(tiny_scene: Path):
    """The stage-1 loss of the reprojection phase on rolled, zoomed and cropped frames: the
    cells' pixels and cameras must match the window's, or exact targets would cost pixels."""
    data = load_training_set(tiny_scene, 'train', max_frames=4)
    draw = torch.Generator().manual_seed(3)
    batch = augment_batch(data.images_b3hw, data.T_cw_b44, data.K_33, draw,
                          AugmentationConfig(), data.depth_bhw, data.K_depth_33, 8)
    batch = crop_batch(batch, (48, 56), draw, 8)
    target = batch.coords_b3hw
    phase = ReprojectionPhase(share=0.5)

    def loss(pred):
        return _guarded_reprojection_on_frames(pred, target, batch.T_cw_b44, batch.K_b33, 8,
                                               phase)

    value, dist = loss(target.clone())
    assert int(torch.isfinite(target).all(dim=1).sum()) == dist.numel() > 20
    assert value < 1e-5 and dist.max() < 1e-5
    # 10 cm further along every cell's viewing ray: not a pixel off.
    centre_b3 = torch.linalg.inv(batch.T_cw_b44)[:, :3, 3].float()[:, :, None, None]
    ray = target - centre_b3
    value, dist = loss(target + 0.1 * ray / ray.norm(dim=1, keepdim=True))
    assert value < 1e-4 and dist.min() > 0.099
    # Sideways it costs pixels; beyond the guard, metres.
    assert loss(target + torch.tensor([0.03, 0.0, 0.0])[:, None, None])[0] > 1e-3
    far, _ = loss(target + torch.tensor([0.0, 0.5, 0.0])[:, None, None])
    assert far == pytest.approx(0.5, rel=1e-4)
    assert phase.active(0.5) and not phase.active(0.49)
    assert not ReprojectionPhase().active(1.0)  # share 0: metres to the end


def test_stage1_with_a_reprojection_phase_fits_the_frames(tiny_scene: Path, tmp_path: Path):
    coords = _whole_frames(budget=Budget(iterations=60), batch_size=4,
                           lr=LrSchedule(5e-3, Schedule.CONSTANT),
                           reprojection=ReprojectionPhase(share=0.5))
    config = _config(tiny_scene, tmp_path / 'run', stages=(Stage.COORDS,), max_frames=4,
                     coords=coords)
    data = load_training_set(tiny_scene, 'train', max_frames=4)
    fresh = SceneCoordinateNet(SMALL_NET)
    train(config)
    net = load_checkpoint(config.out_dir / 'model.pt').coord_net
    (_, px_before), (_, px_after) = _coord_error(fresh, data), _coord_error(net, data)
    assert px_after < 0.5 * px_before, (px_before, px_after)


def test_cell_buffer_holds_the_encoder_features_of_the_frames_cells(tiny_scene: Path,
                                                                    tmp_path: Path):
    config = _config(tiny_scene, tmp_path / 'run', max_frames=4, novel_views=NovelViewConfig())
    session = open_session(config, setup_runtime('cpu', Precision.FP32))
    net, data = session.coord_net.eval(), session.data
    full = buffer_cells(session, max_cells=10**6)
    h, w = data.coords_b3hw.shape[-2:]
    assert len(full) == int(torch.isfinite(data.coords_b3hw).all(dim=1).sum())
    with torch.no_grad():
        features = net.features(data.images_b3hw.float() / 255)  # (4, C, h, w)
    cell = ((full.pixel_n2[:, 1] // net.stride) * w + full.pixel_n2[:, 0] // net.stride).long()
    frame = session.shard[full.view_n]  # views 0..3 are the frames as recorded
    assert torch.equal(full.T_cw_v44, data.T_cw_b44[session.shard])
    expected = features.flatten(2)[frame, :, cell]
    assert torch.allclose(full.features_nc.float(), expected, atol=1e-2, rtol=1e-2)
    assert torch.equal(full.target_n3, data.coords_b3hw.flatten(2)[frame, :, cell])
    centres = cell_centers(h, w, net.stride).flatten(1).t()
    assert torch.equal(full.pixel_n2, centres[cell].float())
    # The regression of buffered cells is the network's own output at those cells.
    with torch.no_grad():
        coords = net(data.images_b3hw.float() / 255).flatten(2)[frame, :, cell]
        assert torch.allclose(net.regress_cells(expected), coords, atol=1e-5)
    # Capped: every frame keeps about the same share of its cells.
    capped = buffer_cells(session, max_cells=len(full) // 4)
    assert 0.15 * len(full) < len(capped) < 0.35 * len(full)
    assert sorted(set(capped.view_n.tolist())) == [0, 1, 2, 3]
    # Augmented copies: their own cameras, and targets that project onto their cells.
    augmented = buffer_cells(session, max_cells=10**6, augmented_copies=2)
    assert len(augmented.T_cw_v44) == 12 and torch.equal(augmented.T_cw_v44[:4],
                                                           full.T_cw_v44)
    copy = augmented.view_n >= 4
    assert copy.sum() > len(full)  # the copies keep most of their cells (roll, zoom)
    v = augmented.view_n[copy]
    _, err = reprojection_init_terms(augmented.target_n3[copy][:, None].double(),
                                     augmented.pixel_n2[copy][:, None],
                                     augmented.T_cw_v44[v], augmented.K_v33[v], clamp_px=1e3)
    assert float(err.median()) < 1.0  # px: exact targets (nearest source pixel's depth)


def test_score_samples_straddle_threshold():
    g = torch.Generator().manual_seed(0)
    T = torch.eye(4, dtype=torch.float64).repeat(2000, 1, 1)
    T[:, 2, 3] = 2.0
    T_h = perturb_poses(T, g)
    target = score_targets(T_h, T, beta=10.0)
    within = (target > -50.0).float().mean()  # pose loss < 5 (deg / cm)
    assert 0.35 < float(within) < 0.7
    assert float(target.min()) > -10 * 31


def test_score_net_is_deployed_only_when_it_wins_beyond_noise():
    def frames(learned_only: int, soft_only: int, both: int = 20, neither: int = 20):
        learned = [True] * learned_only + [False] * soft_only + [True] * both + [False] * neither
        soft = [False] * learned_only + [True] * soft_only + [True] * both + [False] * neither
        return torch.tensor(learned), torch.tensor(soft)

    assert not score_net_wins(*frames(0, 0))  # a tie goes to the cheaper soft inliers
    assert not score_net_wins(*frames(2, 0))  # 2 frames more (16 vs 12 % of 50): noise
    assert not score_net_wins(*frames(10, 4))  # 6 more, but 2 sigma is 7.5
    assert score_net_wins(*frames(5, 0)) and score_net_wins(*frames(14, 2))
    assert not score_net_wins(*frames(0, 8))


def test_stage2_loss_falls(tiny_scene: Path, tmp_path: Path):
    out = tmp_path / 'score'
    train(_config(tiny_scene, out, stages=(Stage.COORDS,), max_frames=4,
                  coords=_whole_frames(budget=Budget(iterations=60), batch_size=4,
                                          lr=LrSchedule(5e-3, Schedule.CONSTANT))))
    config = _config(tiny_scene, out, stages=(Stage.COORDS, Stage.SCORE), max_frames=4,
                     score=ScoreStageConfig(budget=Budget(iterations=60), batch_size=32,
                                            lr=LrSchedule(3e-3)))
    result = train(config)
    assert result.stages_done == ['coords', 'score'] and 'coords' not in result.steps
    rows = _rows(out, 'score')
    first = float(rows[0]['loss'])
    last = min(float(r['loss']) for r in rows[-3:])
    assert last < 0.7 * first, (first, last)
    model = load_checkpoint(out / 'model.pt')
    assert model.score_net is not None
    # A folder from before the head stage existed: the head does not rerun after the score.
    later = train(replace(config, stages=tuple(Stage)[:3]))
    assert later.steps == {} and later.stages_done == ['coords', 'score']
    # The trained score net prefers poses near the ground truth (higher score).
    data = load_training_set(tiny_scene, 'train', max_frames=4)
    with torch.no_grad():
        coords = model.coord_net(data.images_b3hw.float() / 255)
    g = torch.Generator().manual_seed(1)
    T_far = perturb_poses(data.T_cw_b44, g, min_magnitude=20.0, max_magnitude=30.0)
    pix = cell_centers(8, 10)
    K = data.K_33.float()
    with torch.no_grad():
        near = model.score_net(reprojection_errors(data.T_cw_b44.float(), coords, pix, K,
                                                   max_error_px=100.0)[:, None])
        far = model.score_net(reprojection_errors(T_far.float(), coords, pix, K,
                                                  max_error_px=100.0)[:, None])
    assert float((near > far).float().mean()) >= 0.75


@pytest.mark.parametrize('selection', [Selection.DSAC, Selection.SOFTAM])
def test_e2e_gradients_reach_both_networks(tiny_scene: Path, selection: Selection):
    torch.manual_seed(0)
    data = load_training_set(tiny_scene, 'train', max_frames=4)
    coord = SceneCoordinateNet(SceneCoordinateNetConfig(stem_widths=(8, 16, 32), num_blocks=1,
                                                        dilations=(1,), head_width=32))
    coord.eval()
    score = ScoreNet(ScoreNetConfig(width=8, output_scale=10.0))
    # Start near the truth (a noisy copy of the depth targets) through the net's offsets:
    # train the head bias only so the pool contains valid hypotheses.
    target = data.coords_b3hw[:2]
    coord.set_scene_mean(target.nan_to_num(0).mean(dim=(0, 2, 3)))
    images = data.images_b3hw[:2].float() / 255
    seen_grad = {}

    def probe(grad):
        seen_grad['coords'] = grad.abs().max().item()
        return grad

    # The refined SoftAM average is a PnP re-solve on its inliers: it depends on the weights
    # (the scores) only through which cells are inliers, so the score path is checked unrefined.
    estimator = EstimatorConfig(selection=selection, num_hypotheses=32,
                                refinement_steps=8 if selection is Selection.DSAC else 0)
    runtime = Runtime(device=torch.device('cpu'), amp_dtype=None)

    real_forward = coord.forward

    def forward_with_probe(x):
        # A truthful map plus noise, differentiable w.r.t. the net's output.
        y = real_forward(x)
        y.register_hook(lambda g: seen_grad.__setitem__('net_output', g.abs().max().item()))
        noisy = target.nan_to_num(0.0) + 0.02 * torch.randn_like(target) + (y - y.detach())
        noisy.register_hook(probe)
        return noisy

    coord.forward = forward_with_probe
    loss = end_to_end_loss(coord, score, images, data.K_33, data.T_cw_b44[:2], estimator,
                           grad_clamp=1e-3, generator=torch.Generator().manual_seed(0),
                           runtime=runtime)
    assert torch.isfinite(loss) and float(loss.detach()) > 0.0
    loss.backward()
    coord_grads = [p.grad for p in coord.parameters() if p.grad is not None]
    score_grads = [p.grad for p in score.parameters() if p.grad is not None]
    assert coord_grads and score_grads
    assert all(torch.isfinite(g).all() for g in coord_grads + score_grads)
    assert sum(float(g.abs().sum()) for g in coord_grads) > 0
    assert sum(float(g.abs().sum()) for g in score_grads) > 0
    # The raw gradient on the coordinates (per metre) exceeds the clamp even per millimetre;
    # what enters the network is per millimetre and clamped.
    assert seen_grad['coords'] * COORD_GRAD_UNIT_M > 1e-3
    assert 0.0 < seen_grad['net_output'] <= 1e-3 + 1e-9


# Enough coordinate training, at a loose threshold (8 px at 80x64), for valid pose hypotheses
# in the e2e stage: without them its loss is 0 and nothing is tested.
_ROUGH_BUT_VALID = dict(
    inlier_threshold_px=8.0,
    coords=_whole_frames(budget=Budget(iterations=200), batch_size=4),
    head=HeadStageConfig(budget=Budget(iterations=200), cells_per_step=256))


def test_e2e_stage_runs_and_logs(tiny_scene: Path, tmp_path: Path):
    out = tmp_path / 'e2e'
    config = _config(tiny_scene, out, max_frames=4, **_ROUGH_BUT_VALID,
                     score=ScoreStageConfig(budget=Budget(iterations=10), batch_size=16),
                     e2e=EndToEndStageConfig(budget=Budget(iterations=4), num_hypotheses=32,
                                             selection=Selection.SOFTAM))
    result = train(config)
    assert result.stages_done == ['coords', 'head', 'score', 'e2e']
    assert result.steps['head'] == 200 and result.steps['e2e'] == 4
    rows = _rows(out, 'e2e')
    assert rows and all(float(r['loss']) > 0 for r in rows)
    assert all(0.0 <= float(r['aux']) <= 1.0 and float(r['grad']) >= 0 for r in rows)
    model = load_checkpoint(out / 'model.pt')
    assert model.metadata['e2e_selection'] == 'softam'
    # The model before stage e2e stays beside it: what end-to-end training changed.
    before = load_checkpoint(out / 'model_componentwise.pt')
    assert before.metadata['stages_completed'] == 'coords,head,score'
    assert model.metadata['stages_completed'] == 'coords,head,score,e2e'
    assert 'e2e_selection' not in before.metadata and before.score_net is not None
    # the estimator settings travel: the run's tau
    settings = read_model_settings(model.metadata, model.image_size)
    assert settings.inlier_threshold_px == 8.0
    assert settings.scoring in (Scoring.SCORE_NET, Scoring.SOFT_INLIERS)
    assert model.score_net.config.inlier_threshold_px == settings.inlier_threshold_px
    reloc = Relocalizer.from_checkpoint(out / 'model.pt', RelocalizerConfig(device='cpu'))
    assert reloc.estimator_config.inlier_threshold_px == settings.inlier_threshold_px
    assert reloc.uses_score_net == (settings.scoring is Scoring.SCORE_NET)


@pytest.fixture(scope='module')
def rough_componentwise_model(tiny_scene: Path, tmp_path_factory) -> Path:
    """A componentwise model with a Score CNN, good enough at a loose threshold (8 px at
    80x64) to give valid pose hypotheses."""
    out = tmp_path_factory.mktemp('componentwise')
    train(_config(tiny_scene, out, max_frames=4, **_ROUGH_BUT_VALID,
                  stages=(Stage.COORDS, Stage.HEAD, Stage.SCORE),
                  score=ScoreStageConfig(budget=Budget(iterations=10), batch_size=16)))
    return out / 'model.pt'


@pytest.mark.parametrize('deployed, as_paper', [(Scoring.SOFT_INLIERS, False),
                                                (Scoring.SCORE_NET, False),
                                                (Scoring.SOFT_INLIERS, True)])
def test_e2e_trains_through_the_scoring_the_model_is_deployed_with(
        tiny_scene: Path, rough_componentwise_model: Path, tmp_path: Path, deployed: Scoring,
        as_paper: bool, caplog):
    # A score learning rate large enough for a float32 weight to move in two steps; the paper
    # (its preset) trains through the Score CNN whatever the validation frames chose.
    e2e = EndToEndStageConfig(budget=Budget(iterations=2), num_hypotheses=32,
                              score_lr=LrSchedule(1e-2, Schedule.CONSTANT),
                              through_deployed_scoring=not as_paper)
    config = _config(tiny_scene, tmp_path / 'e2e', max_frames=4, inlier_threshold_px=8.0,
                     stages=(Stage.E2E,), e2e=e2e, init_checkpoint=rough_componentwise_model)
    session = open_session(config, setup_runtime('cpu', Precision.FP32))
    session.scoring = deployed  # what `validate_scoring` chose after the score stage
    session.result = TrainResult(config.out_dir, config.out_dir / 'checkpoint.pt',
                                 config.out_dir / 'model.pt')
    score_before = [p.detach().clone() for p in session.score_net.parameters()]
    coords_before = [p.detach().clone() for p in session.coord_net.head.parameters()]
    with caplog.at_level(logging.INFO, logger='dsac_ros.training.stages'):
        train_e2e(session)
    assert 'no valid hypothesis' not in caplog.text  # the pipeline ran, with gradients
    assert any(not torch.equal(a, b)
               for a, b in zip(coords_before, session.coord_net.head.parameters()))
    moved = [not torch.equal(a, b) for a, b in zip(score_before, session.score_net.parameters())]
    through_soft_inliers = deployed is Scoring.SOFT_INLIERS and not as_paper
    assert any(moved) != through_soft_inliers
    assert ('trains through soft inlier counts' in caplog.text) == through_soft_inliers
    assert ('Score CNN, no augmentation' in caplog.text) != through_soft_inliers


def test_e2e_stage_with_augmentation_and_threshold(tiny_scene: Path, tmp_path: Path):
    out = tmp_path / 'aug'
    config = _config(tiny_scene, out, max_frames=4, inlier_threshold_px=7.0,
                     coords=_whole_frames(budget=Budget(iterations=10), batch_size=4),
                     stages=(Stage.COORDS, Stage.E2E),
                     e2e=EndToEndStageConfig(budget=Budget(iterations=2), num_hypotheses=16,
                                             augment=True))
    train(config)
    model = load_checkpoint(out / 'model.pt')
    settings = read_model_settings(model.metadata, model.image_size)
    assert settings.inlier_threshold_px == 7.0 and settings.scoring is Scoring.SOFT_INLIERS


def test_same_seed_same_weights(tiny_scene: Path, tmp_path: Path):
    def run(name: str, seed: int) -> dict:
        cfg = _config(tiny_scene, tmp_path / name, stages=(Stage.COORDS,), max_frames=4,
                      seed=seed, coords=_whole_frames(budget=Budget(iterations=5),
                                                         batch_size=2))
        train(cfg)
        return load_checkpoint(cfg.out_dir / 'checkpoint.pt').coord_net.state_dict()

    a, b, c = run('a', 3), run('b', 3), run('c', 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_e2e_rgbd_through_the_kabsch_estimator(tiny_scene: Path, tmp_path: Path):
    data = load_training_set(tiny_scene, 'train', max_frames=4)
    idx = torch.tensor([0, 3])
    depth = data.cell_depths(idx)
    # the cell depths are the depth images at the cell centres
    frames = SceneDataset(tiny_scene, 'train')
    names = [f'{p.parent.name}/{p.name[:-len(".color.png")]}' for p in frames.color_paths()]
    for k, i in enumerate(idx.tolist()):
        frame = frames[names.index(data.names[i])]
        expected = torch.from_numpy(frame.depth_m[4::8, 4::8]).float()
        torch.testing.assert_close(depth[k], expected, atol=1e-4, rtol=0, equal_nan=True)
    torch.manual_seed(0)
    coord = SceneCoordinateNet(SceneCoordinateNetConfig(stem_widths=(8, 16, 32), num_blocks=1,
                                                        dilations=(1,), head_width=32))
    coord.eval()
    score = ScoreNet(ScoreNetConfig(width=8, output_scale=10.0))
    target = data.coords_b3hw[idx]
    real_forward = coord.forward
    # a truthful map plus 2 cm noise, differentiable w.r.t. the net's output
    coord.forward = lambda x: (target.nan_to_num(0.0) + 0.02 * torch.randn_like(target)
                               + (lambda y: y - y.detach())(real_forward(x)))
    estimator = EstimatorConfig(selection=Selection.DSAC, num_hypotheses=32,
                                inlier_threshold_cm=10.0)
    images = data.images_b3hw[idx].float() / 255
    loss = end_to_end_loss(coord, score, images, data.K_33, data.T_cw_b44[idx], estimator,
                           grad_clamp=0.1, generator=torch.Generator().manual_seed(0),
                           runtime=Runtime(device=torch.device('cpu'), amp_dtype=None),
                           depth_bhw=depth)
    assert torch.isfinite(loss) and 0.0 < float(loss.detach()) < 30.0  # deg / cm: near truth
    loss.backward()
    for net in (coord, score):
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    # the stage itself: RGB-D e2e steps run and the threshold travels in the checkpoint
    out = tmp_path / 'rgbd'
    train(_config(tiny_scene, out, max_frames=4, stages=(Stage.E2E,),
                  e2e=EndToEndStageConfig(budget=Budget(iterations=2), num_hypotheses=16,
                                          depth=True, inlier_threshold_cm=7.0)))
    model = load_checkpoint(out / 'model.pt')
    assert model.metadata['e2e_depth'] is True
    assert read_model_settings(model.metadata, model.image_size).inlier_threshold_cm == 7.0
    with pytest.raises(ValueError, match='needs depth'):
        train(_config(tiny_scene, tmp_path / 'nodepth', max_frames=4, stages=(Stage.E2E,),
                      use_depth=False,
                      e2e=EndToEndStageConfig(budget=Budget(iterations=1), depth=True)))
