"""The training stages: scene coordinates (paper Sec. 4.1, componentwise, from depth or by
reprojection), the coordinate head alone on buffered encoder features (ours, after ACE), the
Score CNN (Sec. 4.1), and end-to-end DSAC / SoftAM (Sec. 4.2). Each builds its optimizers and a
step function and runs them with `dsac_ros.training.session.run_loop`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import logging
import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from dsac_ros.dsac import DsacEstimator, EstimatorConfig, Scoring, expected_pose_loss
from dsac_ros.geometry.camera import cell_centers
from dsac_ros.geometry.scoring import reprojection_errors
from dsac_ros.geometry.transforms import perturb_poses, pose_errors
from dsac_ros.models.score_net import ScoreNet, ScoreNetConfig
from dsac_ros.training.augmentation import AugmentationConfig, augment_batch, crop_batch
from dsac_ros.training.config import COORD_GRAD_UNIT_M, ReprojectionPhase, Stage
from dsac_ros.training.data import TrainingSet
from dsac_ros.training.losses import (
    coordinate_loss,
    guarded_reprojection_loss,
    reprojection_init_loss,
    reprojection_init_terms,
    score_targets,
)
from dsac_ros.training.runtime import Runtime, all_reduce_mean_
from dsac_ros.training.session import (
    Optim,
    Session,
    batch_images,
    device_images,
    draw_frames,
    model_settings,
    run_loop,
    stage_generator,
    wrap_ddp,
)

_LOG = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# Stage 1: scene coordinates


def train_coords(session: Session) -> None:
    cfg, runtime, data = session.config.coords, session.runtime, session.data
    net = session.coord_net
    if session.config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    # a frozen stem records no autograd graph: its backward, a fifth of a step, is skipped
    for p in net.stem().parameters():
        p.requires_grad_(not cfg.freeze_stem)
    model = wrap_ddp(net, runtime)
    # a pretrained encoder may learn slower than the fresh head (`CoordStageConfig`)
    optimizer = torch.optim.Adam(
        [{'params': [p for p in net.encoder.parameters() if p.requires_grad],
          'lr_scale': cfg.encoder_lr_scale},
         {'params': list(net.head.parameters())}], lr=cfg.lr.lr, weight_decay=cfg.weight_decay)
    generator = stage_generator(session, Stage.COORDS)
    has_depth = data.depth_bhw is not None
    crop_hw = cfg.crop_size(data.image_size, net.stride)
    # fp16 autocast (older GPUs) needs loss scaling against gradient underflow; bf16 does not.
    scaler = torch.amp.GradScaler(runtime.device.type,
                                  enabled=runtime.amp_dtype == torch.float16)
    _LOG.info('stage coords on rank %d/%d: %d of %d frames (%s), windows of %dx%d px, %s, '
              'autocast %s, budget %s', runtime.rank, runtime.world_size, len(session.shard),
              len(data), 'depth targets' if has_depth else 'no depth: reprojection init',
              crop_hw[1], crop_hw[0], runtime.device, runtime.amp_dtype, cfg.budget)

    def step_fn(step: int, progress: float) -> dict[str, float]:
        idx = draw_frames(session, cfg.batch_size, generator)
        batch = augment_batch(data.images_b3hw[idx], data.T_cw_b44[idx], data.K_33, generator,
                              cfg.augmentation, data.depth_bhw[idx] if has_depth else None,
                              data.K_depth_33, net.stride)
        batch = crop_batch(batch, crop_hw, generator, net.stride)
        images = device_images(batch.images_b3hw, runtime, session.config.channels_last)
        with runtime.autocast():
            pred = model(images)
        pred = pred.float()
        if has_depth and cfg.reprojection.active(progress):
            loss, dist_m = _guarded_reprojection_on_frames(
                pred, batch.coords_b3hw.to(runtime.device, non_blocking=True),
                batch.T_cw_b44.to(runtime.device), batch.K_b33.to(runtime.device), net.stride,
                cfg.reprojection)
            aux = float(dist_m.median()) if dist_m.numel() else math.nan
        elif has_depth:
            target = batch.coords_b3hw.to(runtime.device, non_blocking=True)
            loss = coordinate_loss(pred, target)
            with torch.no_grad():
                dist_m = (pred - target).norm(dim=1)
                aux = float(dist_m[torch.isfinite(dist_m)].median()) \
                    if torch.isfinite(dist_m).any() else math.nan
        else:
            loss, err = reprojection_init_loss(
                pred, batch.T_cw_b44.to(runtime.device), batch.K_b33.to(runtime.device),
                clamp_px=cfg.reprojection_clamp_px, min_depth_m=cfg.min_depth_m,
                depth_prior_m=cfg.depth_prior_m)
            aux = float(err.median())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return {'loss': float(loss.detach()), 'aux': aux}

    try:
        run_loop(session, Stage.COORDS, cfg.budget, [Optim('coord', optimizer, cfg.lr)],
                 generator, step_fn)
    finally:  # later stages train the whole net again
        for p in net.stem().parameters():
            p.requires_grad_(True)
    net.eval()
    if runtime.is_main and has_depth:
        validate_coords(session)


def _guarded_reprojection_on_frames(pred_b3hw: Tensor, target_b3hw: Tensor, T_cw_b44: Tensor,
                                    K_b33: Tensor, stride: int, phase: ReprojectionPhase
                                    ) -> tuple[Tensor, Tensor]:
    """`guarded_reprojection_loss` over the cells of a batch of frames (B, 3, H, W world
    coordinates in metres; targets NaN where depth is invalid) seen by cameras T_cw_b44 /
    K_b33; returns (scalar loss, (M,) distances of the M valid cells in metres, detached)."""
    B, _, H, W = pred_b3hw.shape
    valid_bhw = torch.isfinite(target_b3hw).all(dim=1)
    if not bool(valid_bhw.any()):
        return pred_b3hw.sum() * 0.0, pred_b3hw.new_zeros(0)
    pix_hw2 = cell_centers(H, W, stride, device=pred_b3hw.device).permute(1, 2, 0)
    frame_m = torch.arange(B, device=pred_b3hw.device)[:, None, None].expand(B, H, W)[valid_bhw]
    return guarded_reprojection_loss(
        pred_b3hw.permute(0, 2, 3, 1)[valid_bhw], target_b3hw.permute(0, 2, 3, 1)[valid_bhw],
        pix_hw2.expand(B, H, W, 2)[valid_bhw], T_cw_b44[frame_m], K_b33[frame_m], phase)


# ----------------------------------------------------------------------------------------
# Stage 1b: the head alone on buffered encoder features


@dataclass(frozen=True)
class CellBuffer:
    """Training cells of the frozen encoder, for `train_head`.

    A view is one training frame as recorded, or an augmented copy of one (another camera
    roll / zoom / exposure). features_nc: (N, C) float16 encoder features. target_n3: (N, 3)
    float32 world-frame scene coordinates (metres) from depth, or None without depth.
    view_n: (N,) long index of a cell's view. pixel_n2: (N, 2) float32 cell centre (OpenCV
    pixels of the view). T_cw_v44: (V, 4, 4) float64 world-to-camera pose and K_v33: (V, 3, 3)
    float64 intrinsics of every view.
    """

    features_nc: Tensor
    target_n3: Tensor | None
    view_n: Tensor
    pixel_n2: Tensor
    T_cw_v44: Tensor
    K_v33: Tensor

    def __len__(self) -> int:
        return int(self.features_nc.shape[0])


@torch.no_grad()
def buffer_cells(session: Session, max_cells: int, augmented_copies: int = 0,
                 augmentation: AugmentationConfig | None = None,
                 chunk: int = 16) -> CellBuffer:
    """Encoder features of the cells of this rank's training frames, as recorded and in
    ``augmented_copies`` augmented copies each (``augmentation``, by default
    ``AugmentationConfig()``; targets exact): every cell with a finite target (all cells
    without depth), each kept with probability ``max_cells`` / (cells of all views) where
    that is below 1. Views: the shard's frames as recorded, then each round of copies in the
    shard's order; the draws are fixed by the run seed (the same after a resume)."""
    net, runtime, data = session.coord_net, session.runtime, session.data
    augmentation = augmentation or AugmentationConfig()
    net.eval()
    h, w = data.image_size[0] // net.stride, data.image_size[1] // net.stride
    views = len(session.shard) * (1 + augmented_copies)
    keep_share = min(1.0, max_cells / float(views * h * w))
    draw = torch.Generator().manual_seed(session.config.seed * 1_000_003 + 31 * runtime.rank)
    pixels = cell_centers(h, w, net.stride).permute(1, 2, 0).reshape(h * w, 2).float()
    parts: dict[str, list[Tensor]] = {k: [] for k in ('features', 'target', 'view', 'cell',
                                                      'T', 'K')}
    for copy in range(1 + augmented_copies):
        for start in range(0, len(session.shard), chunk):
            idx = session.shard[start:start + chunk]
            if copy == 0:
                images = batch_images(session, idx)
                coords, T_cw = data.coords_b3hw, data.T_cw_b44[idx]
                coords = None if coords is None else coords[idx]
                K = data.K_33.to(torch.float64).expand(len(idx), 3, 3)
            else:
                batch = augment_batch(data.images_b3hw[idx], data.T_cw_b44[idx], data.K_33,
                                      draw, augmentation,
                                      None if data.depth_bhw is None else data.depth_bhw[idx],
                                      data.K_depth_33, net.stride)
                images = device_images(batch.images_b3hw, runtime,
                                       session.config.channels_last)
                coords, T_cw, K = batch.coords_b3hw, batch.T_cw_b44, batch.K_b33
            with runtime.autocast():
                feats = net.features(images)
            feats = feats.to('cpu', torch.float16).permute(0, 2, 3, 1).reshape(
                -1, feats.shape[1])
            keep = torch.rand(feats.shape[0], generator=draw) < keep_share
            if coords is not None:
                target = coords.permute(0, 2, 3, 1).reshape(-1, 3)
                keep &= torch.isfinite(target).all(dim=1)
                parts['target'].append(target[keep])
            first_view = sum(len(t) for t in parts['T'])
            parts['features'].append(feats[keep])
            parts['view'].append((first_view + torch.arange(len(idx))).repeat_interleave(
                h * w)[keep])
            parts['cell'].append(torch.arange(h * w).repeat(len(idx))[keep])
            parts['T'].append(T_cw.to(torch.float64))
            parts['K'].append(K.to(torch.float64))
    return CellBuffer(
        features_nc=torch.cat(parts['features']),
        target_n3=torch.cat(parts['target']) if parts['target'] else None,
        view_n=torch.cat(parts['view']),
        pixel_n2=pixels[torch.cat(parts['cell'])],
        T_cw_v44=torch.cat(parts['T']),
        K_v33=torch.cat(parts['K']))


