"""The training driver: componentwise stages (coordinates, score) and end-to-end DSAC / SoftAM.

``train(config)`` runs the selected stages in order inside ``config.out_dir``:

* ``checkpoint.pt``: full state (both networks, optimizer states, stage, step, elapsed time,
  RNG states, config), written atomically every ``checkpoint_every`` steps or
  ``checkpoint_seconds``, at each stage end and on SIGINT / SIGTERM. A rerun with the same
  ``out_dir`` resumes from it (completed stages are skipped, the running one continues at its
  saved step, so at most one interval is lost).
* ``model.pt``: slim inference file (float16 weights, no training state), after each stage.
* ``log.csv`` (stage, step, elapsed_s, lr, loss, aux) and ``curves.png``.

Under torchrun (WORLD_SIZE > 1) every rank trains on its own shard of the frames with its own
seed; stage 1 and 2 use DistributedDataParallel, stage 3 averages gradients with one all-reduce
per step (its score net is not called when an image has no valid hypothesis, which DDP's
reducer cannot handle). Rank 0 alone writes files.
"""

from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass, field
import logging
import math
from pathlib import Path
import signal
import threading
import time
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from dsac_ros.dsac import EstimatorConfig, expected_pose_loss
from dsac_ros.geometry.camera import cell_centers
from dsac_ros.geometry.scoring import reprojection_errors
from dsac_ros.models.checkpoint import (
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from dsac_ros.models.scene_coordinate_net import SceneCoordinateNet
from dsac_ros.models.score_net import ScoreNet, ScoreNetConfig
from dsac_ros.training.config import Budget, LrSchedule, Stage, TrainConfig
from dsac_ros.training.data import TrainingSet, load_training_set
from dsac_ros.training.losses import (
    coordinate_loss,
    perturb_poses,
    reprojection_init_loss,
    score_targets,
)
from dsac_ros.training.runtime import (
    Runtime,
    all_reduce_mean_,
    broadcast_flag,
    num_threads,
    setup_runtime,
    teardown_runtime,
)

_LOG = logging.getLogger(__name__)

CHECKPOINT_NAME = 'checkpoint.pt'
MODEL_NAME = 'model.pt'
LOG_NAME = 'log.csv'
CURVES_NAME = 'curves.png'
_LOG_FIELDS = ('stage', 'step', 'elapsed_s', 'lr', 'loss', 'aux')


class TrainingInterruptedError(RuntimeError):
    """Training stopped on SIGINT / SIGTERM after saving a checkpoint."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        super().__init__(f'training interrupted by signal {signum}; state saved to {checkpoint}')
        self.signum = signum
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    """What a finished run produced. steps: optimizer steps per stage (of this process);
    resumed_from: {stage: step} where a stage continued from a checkpoint; final_loss: mean
    loss of the last logged window per stage."""

    out_dir: Path
    checkpoint: Path
    model: Path
    stages_done: list[str] = field(default_factory=list)
    steps: dict[str, int] = field(default_factory=dict)
    resumed_from: dict[str, int] = field(default_factory=dict)
    final_loss: dict[str, float] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)


@dataclass
class _Session:
    """Mutable state of one run (networks, resume info, signal flag); never returned."""

    config: TrainConfig
    runtime: Runtime
    data: TrainingSet
    shard: Tensor  # (n,) long frame indices of this rank
    coord_net: SceneCoordinateNet
    score_net: ScoreNet | None
    completed: list[str]
    resume: dict[str, Any] | None  # training dict of checkpoint.pt, if resuming a stage
    stop_signal: int | None = None
    result: TrainResult | None = None

    @property
    def out(self) -> Path:
        return self.config.out_dir


# ----------------------------------------------------------------------------------------
# Entry point


def train(config: TrainConfig) -> TrainResult:
    """Run ``config.stages`` in ``config.out_dir`` (resuming from its checkpoint if present).

    Raises TrainingInterruptedError after SIGINT / SIGTERM (state saved), ValueError on bad input
    (missing scene, checkpoint of another camera), CheckpointError on an unreadable
    checkpoint in ``out_dir`` or ``init_checkpoint``.
    """
    runtime = setup_runtime(config.device, config.precision)
    try:
        with num_threads(config.threads if runtime.device.type == 'cpu' else None), \
                _signal_guard() as signals:
            session = _open_session(config, runtime)
            signals.attach(session)
            return _run(session)
    finally:
        teardown_runtime(runtime)


class _SignalRelay:
    def __init__(self) -> None:
        self.session: _Session | None = None
        self.pending: int | None = None

    def attach(self, session: _Session) -> None:
        self.session = session
        session.stop_signal = self.pending

    def __call__(self, signum: int, frame: Any) -> None:
        _LOG.warning('signal %d: saving a checkpoint and stopping', signum)
        self.pending = signum
        if self.session is not None:
            self.session.stop_signal = signum


@contextlib.contextmanager
def _signal_guard() -> Iterator[_SignalRelay]:
    """SIGINT / SIGTERM set a stop flag that the step loop checks (main thread only)."""
    relay = _SignalRelay()
    if threading.current_thread() is not threading.main_thread():
        yield relay
        return
    previous = {s: signal.signal(s, relay) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield relay
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _open_session(config: TrainConfig, runtime: Runtime) -> _Session:
    torch.manual_seed(config.seed)
    data = load_training_set(config.scene, 'train', use_depth=config.use_depth,
                             max_frames=config.max_frames)
    n = len(data)
    if n < runtime.world_size:
        raise ValueError(f'{n} training frames cannot be shared by {runtime.world_size} ranks')
    shard = torch.arange(n)[runtime.rank::runtime.world_size]
    ckpt_path = config.out_dir / CHECKPOINT_NAME
    if runtime.is_main:
        for name in (CHECKPOINT_NAME, MODEL_NAME):
            for stale in remove_stale_temporaries(config.out_dir / name):
                _LOG.info('removed %s, left by a run killed while writing', stale)
    resume = None
    completed: list[str] = []
    if ckpt_path.exists():
        loaded = load_checkpoint(ckpt_path)
        training = loaded.training or {}
        completed = [str(s) for s in training.get('completed', [])]
        if training.get('stage') is not None:
            resume = training
        _check_camera(loaded.K, loaded.image_size, data, ckpt_path)
        coord_net, score_net = loaded.coord_net, loaded.score_net
        _LOG.info('resuming from %s (completed %s, in progress %s at step %s)', ckpt_path,
                  completed, training.get('stage'), training.get('step'))
    elif config.init_checkpoint is not None:
        loaded = load_checkpoint(config.init_checkpoint)
        _check_camera(loaded.K, loaded.image_size, data, config.init_checkpoint)
        coord_net, score_net = loaded.coord_net, loaded.score_net
        _LOG.info('networks initialised from %s', config.init_checkpoint)
    else:
        coord_net = SceneCoordinateNet(config.coord_net)
        coord_net.set_scene_mean(data.scene_mean())
        score_net = None
    coord_net = coord_net.to(runtime.device)
    if score_net is not None:
        score_net = score_net.to(runtime.device)
    if runtime.is_main:
        config.out_dir.mkdir(parents=True, exist_ok=True)
    return _Session(config=config, runtime=runtime, data=data, shard=shard, coord_net=coord_net,
                    score_net=score_net, completed=completed, resume=resume)


def _check_camera(K: Tensor, image_size: tuple[int, int], data: TrainingSet, path: Path) -> None:
    if tuple(image_size) != data.image_size or not torch.allclose(K, data.K_33, atol=1e-3):
        raise ValueError(f'checkpoint {path} was trained for images {image_size} with K '
                         f'{K.tolist()}, but the scene has {data.image_size} with K '
                         f'{data.K_33.tolist()}; use another out_dir')


def _run(session: _Session) -> TrainResult:
    config = session.config
    session.result = TrainResult(out_dir=config.out_dir, checkpoint=config.out_dir /
                                 CHECKPOINT_NAME, model=config.out_dir / MODEL_NAME,
                                 stages_done=list(session.completed))
    if session.runtime.is_main:
        _prune_log(session)
    runners: dict[Stage, Callable[[_Session], None]] = {
        Stage.COORDS: _train_coords, Stage.SCORE: _train_score, Stage.E2E: _train_e2e}
    for stage in sorted(config.stages, key=list(Stage).index):
        if stage.value in session.completed:
            _LOG.info('stage %s already completed in %s: skipped', stage.value, config.out_dir)
            continue
        runners[stage](session)
        session.completed.append(stage.value)
        session.result.stages_done.append(stage.value)
        session.resume = None
        if session.runtime.is_main:
            _save(session, stage=None, step=0, elapsed_s=0.0, optimizers={}, generator=None)
            save_checkpoint(config.out_dir / MODEL_NAME, session.coord_net, session.score_net,
                            session.data.K_33, session.data.image_size,
                            metadata=_metadata(session), half=True)
            _plot_curves(config.out_dir / LOG_NAME, config.out_dir / CURVES_NAME)
        _barrier(session.runtime)
    if not (config.out_dir / MODEL_NAME).exists() and session.runtime.is_main:
        save_checkpoint(config.out_dir / MODEL_NAME, session.coord_net, session.score_net,
                        session.data.K_33, session.data.image_size,
                        metadata=_metadata(session), half=True)
    return session.result


def _barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


# ----------------------------------------------------------------------------------------
# Shared step loop


@dataclass
class _Optim:
    name: str
    optimizer: torch.optim.Optimizer
    schedule: LrSchedule


def _stage_generator(session: _Session, stage: Stage) -> torch.Generator:
    """Data / sampling generator of this rank and stage (restored on resume for rank 0)."""
    g = torch.Generator()
    g.manual_seed(session.config.seed * 1_000_003 + 7919 * session.runtime.rank
                  + 104_729 * list(Stage).index(stage))
    return g


def _loop(session: _Session, stage: Stage, budget: Budget, optims: list[_Optim],
          generator: torch.Generator, step_fn: Callable[[int], dict[str, float]]) -> None:
    """Run ``step_fn`` until the budget is spent; schedules, logging, checkpoints, signals."""
    config, runtime = session.config, session.runtime
    step, elapsed = 0, 0.0
    resume = session.resume if (session.resume or {}).get('stage') == stage.value else None
    if resume is not None:
        step, elapsed = int(resume['step']), float(resume['elapsed_s'])
        states = resume.get('optimizers', {})
        for o in optims:
            if o.name in states:
                o.optimizer.load_state_dict(states[o.name])
        rng = resume.get('rng', {})
        if runtime.is_main and 'data' in rng:
            generator.set_state(rng['data'])
            torch.set_rng_state(rng['torch'])
        else:  # other ranks: a fresh deterministic stream for the resumed position
            generator.manual_seed(generator.initial_seed() + step)
        session.result.resumed_from[stage.value] = step
        _LOG.info('stage %s: resuming at step %d (%.1f s trained)', stage.value, step, elapsed)
    pbar = _progress(session, stage, budget, step)
    window: dict[str, list[float]] = {}
    last_save = t_last = time.monotonic()
    try:
        while True:
            progress = budget.progress(step, elapsed)
            stop = progress >= 1.0 or session.stop_signal is not None
            if broadcast_flag(stop, runtime):
                break
            lrs = []
            for o in optims:
                lr = o.schedule.at(step, progress)
                for group in o.optimizer.param_groups:
                    group['lr'] = lr
                lrs.append(lr)
            metrics = step_fn(step)
            step += 1
            now = time.monotonic()
            elapsed += now - t_last
            t_last = now
            if runtime.distributed:  # one clock for all ranks: same schedule, same stop
                t = torch.tensor([elapsed], dtype=torch.float64,
                                 device=runtime.device if runtime.device.type == 'cuda'
                                 else 'cpu')  # nccl reduces CUDA tensors only
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                elapsed = float(t.item())
            for k, v in metrics.items():
                window.setdefault(k, []).append(v)
            if pbar is not None:
                pbar.update(1)
                if step % 10 == 0:
                    pbar.set_postfix(loss=f'{metrics["loss"]:.4g}', lr=f'{lrs[0]:.2e}')
            if step % config.log_every == 0:
                _log_row(session, stage, step, elapsed, lrs[0], window)
                window = {}
            if runtime.is_main and (step % config.checkpoint_every == 0
                                    or now - last_save >= config.checkpoint_seconds):
                _save(session, stage, step, elapsed, {o.name: o.optimizer for o in optims},
                      generator)
                last_save = t_last = time.monotonic()
    finally:
        if pbar is not None:
            pbar.close()
    if window:
        _log_row(session, stage, step, elapsed, lrs[0] if optims else 0.0, window)
    session.result.steps[stage.value] = step
    signalled = _any_rank_signalled(session)  # collective: every rank calls it
    if signalled:
        path = None
        if runtime.is_main:
            path = _save(session, stage, step, elapsed,
                         {o.name: o.optimizer for o in optims}, generator)
            _plot_curves(config.out_dir / LOG_NAME, config.out_dir / CURVES_NAME)
        raise TrainingInterruptedError(session.stop_signal or signal.SIGTERM, path)
    _LOG.info('stage %s done: %d steps in %.1f s', stage.value, step, elapsed)


def _any_rank_signalled(session: _Session) -> bool:
    return broadcast_flag(session.stop_signal is not None, session.runtime)


def _progress(session: _Session, stage: Stage, budget: Budget, step: int):
    if not (session.config.progress_bar and session.runtime.is_main):
        return None
    from tqdm import tqdm
    return tqdm(total=budget.iterations, initial=step, desc=f'train {stage.value}',
                dynamic_ncols=True, mininterval=1.0)


def _log_row(session: _Session, stage: Stage, step: int, elapsed: float, lr: float,
             window: dict[str, list[float]]) -> None:
    loss = sum(window.get('loss', [math.nan])) / max(1, len(window.get('loss', [])))
    aux_values = window.get('aux', [])
    aux = sum(aux_values) / len(aux_values) if aux_values else math.nan
    session.result.final_loss[stage.value] = loss
    if not session.runtime.is_main:
        return
    path = session.out / LOG_NAME
    new = not path.exists()
    with open(path, 'a', newline='') as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(_LOG_FIELDS)
        writer.writerow([stage.value, step, f'{elapsed:.2f}', f'{lr:.4g}', f'{loss:.6g}',
                         f'{aux:.6g}'])
    _LOG.debug('%s step %d loss %.4g aux %.4g', stage.value, step, loss, aux)


def _prune_log(session: _Session) -> None:
    """On resume drop log rows newer than the checkpoint (they will be trained again)."""
    path = session.out / LOG_NAME
    if not path.exists():
        return
    resume = session.resume or {}
    keep = []
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if row['stage'] in session.completed:
            keep.append(row)
        elif row['stage'] == resume.get('stage') and int(row['step']) <= int(resume['step']):
            keep.append(row)
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=_LOG_FIELDS)
        writer.writeheader()
        writer.writerows(keep)


def _metadata(session: _Session) -> dict[str, Any]:
    meta = {'scene': str(session.config.scene), 'preset': session.config.preset.value,
            'stages_completed': ','.join(session.completed), 'seed': session.config.seed}
    if Stage.E2E.value in session.completed:
        meta['e2e_selection'] = session.config.e2e.selection.value
    if session.result is not None:
        meta.update(session.result.validation)
    # A synthetic scene's recipe travels with the model, so the demo can re-render its test loop.
    scene_config = Path(session.config.scene) / 'scene_config.json'
    if scene_config.is_file():
        meta['scene_config'] = scene_config.read_text()
    meta.update(session.config.metadata)
    return meta


def _save(session: _Session, stage: Stage | None, step: int, elapsed_s: float,
          optimizers: dict[str, torch.optim.Optimizer],
          generator: torch.Generator | None) -> Path:
    """Full checkpoint (rank 0 only)."""
    rng: dict[str, Tensor] = {'torch': torch.get_rng_state()}
    if generator is not None:
        rng['data'] = generator.get_state()
    training = {
        'stage': None if stage is None else stage.value,
        'step': int(step),
        'elapsed_s': float(elapsed_s),
        'completed': list(session.completed),
        'optimizers': {k: o.state_dict() for k, o in optimizers.items()},
        'rng': rng,
        'config': session.config.to_dict(),
        'world_size': session.runtime.world_size,
    }
    path = session.out / CHECKPOINT_NAME
    save_checkpoint(path, session.coord_net, session.score_net, session.data.K_33,
                    session.data.image_size, metadata=_metadata(session), training=training)
    _LOG.debug('checkpoint %s: stage %s step %d', path, training['stage'], step)
    return path


# ----------------------------------------------------------------------------------------
# Batches


def _images(session: _Session, idx: Tensor, jitter: bool, generator: torch.Generator,
            brightness: float = 0.0, contrast: float = 0.0) -> Tensor:
    """(B, 3, H, W) float images in [0, 1] on the device, optionally with per-image photometric
    jitter x * (1 +- contrast) +- brightness (uniform draws, clamped to [0, 1])."""
    runtime = session.runtime
    images = session.data.images_b3hw[idx].to(runtime.device, non_blocking=True).float() / 255.0
    if jitter and (brightness > 0 or contrast > 0):
        B = images.shape[0]
        u = torch.rand(B, 2, generator=generator).to(runtime.device)
        gain = (1.0 + contrast * (2.0 * u[:, 0] - 1.0)).view(B, 1, 1, 1)
        offset = (brightness * (2.0 * u[:, 1] - 1.0)).view(B, 1, 1, 1)
        images = (images * gain + offset).clamp_(0.0, 1.0)
    if session.config.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def _draw(session: _Session, count: int, generator: torch.Generator) -> Tensor:
    """``count`` random frame indices (with replacement) from this rank's shard."""
    pick = torch.randint(len(session.shard), (count,), generator=generator)
    return session.shard[pick]


def _wrap_ddp(module: nn.Module, runtime: Runtime) -> nn.Module:
    if not runtime.distributed:
        return module
    device_ids = [runtime.device.index] if runtime.device.type == 'cuda' else None
    return DistributedDataParallel(module, device_ids=device_ids)


# ----------------------------------------------------------------------------------------
# Stage 1: scene coordinates


def _train_coords(session: _Session) -> None:
    cfg, runtime, data = session.config.coords, session.runtime, session.data
    net = session.coord_net
    if session.config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    model = _wrap_ddp(net, runtime)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr.lr, weight_decay=cfg.weight_decay)
    generator = _stage_generator(session, Stage.COORDS)
    has_depth = data.coords_b3hw is not None
    K = data.K_33.to(runtime.device, torch.float32)
    # fp16 autocast (older GPUs) needs loss scaling against gradient underflow; bf16 does not.
    scaler = torch.amp.GradScaler(runtime.device.type,
                                  enabled=runtime.amp_dtype == torch.float16)
    _LOG.info('stage coords on rank %d/%d: %d of %d frames (%s), %s, autocast %s, budget %s',
              runtime.rank, runtime.world_size, len(session.shard), len(data),
              'depth targets' if has_depth else 'no depth: reprojection init',
              runtime.device, runtime.amp_dtype, cfg.budget)

    def step_fn(step: int) -> dict[str, float]:
        idx = _draw(session, cfg.batch_size, generator)
        images = _images(session, idx, True, generator, cfg.brightness, cfg.contrast)
        with runtime.autocast():
            pred = model(images)
        pred = pred.float()
        if has_depth:
            target = data.coords_b3hw[idx].to(runtime.device, non_blocking=True)
            loss = coordinate_loss(pred, target)
            with torch.no_grad():
                dist_m = (pred - target).norm(dim=1)
                aux = float(dist_m[torch.isfinite(dist_m)].median()) \
                    if torch.isfinite(dist_m).any() else math.nan
        else:
            T = data.T_cw_b44[idx].to(runtime.device)
            loss, err = reprojection_init_loss(pred, T, K, clamp_px=cfg.reprojection_clamp_px,
                                               min_depth_m=cfg.min_depth_m,
                                               depth_prior_m=cfg.depth_prior_m)
            aux = float(err.median())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return {'loss': float(loss.detach()), 'aux': aux}

    _loop(session, Stage.COORDS, cfg.budget, [_Optim('coord', optimizer, cfg.lr)], generator,
          step_fn)
    net.eval()
    if runtime.is_main and has_depth:
        _validate_coords(session)