def train_head(session: Session) -> None:
    """Stage 1b (`HeadStageConfig`): the head of the frozen-encoder coordinate net on random
    buffered cells of all training frames; the loss of stage 1 (metres with depth,
    reprojection pixels without), with depth then the guarded reprojection loss for the last
    ``reprojection.share`` of the budget."""
    cfg, runtime = session.config.head, session.runtime
    net = session.coord_net
    buffer = buffer_cells(session, cfg.max_buffer_cells, cfg.augmented_copies,
                          cfg.augmentation)
    if len(buffer) == 0:
        raise ValueError('no training cell has a scene-coordinate target: nothing for the '
                         'head stage to train on')
    head_params = list(net.head.parameters())
    optimizer = torch.optim.Adam(head_params, lr=cfg.lr.lr)
    generator = stage_generator(session, Stage.HEAD)
    coords_cfg = session.config.coords
    _LOG.info('stage head on rank %d/%d: %d buffered cells of %d frames (%d views: %d '
              'augmented copies each; %s), %d per step, budget %s', runtime.rank,
              runtime.world_size, len(buffer), len(session.shard), len(buffer.T_cw_v44),
              cfg.augmented_copies,
              'depth targets' if buffer.target_n3 is not None else 'reprojection',
              cfg.cells_per_step, cfg.budget)

    def cell_cameras(pick: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(M, 2) pixels, (M, 4, 4) T_cw and (M, 3, 3) K of the picked cells, on the device."""
        view = buffer.view_n[pick]
        return (buffer.pixel_n2[pick].to(runtime.device),
                buffer.T_cw_v44[view].to(runtime.device), buffer.K_v33[view].to(runtime.device))

    def step_fn(step: int, progress: float) -> dict[str, float]:
        pick = torch.randint(len(buffer), (cfg.cells_per_step,), generator=generator)
        pred = net.regress_cells(buffer.features_nc[pick].to(runtime.device))  # (M, 3) m
        if buffer.target_n3 is None:
            pix, T_cw, K = cell_cameras(pick)
            per_cell, err = reprojection_init_terms(
                pred[:, None], pix[:, None], T_cw, K,
                clamp_px=coords_cfg.reprojection_clamp_px, min_depth_m=coords_cfg.min_depth_m,
                depth_prior_m=coords_cfg.depth_prior_m)
            loss, aux = per_cell.mean(), float(err.median())
        elif cfg.reprojection.active(progress):
            loss, dist = guarded_reprojection_loss(
                pred, buffer.target_n3[pick].to(runtime.device), *cell_cameras(pick),
                cfg.reprojection)
            aux = float(dist.median())
        else:
            target = buffer.target_n3[pick].to(runtime.device)
            # (M, 3) as a (1, 3, M, 1) image: the loss of stage 1.
            loss = coordinate_loss(pred.t()[None, :, :, None], target.t()[None, :, :, None])
            aux = float((pred.detach() - target).norm(dim=1).median())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_mean_([p.grad for p in head_params if p.grad is not None], runtime)
        optimizer.step()
        return {'loss': float(loss.detach()), 'aux': aux}

    run_loop(session, Stage.HEAD, cfg.budget, [Optim('head', optimizer, cfg.lr)], generator,
             step_fn)
    net.eval()
    if runtime.is_main and buffer.target_n3 is not None:
        validate_coords(session)


def held_out(session: Session, max_frames: int = 50) -> tuple[TrainingSet, Tensor] | None:
    """Up to ``max_frames`` of the run's validation frames (evenly spaced; never the test
    split) and the coordinate net's predictions for them (device), or None without any."""
    index = session.validation
    if len(index) == 0:
        _LOG.info('no validation frames (validation_fraction %s)',
                  session.config.validation_fraction)
        return None
    if len(index) > max_frames:
        index = index[torch.linspace(0, len(index) - 1, max_frames).round().long()]
    frames = session.data.subset(index)
    pred = predict_coordinates(session.coord_net, frames.images_b3hw, session.runtime,
                               channels_last=session.config.channels_last)
    return frames, pred