def _validate_coords(session: _Session, max_frames: int = 50) -> None:
    """Log the median coordinate error (m) on up to ``max_frames`` test frames, if any."""
    try:
        test = load_training_set(session.config.scene, 'test', max_frames=max_frames)
    except (ValueError, FileNotFoundError) as exc:
        _LOG.info('no test split to validate on (%s)', exc)
        return
    if test.coords_b3hw is None or test.image_size != session.data.image_size:
        return
    pred = predict_coordinates(session.coord_net, test.images_b3hw, session.runtime,
                               channels_last=session.config.channels_last).cpu()
    dist_m = (pred - test.coords_b3hw).norm(dim=1)
    dist_m = dist_m[torch.isfinite(dist_m)]
    median = float(dist_m.median())
    within = float((dist_m < 0.1).float().mean())
    session.result.validation['coords_test_median_m'] = median
    session.result.validation['coords_test_within_10cm'] = within
    _LOG.info('coordinates on %d test frames: median error %.3f m, %.1f %% within 10 cm',
              len(test), median, 100 * within)


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
        x = images_b3hw_uint8[start:start + batch_size].to(runtime.device).float() / 255.0
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            out.append(net(x).float())
    return torch.cat(out)


def _train_score(session: _Session) -> None:
    cfg, runtime, data = session.config.score, session.runtime, session.data
    if session.score_net is None:
        session.score_net = ScoreNet(ScoreNetConfig(output_scale=cfg.output_scale))
        session.score_net.to(runtime.device)
    net = session.score_net
    net.train()
    model = _wrap_ddp(net, runtime)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr.lr)
    generator = _stage_generator(session, Stage.SCORE)
    # Predictions of the frozen coordinate net for this rank's frames (shard order).
    coords = predict_coordinates(session.coord_net, data.images_b3hw[session.shard], runtime,
                                 channels_last=session.config.channels_last)
    h, w = coords.shape[-2:]
    pixels = cell_centers(h, w, session.coord_net.stride, device=runtime.device)
    K = data.K_33.to(runtime.device, torch.float32)
    max_error = EstimatorConfig().max_reprojection_error_px
    _LOG.info('stage score: %d error images per step, budget %s', cfg.batch_size, cfg.budget)

    def step_fn(step: int) -> dict[str, float]:
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

    _loop(session, Stage.SCORE, cfg.budget, [_Optim('score', optimizer, cfg.lr)], generator,
          step_fn)
    net.eval()


# ----------------------------------------------------------------------------------------
# Stage 3: end-to-end


def clamp_hook(limit: float) -> Callable[[Tensor], Tensor]:
    """Tensor hook clamping a gradient to [-limit, limit] (paper Sec. 4.2); NaN -> 0."""
    def hook(grad: Tensor) -> Tensor:
        return torch.nan_to_num(grad, nan=0.0).clamp(-limit, limit)
    return hook


def clamped_score_fn(score_net: ScoreNet, limit: float) -> Callable[[Tensor], Tensor]:
    """ScoreFn (B, N, H, W) px -> (B, N) whose input and output gradients are clamped, so the
    gradient entering the score CNN (at its output) and the one it passes back towards the
    coordinate CNN (at its input) both lie in [-limit, limit]."""
    hook = clamp_hook(limit)

    def score_fn(errors_bnhw: Tensor) -> Tensor:
        if errors_bnhw.requires_grad:
            errors_bnhw.register_hook(hook)
        scores = score_net.score_fn(errors_bnhw)
        if scores.requires_grad:
            scores.register_hook(hook)
        return scores
    return score_fn


def end_to_end_loss(coord_net: SceneCoordinateNet, score_net: ScoreNet | None,
                    images_b3hw: Tensor, K_33: Tensor, T_cw_gt_b44: Tensor,
                    estimator: EstimatorConfig, grad_clamp: float,
                    generator: torch.Generator | None, runtime: Runtime | None = None
                    ) -> Tensor:
    """Expected pose loss (deg / cm, paper Eq. 7 / SoftAM Eq. 4) of a batch of images.

    images_b3hw: (B, 3, H, W) in [0, 1]; K_33 (3, 3) pixels; T_cw_gt_b44 (B, 4, 4)
    world-to-camera. Gradients entering either network are clamped to +- grad_clamp.
    """
    # bf16 autocast only: fp16 gradients of the pose loss would need loss scaling.
    use_amp = runtime is not None and runtime.amp_dtype == torch.bfloat16
    ctx = runtime.autocast() if use_amp else contextlib.nullcontext()
    with ctx:
        pred = coord_net(images_b3hw)
    pred = pred.float()
    if pred.requires_grad:
        pred.register_hook(clamp_hook(grad_clamp))
    score_fn = None if score_net is None else clamped_score_fn(score_net, grad_clamp)
    B = pred.shape[0]
    K_b33 = K_33.to(pred).expand(B, 3, 3)
    return expected_pose_loss(pred, K_b33, T_cw_gt_b44.to(pred), estimator, score_fn,
                              generator, stride=coord_net.stride)