def validate_coords(session: Session, max_frames: int = 50) -> None:
    """Log the median coordinate error (m) on up to ``max_frames`` validation frames."""
    found = held_out(session, max_frames)
    if found is None or found[0].coords_b3hw is None:
        return
    frames, pred = found
    dist_m = (pred.cpu() - frames.coords_b3hw).norm(dim=1)
    dist_m = dist_m[torch.isfinite(dist_m)]
    median = float(dist_m.median())
    within = float((dist_m < 0.1).float().mean())
    session.result.validation['coords_val_median_m'] = median
    session.result.validation['coords_val_within_10cm'] = within
    _LOG.info('coordinates on %d validation frames: median error %.3f m, %.1f %% within 10 cm',
              len(frames), median, 100 * within)


def score_net_wins(learned_ok_n: Tensor, soft_ok_n: Tensor) -> bool:
    """Whether the Score CNN beats soft inlier counts on the same N frames ((N,) bool: pose
    within 5 cm / 5 deg) by more than noise: of the frames where exactly one of them succeeds,
    the Score CNN must win more than its share by two standard errors (a paired sign test,
    about 95 %). Ties and small margins go to soft inliers: they cost about a quarter of the
    estimator's time (21 vs 78 ms per frame on a 2-core CPU) and have no weights to go stale."""
    only_learned = int((learned_ok_n & ~soft_ok_n).sum())
    only_soft = int((soft_ok_n & ~learned_ok_n).sum())
    return only_learned - only_soft > 2.0 * math.sqrt(only_learned + only_soft)


def validate_scoring(session: Session, max_frames: int = 50) -> None:
    """Choose the scoring the model is deployed with (`ModelSettings.scoring`): the Score CNN
    when the model has one and, on up to ``max_frames`` validation frames with RANSAC
    selection, it puts clearly more poses within 5 cm / 5 deg than soft inlier counts
    (`score_net_wins`); soft inliers otherwise, also without validation frames. Sessions 6 and
    7 chose the Score CNN on 16 vs 12 % of 50 frames, then found it no better on the test
    frames (48.0 % either way on revisit_a) at 3.7x the estimator's time."""
    session.scoring = Scoring.SOFT_INLIERS
    if session.score_net is None or not session.runtime.is_main:
        return
    found = held_out(session, max_frames)
    if found is None:
        _LOG.info('no validation frames: the model is deployed with soft inlier counts')
        return
    frames, pred = found
    config = model_settings(session).apply(EstimatorConfig(seed=session.config.seed))
    T_gt = frames.T_cw_b44.to(session.runtime.device, pred.dtype)
    K = frames.K_33.to(session.runtime.device, pred.dtype)
    success = {}
    session.score_net.eval()
    for scoring, score_fn in ((Scoring.SOFT_INLIERS, None),
                              (Scoring.SCORE_NET, session.score_net.score_fn)):
        with torch.no_grad():
            est = DsacEstimator(config, score_fn).estimate(pred, K, session.coord_net.stride)
        deg, m = pose_errors(est.T_cw_b44, T_gt)
        success[scoring] = (est.valid_b & (deg < 5.0) & (m < 0.05)).cpu()
        session.result.validation[f'scoring_{scoring.value}_5cm5deg_pct'] = \
            100.0 * float(success[scoring].float().mean())
    learned, soft = success[Scoring.SCORE_NET], success[Scoring.SOFT_INLIERS]
    if score_net_wins(learned, soft):
        session.scoring = Scoring.SCORE_NET
    _LOG.info('validation scoring check on %d frames (RANSAC): Score CNN %.1f %%, soft inliers '
              '%.1f %% within 5 cm / 5 deg: deployed with %s', len(frames),
              100.0 * float(learned.float().mean()), 100.0 * float(soft.float().mean()),
              session.scoring.value)