def _train_e2e(session: _Session) -> None:
    cfg, runtime, data = session.config.e2e, session.runtime, session.data
    coord_net, score_net = session.coord_net, session.score_net
    if session.config.channels_last:
        coord_net = coord_net.to(memory_format=torch.channels_last)
    # BatchNorm keeps its componentwise statistics: 1-2 images per step are too few to
    # re-estimate them; its affine parameters still learn.
    coord_net.eval()
    optims = [_Optim('coord', torch.optim.SGD(coord_net.parameters(), lr=cfg.coord_lr.lr,
                                              momentum=cfg.momentum), cfg.coord_lr)]
    params = list(coord_net.parameters())
    if score_net is not None:
        score_net.eval()
        if cfg.train_score:
            optims.append(_Optim('score', torch.optim.SGD(score_net.parameters(),
                                                          lr=cfg.score_lr.lr,
                                                          momentum=cfg.momentum),
                                 cfg.score_lr))
            params += list(score_net.parameters())
        else:
            score_net.requires_grad_(False)
    else:
        _LOG.warning('stage e2e without a score net: scoring by soft inlier count, only the '
                     'coordinate net learns')
    estimator = EstimatorConfig(selection=cfg.selection, num_hypotheses=cfg.num_hypotheses,
                                seed=session.config.seed)
    generator = _stage_generator(session, Stage.E2E)
    K = data.K_33.to(runtime.device, torch.float32)
    _LOG.info('stage e2e (%s): %d frame(s) per step, %d hypotheses, budget %s',
              cfg.selection.value, cfg.frames_per_step, cfg.num_hypotheses, cfg.budget)

    def step_fn(step: int) -> dict[str, float]:
        idx = _draw(session, cfg.frames_per_step, generator)
        images = _images(session, idx, False, generator)
        loss = end_to_end_loss(coord_net, score_net, images, K, data.T_cw_b44[idx], estimator,
                               cfg.grad_clamp, generator, runtime)
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
        return {'loss': float(loss.detach())}

    _loop(session, Stage.E2E, cfg.budget, optims, generator, step_fn)


# ----------------------------------------------------------------------------------------
# Plots


def _plot_curves(log_path: Path, png_path: Path) -> None:
    """PNG of the loss per stage from log.csv (matplotlib Agg; skipped if unavailable)."""
    if not log_path.exists():
        return
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in requirements
        return
    with open(log_path, newline='') as f:
        rows = list(csv.DictReader(f))
    stages = [s.value for s in Stage if any(r['stage'] == s.value for r in rows)]
    if not stages:
        return
    units = {'coords': 'loss (m or px)', 'score': '|s - s*|', 'e2e': 'expected pose loss'}
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.6), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        sel = [r for r in rows if r['stage'] == stage]
        steps = [int(r['step']) for r in sel]
        loss = [float(r['loss']) for r in sel]
        ax.plot(steps, loss, lw=1.2)
        if all(v > 0 for v in loss):
            ax.set_yscale('log')
        ax.set_title(f'stage {stage}')
        ax.set_xlabel('step')
        ax.set_ylabel(units.get(stage, 'loss'))
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = png_path.with_name(f'.{png_path.name}.tmp.png')
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(png_path)