# ----------------------------------------------------------------------------------------
# Stage 2: score CNN


@torch.no_grad()
def predict_coordinates(session_or_net: Any, images_b3hw_uint8: Tensor, runtime: Runtime,
                        batch_size: int = 16, channels_last: bool = True) -> Tensor:
    """Scene coordinates (N, 3, H/8, W/8) float32 (device) of uint8 images with a frozen net."""
    net = session_or_net
    net.eval()
    out = []
    for start in range(0, images_b3hw_uint8.shape[0], batch_size):
        x = device_images(images_b3hw_uint8[start:start + batch_size], runtime, channels_last)
        with runtime.autocast():
            out.append(net(x).float())
    return torch.cat(out)


def train_score(session: Session) -> None:
    cfg, runtime, data = session.config.score, session.runtime, session.data
    settings = model_settings(session)
    if session.score_net is None:
        session.score_net = ScoreNet(ScoreNetConfig.for_threshold(
            settings.inlier_threshold_px, settings.soft_inlier_beta,
            output_scale=cfg.output_scale))
        session.score_net.to(runtime.device)
    net = session.score_net
    net.train()
    model = wrap_ddp(net, runtime)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr.lr)
    generator = stage_generator(session, Stage.SCORE)
    # Predictions of the frozen coordinate net for this rank's frames (shard order).
    coords = predict_coordinates(session.coord_net, data.images_b3hw[session.shard], runtime,
                                 channels_last=session.config.channels_last)
    h, w = coords.shape[-2:]
    pixels = cell_centers(h, w, session.coord_net.stride, device=runtime.device)
    K = data.K_33.to(runtime.device, torch.float32)
    max_error = EstimatorConfig().max_reprojection_error_px
    _LOG.info('stage score: %d error images per step, budget %s', cfg.batch_size, cfg.budget)

    def step_fn(step: int, progress: float) -> dict[str, float]:
        local = torch.randint(len(session.shard), (cfg.batch_size,), generator=generator)
        T_gt = data.T_cw_b44[session.shard[local]]  # float64, CPU
        T_h = perturb_poses(T_gt, generator, cfg.min_perturbation, cfg.max_perturbation)
        target = score_targets(T_h, T_gt, cfg.beta).to(runtime.device, torch.float32)
        T_dev = T_h.to(runtime.device, torch.float32)
        with torch.no_grad():
            errors = reprojection_errors(T_dev, coords[local.to(runtime.device)], pixels, K,
                                         max_error_px=max_error)
        scores = model(errors[:, None])
        loss = (scores - target).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # aux: rank correlation proxy, fraction of ordered pairs
            s, t = scores.detach(), target
            agree = ((s[:, None] - s[None]) * (t[:, None] - t[None]) > 0).float().mean()
        return {'loss': float(loss.detach()), 'aux': float(agree) * 2.0}

    run_loop(session, Stage.SCORE, cfg.budget, [Optim('score', optimizer, cfg.lr)], generator,
          step_fn)
    net.eval()
    validate_scoring(session)


# ----------------------------------------------------------------------------------------
# Stage 3: end-to-end


def clamp_hook(limit: float, scale: float = 1.0,
               stats: dict[str, float] | None = None) -> Callable[[Tensor], Tensor]:
    """Tensor hook: the gradient times ``scale``, NaN -> 0, clamped to [-limit, limit] (paper
    Sec. 4.2). With ``stats`` it records the gradient's L2 norm before the clamp ('grad_norm')
    and the share of its entries the clamp changes ('clamp_share')."""
    def hook(grad: Tensor) -> Tensor:
        grad = torch.nan_to_num(grad, nan=0.0) * scale
        if stats is not None:
            stats['grad_norm'] = float(grad.norm())
            stats['clamp_share'] = float((grad.abs() > limit).float().mean())
        return grad.clamp(-limit, limit)
    return hook


def clamped_score_fn(score_net: ScoreNet, limit: float) -> Callable[[Tensor], Tensor]:
    """ScoreFn (B, N, H, W) px -> (B, N) whose output gradient (the one entering the Score CNN)
    is clamped to [-limit, limit] (paper Sec. 4.2)."""
    hook = clamp_hook(limit)

    def score_fn(errors_bnhw: Tensor) -> Tensor:
        scores = score_net.score_fn(errors_bnhw)
        if scores.requires_grad:
            scores.register_hook(hook)
        return scores
    return score_fn


def end_to_end_loss(coord_net: nn.Module, score_net: ScoreNet | None,
                    images_b3hw: Tensor, K_b33: Tensor, T_cw_gt_b44: Tensor,
                    estimator: EstimatorConfig, grad_clamp: float,
                    generator: torch.Generator | None, runtime: Runtime | None = None,
                    stats: dict[str, float] | None = None,
                    depth_bhw: Tensor | None = None) -> Tensor:
    """Expected pose loss (deg / cm, paper Eq. 7 / SoftAM Eq. 4) of a batch of images.

    coord_net: any network mapping images (B, 3, H, W) in [0, 1] to scene coordinates
    (B, 3, H/s, W/s) in metres with a ``stride`` attribute s. K_b33: (B, 3, 3) or (3, 3)
    pixels; T_cw_gt_b44 (B, 4, 4) world-to-camera; depth_bhw: (B, H/s, W/s) cell depths in
    metres for the RGB-D estimator (None: RGB). The gradient reaching the coordinate net is
    taken per millimetre (`COORD_GRAD_UNIT_M`) and, like the one reaching the Score CNN,
    clamped to +- grad_clamp; ``stats`` receives the coordinate gradient's norm and clamp share
    (`clamp_hook`).
    """
    # bf16 autocast only: fp16 gradients of the pose loss would need loss scaling.
    use_amp = runtime is not None and runtime.amp_dtype == torch.bfloat16
    ctx = runtime.autocast() if use_amp else contextlib.nullcontext()
    with ctx:
        pred = coord_net(images_b3hw)
    pred = pred.float()
    if pred.requires_grad:
        pred.register_hook(clamp_hook(grad_clamp, COORD_GRAD_UNIT_M, stats))
    score_fn = None if score_net is None else clamped_score_fn(score_net, grad_clamp)
    B = pred.shape[0]
    K_b33 = K_b33.to(pred).expand(B, 3, 3)
    if depth_bhw is not None:
        depth_bhw = depth_bhw.to(pred)
    return expected_pose_loss(pred, K_b33, T_cw_gt_b44.to(pred), estimator, score_fn,
                              generator, stride=coord_net.stride, depth_bhw=depth_bhw)


def augmented_batch(session: Session, idx: Tensor, generator: torch.Generator
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Images (B, 3, H, W) in [0, 1] (device), K (B, 3, 3) and T_cw (B, 4, 4) (float64, CPU)
    of frames ``idx`` under stage 3's augmentation (`augmentation.augment_batch`: camera roll
    and zoom with K and pose to match, photometric changes)."""
    data = session.data
    batch = augment_batch(data.images_b3hw[idx], data.T_cw_b44[idx], data.K_33, generator,
                          session.config.e2e.augmentation)
    images = device_images(batch.images_b3hw, session.runtime, session.config.channels_last)
    return images, batch.K_b33, batch.T_cw_b44


def train_e2e(session: Session) -> None:
    cfg, runtime, data = session.config.e2e, session.runtime, session.data
    coord_net, score_net = session.coord_net, session.score_net
    if session.config.channels_last:
        coord_net = coord_net.to(memory_format=torch.channels_last)
    # Normalisation layers keep their componentwise statistics (eval mode): one image per step
    # is too few to re-estimate batch statistics; affine parameters still learn.
    coord_net.eval()
    optims = [Optim('coord', torch.optim.SGD(coord_net.parameters(), lr=cfg.coord_lr.lr,
                                              momentum=cfg.momentum), cfg.coord_lr)]
    params = list(coord_net.parameters())
    if (score_net is not None and cfg.through_deployed_scoring
            and session.scoring is not Scoring.SCORE_NET):
        # Train the pipeline the model is deployed with (departs from the paper, which trains
        # through its Score CNN): the validation frames chose soft inlier counts, so the
        # Score CNN would shape gradients for a scoring nobody runs, at 1.3x the step time
        # for the same accuracy (`EndToEndStageConfig.through_deployed_scoring`).
        _LOG.info('stage e2e trains through soft inlier counts, the scoring the validation '
                  'frames chose; the Score CNN keeps its weights')
        score_net = None
    elif score_net is not None:
        score_net.eval()
        if cfg.train_score:
            optims.append(Optim('score', torch.optim.SGD(score_net.parameters(),
                                                          lr=cfg.score_lr.lr,
                                                          momentum=cfg.momentum),
                                 cfg.score_lr))
            params += list(score_net.parameters())
        else:
            score_net.requires_grad_(False)
    else:
        _LOG.warning('stage e2e without a score net: scoring by soft inlier count, only the '
                     'coordinate net learns')
    if cfg.depth and data.coords_b3hw is None:
        raise ValueError(f'end-to-end RGB-D training needs depth; {session.config.scene} has '
                         'none (or use_depth is off)')
    if cfg.depth and cfg.augment:
        raise ValueError('end-to-end augmentation is RGB only (cell depths are not warped)')
    settings = model_settings(session)
    estimator = settings.apply(EstimatorConfig(selection=cfg.selection,
                                               num_hypotheses=cfg.num_hypotheses,
                                               seed=session.config.seed,
                                               inlier_threshold_cm=cfg.inlier_threshold_cm))
    generator = stage_generator(session, Stage.E2E)
    K = data.K_33.to(runtime.device, torch.float32)
    _LOG.info('stage e2e (%s, %s): %d frame(s) per step, %d hypotheses, tau %g px, %s, %s, '
              'budget %s', cfg.selection.value,
              f'RGB-D, {cfg.inlier_threshold_cm:g} cm' if cfg.depth else 'RGB',
              cfg.frames_per_step, cfg.num_hypotheses, estimator.inlier_threshold_px,
              'soft inliers' if score_net is None else 'Score CNN',
              'augmented' if cfg.augment else 'no augmentation', cfg.budget)

    def step_fn(step: int, progress: float) -> dict[str, float]:
        idx = draw_frames(session, cfg.frames_per_step, generator)
        if cfg.augment:
            images, K_b33, T_cw = augmented_batch(session, idx, generator)
        else:
            images, K_b33, T_cw = batch_images(session, idx), K, \
                data.T_cw_b44[idx]
        depth = data.cell_depths(idx) if cfg.depth else None
        stats: dict[str, float] = {}
        loss = end_to_end_loss(coord_net, score_net, images, K_b33, T_cw, estimator,
                               cfg.grad_clamp, generator, runtime, stats, depth_bhw=depth)
        for o in optims:
            o.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if runtime.distributed:
            grads = []
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
            all_reduce_mean_(grads, runtime)
        for o in optims:
            o.optimizer.step()
        return {'loss': float(loss.detach()), 'aux': stats.get('clamp_share', math.nan),
                'grad': stats.get('grad_norm', math.nan)}

    run_loop(session, Stage.E2E, cfg.budget, optims, generator, step_fn)
    validate_scoring(session)
