"""The machinery of a training run, apart from what the stages compute: the session (data,
networks, resume state), signals, the step loop (learning-rate schedules, logging, checkpoints,
budget, DDP agreement), the checkpoint file, log.csv and curves.png, and batch helpers.

The four stages (`dsac_ros.training.stages`) each build their optimizers and a step function
and hand them to `run_loop`; `dsac_ros.training.trainer.train` runs the stages in order.
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

from dsac_ros.dsac import (
    ModelSettings,
    Scoring,
    default_inlier_threshold_px,
    model_settings_metadata,
    read_model_settings,
)
from dsac_ros.models.checkpoint import (
    load_checkpoint,
    load_encoder,
    load_encoder_into,
    remove_stale_temporaries,
    save_checkpoint,
)
from dsac_ros.models.scene_coordinate_net import SceneCoordinateNet
from dsac_ros.models.score_net import ScoreNet
from dsac_ros.training.config import Budget, LrSchedule, Stage, TrainConfig
from dsac_ros.training.data import TrainingSet, load_training_set, validation_split
from dsac_ros.training.novel_views import make_novel_views
from dsac_ros.training.runtime import Runtime, broadcast_flag

_LOG = logging.getLogger(__name__)

CHECKPOINT_NAME = 'checkpoint.pt'
MODEL_NAME = 'model.pt'
COMPONENTWISE_MODEL_NAME = 'model_componentwise.pt'  # the model before stage e2e
LOG_NAME = 'log.csv'
CURVES_NAME = 'curves.png'
_LOG_FIELDS = ('stage', 'step', 'elapsed_s', 'lr', 'loss', 'aux', 'grad')


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
class Session:
    """Mutable state of one run (networks, resume info, signal flag); never returned."""

    config: TrainConfig
    runtime: Runtime
    data: TrainingSet
    shard: Tensor  # (n,) long frame indices of this rank
    validation: Tensor  # (m,) long frame indices held out of training (`data.validation_split`)
    coord_net: SceneCoordinateNet
    score_net: ScoreNet | None
    completed: list[str]
    resume: dict[str, Any] | None  # training dict of checkpoint.pt, if resuming a stage
    stop_signal: int | None = None
    result: TrainResult | None = None
    scoring: Scoring = Scoring.SOFT_INLIERS  # deployed scoring (`stages.validate_scoring`)
    encoder_origin: str | None = None  # pretrained encoder the run started from (metadata)

    @property
    def out(self) -> Path:
        return self.config.out_dir


# ----------------------------------------------------------------------------------------
# Signals and opening a session


class _SignalRelay:
    def __init__(self) -> None:
        self.session: Session | None = None
        self.pending: int | None = None

    def attach(self, session: Session) -> None:
        self.session = session
        session.stop_signal = self.pending

    def __call__(self, signum: int, frame: Any) -> None:
        _LOG.warning('signal %d: saving a checkpoint and stopping', signum)
        self.pending = signum
        if self.session is not None:
            self.session.stop_signal = signum


@contextlib.contextmanager
def signal_guard() -> Iterator[_SignalRelay]:
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


def open_session(config: TrainConfig, runtime: Runtime) -> Session:
    torch.manual_seed(config.seed)
    data = load_training_set(config.scene, 'train', use_depth=config.use_depth,
                             max_frames=config.max_frames)
    train_index, validation = validation_split(data.names, config.validation_fraction)
    n = len(train_index)
    if n < runtime.world_size:
        raise ValueError(f'{n} training frames cannot be shared by {runtime.world_size} ranks')
    _LOG.info('%d training frames, %d held out for validation (the last %.0f %% of each '
              'sequence)', n, len(validation), 100 * config.validation_fraction)
    data, train_index = _add_novel_views(config, data, train_index)
    shard = train_index[runtime.rank::runtime.world_size]
    ckpt_path = config.out_dir / CHECKPOINT_NAME
    if runtime.is_main:
        for name in (CHECKPOINT_NAME, MODEL_NAME, COMPONENTWISE_MODEL_NAME):
            for stale in remove_stale_temporaries(config.out_dir / name):
                _LOG.info('removed %s, left by a run killed while writing', stale)
    resume = None
    completed: list[str] = []
    encoder_origin = None
    if ckpt_path.exists():
        loaded = load_checkpoint(ckpt_path)
        training = loaded.training or {}
        completed = [str(s) for s in training.get('completed', [])]
        if training.get('stage') is not None:
            resume = training
        _check_camera(loaded.K, loaded.image_size, data, ckpt_path)
        coord_net, score_net = loaded.coord_net, loaded.score_net
        scoring = read_model_settings(loaded.metadata, loaded.image_size).scoring
        encoder_origin = loaded.metadata.get('encoder')
        _LOG.info('resuming from %s (completed %s, in progress %s at step %s)', ckpt_path,
                  completed, training.get('stage'), training.get('step'))
    elif config.init_checkpoint is not None:
        loaded = load_checkpoint(config.init_checkpoint)
        _check_camera(loaded.K, loaded.image_size, data, config.init_checkpoint)
        coord_net, score_net = loaded.coord_net, loaded.score_net
        scoring = read_model_settings(loaded.metadata, loaded.image_size).scoring
        _LOG.info('networks initialised from %s', config.init_checkpoint)
    else:
        coord_net = SceneCoordinateNet(config.coord_net)
        coord_net.set_scene_mean(data.scene_mean(train_index))
        if config.encoder is not None:
            encoder = load_encoder(config.encoder)
            load_encoder_into(coord_net, encoder)
            encoder_origin = encoder.origin
            meta = encoder.metadata
            earlier = (f', after {meta["init_encoder_steps"]} steps of an earlier run'
                       if 'init_encoder_steps' in meta else '')
            _LOG.info('encoder initialised from %s (pretrained %s steps, %s minutes%s)',
                      config.encoder, meta.get('pretrain_steps', '?'),
                      meta.get('pretrain_minutes', '?'), earlier)
        score_net = None
        scoring = Scoring.SOFT_INLIERS
    coord_net = coord_net.to(runtime.device)
    if score_net is not None:
        score_net = score_net.to(runtime.device)
    if runtime.is_main:
        config.out_dir.mkdir(parents=True, exist_ok=True)
    return Session(config=config, runtime=runtime, data=data, shard=shard,
                   validation=validation, coord_net=coord_net, score_net=score_net,
                   completed=completed, resume=resume, scoring=scoring,
                   encoder_origin=encoder_origin)


def _add_novel_views(config: TrainConfig, data: TrainingSet, train_index: Tensor
                     ) -> tuple[TrainingSet, Tensor]:
    """The training frames and their novel views (`novel_views`, ``config.novel_views``),
    named ``novel/<source frame>/<k>``, appended to ``data``; the validation frames get none.
    Drawn from the run's seed alone: a resumed run trains on the same views."""
    cfg = config.novel_views
    if cfg.copies == 0:
        return data, train_index
    if data.depth_bhw is None:
        _LOG.warning('no depth: novel views (%d per frame) need depth, none made', cfg.copies)
        return data, train_index
    start = time.monotonic()
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + 17)
    views, T_cw, source = make_novel_views(
        data.images_b3hw[train_index], data.depth_bhw[train_index], data.T_cw_b44[train_index],
        data.K_33, cfg, generator, K_depth_33=data.K_depth_33)
    counts: dict[int, int] = {}
    names = []
    for s in source.tolist():
        counts[s] = counts.get(s, 0) + 1
        names.append(f'novel/{data.names[int(train_index[s])]}/{counts[s]}')
    first = len(data)
    data = data.with_frames(views.images_b3hw, views.coords_b3hw, T_cw, names, views.depth_bhw)
    _LOG.info('%d novel views of %d training frames (pose changes of magnitude %.0f-%.0f, '
              '`perturb_poses`; hole share %.2f median) in %.0f s', len(source),
              len(train_index), cfg.min_magnitude, cfg.max_magnitude,
              float(views.hole_share_b.median()) if len(source) else 0.0,
              time.monotonic() - start)
    return data, torch.cat([train_index, torch.arange(first, len(data))])


def _check_camera(K: Tensor, image_size: tuple[int, int], data: TrainingSet, path: Path) -> None:
    if tuple(image_size) != data.image_size or not torch.allclose(K, data.K_33, atol=1e-3):
        raise ValueError(f'checkpoint {path} was trained for images {image_size} with K '
                         f'{K.tolist()}, but the scene has {data.image_size} with K '
                         f'{data.K_33.tolist()}; use another out_dir')


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


# ----------------------------------------------------------------------------------------
# Shared step loop


@dataclass
class Optim:
    name: str
    optimizer: torch.optim.Optimizer
    schedule: LrSchedule


def stage_generator(session: Session, stage: Stage) -> torch.Generator:
    """Data / sampling generator of this rank and stage (restored on resume for rank 0)."""
    g = torch.Generator()
    g.manual_seed(session.config.seed * 1_000_003 + 7919 * session.runtime.rank
                  + 104_729 * list(Stage).index(stage))
    return g


def restore_optimizer(optim: Optim, state: dict) -> bool:
    """Load a saved optimizer state; False (and a warning) when it was saved for other
    parameter groups, e.g. by a version whose stage 1 had one group where it now has two
    (encoder and head): the weights still resume, the optimizer's moments start afresh."""
    try:
        optim.optimizer.load_state_dict(state)
    except ValueError as exc:
        _LOG.warning('optimizer %s: saved state does not fit (%s); its moments start afresh, '
                     'the weights resume', optim.name, exc)
        return False
    return True


def run_loop(session: Session, stage: Stage, budget: Budget, optims: list[Optim],
          generator: torch.Generator,
          step_fn: Callable[[int, float], dict[str, float]]) -> None:
    """Run ``step_fn(step, progress)`` until the budget is spent (progress: the fraction of
    it used, `Budget.progress`); schedules, logging, checkpoints, signals."""
    config, runtime = session.config, session.runtime
    step, elapsed = 0, 0.0
    resume = session.resume if (session.resume or {}).get('stage') == stage.value else None
    if resume is not None:
        step, elapsed = int(resume['step']), float(resume['elapsed_s'])
        states = resume.get('optimizers', {})
        for o in optims:
            if o.name in states:
                restore_optimizer(o, states[o.name])
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
                    group['lr'] = lr * group.get('lr_scale', 1.0)
                lrs.append(lr)
            metrics = step_fn(step, progress)
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
                save_state(session, stage, step, elapsed, {o.name: o.optimizer for o in optims},
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
            path = save_state(session, stage, step, elapsed,
                         {o.name: o.optimizer for o in optims}, generator)
            plot_curves(config.out_dir / LOG_NAME, config.out_dir / CURVES_NAME)
        raise TrainingInterruptedError(session.stop_signal or signal.SIGTERM, path)
    _LOG.info('stage %s done: %d steps in %.1f s', stage.value, step, elapsed)


def _any_rank_signalled(session: Session) -> bool:
    return broadcast_flag(session.stop_signal is not None, session.runtime)


def _progress(session: Session, stage: Stage, budget: Budget, step: int):
    if not (session.config.progress_bar and session.runtime.is_main):
        return None
    from tqdm import tqdm
    return tqdm(total=budget.iterations, initial=step, desc=f'train {stage.value}',
                dynamic_ncols=True, mininterval=1.0)


def _log_row(session: Session, stage: Stage, step: int, elapsed: float, lr: float,
             window: dict[str, list[float]]) -> None:
    def mean(key: str) -> float:
        values = window.get(key, [])
        return sum(values) / len(values) if values else math.nan

    loss, aux, grad = mean('loss'), mean('aux'), mean('grad')
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
                         f'{aux:.6g}', f'{grad:.6g}'])
    _LOG.debug('%s step %d loss %.4g aux %.4g', stage.value, step, loss, aux)


def prune_log(session: Session) -> None:
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


def model_settings(session: Session) -> ModelSettings:
    """The estimator settings this run trains with and its model is deployed with
    (`dsac_ros.dsac.settings`): tau from the config, else the paper's at the image width; the
    RGB-D threshold of the end-to-end stage."""
    config = session.config
    tau = config.inlier_threshold_px
    if tau is None:
        tau = default_inlier_threshold_px(session.data.image_size[1])
    amp = session.runtime.amp_dtype
    return ModelSettings(inlier_threshold_px=tau, soft_inlier_beta=config.soft_inlier_beta,
                         scoring=session.scoring,
                         amp_dtype=None if amp is None else str(amp).replace('torch.', ''),
                         inlier_threshold_cm=config.e2e.inlier_threshold_cm)


def metadata(session: Session) -> dict[str, Any]:
    meta = {'scene': str(session.config.scene), 'preset': session.config.preset.value,
            'stages_completed': ','.join(session.completed), 'seed': session.config.seed,
            **model_settings_metadata(model_settings(session))}
    if Stage.E2E.value in session.completed:
        meta['e2e_selection'] = session.config.e2e.selection.value
        meta['e2e_depth'] = session.config.e2e.depth
    if session.encoder_origin is not None:
        meta['encoder'] = session.encoder_origin
    if session.result is not None:
        meta.update(session.result.validation)
    # A synthetic scene's recipe travels with the model, so the demo can re-render its test loop.
    scene_config = Path(session.config.scene) / 'scene_config.json'
    if scene_config.is_file():
        meta['scene_config'] = scene_config.read_text()
    meta.update(session.config.metadata)
    return meta


def save_state(session: Session, stage: Stage | None, step: int, elapsed_s: float,
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
                    session.data.image_size, metadata=metadata(session), training=training)
    _LOG.debug('checkpoint %s: stage %s step %d', path, training['stage'], step)
    return path


# ----------------------------------------------------------------------------------------
# Batches


def device_images(images_b3hw: Tensor, runtime: Runtime, channels_last: bool) -> Tensor:
    """(B, 3, H, W) images (uint8, or float in [0, 1]) -> float in [0, 1] on the device, in
    the channels_last layout where the run uses it (uint8 crosses to the device first: a
    quarter of the bytes)."""
    images = images_b3hw.to(runtime.device, non_blocking=True)
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def batch_images(session: Session, idx: Tensor) -> Tensor:
    """(B, 3, H, W) float images in [0, 1] of frames ``idx`` on the device, as recorded."""
    return device_images(session.data.images_b3hw[idx], session.runtime,
                         session.config.channels_last)


def draw_frames(session: Session, count: int, generator: torch.Generator) -> Tensor:
    """``count`` random frame indices (with replacement) from this rank's shard."""
    pick = torch.randint(len(session.shard), (count,), generator=generator)
    return session.shard[pick]


def wrap_ddp(module: nn.Module, runtime: Runtime) -> nn.Module:
    if not runtime.distributed:
        return module
    device_ids = [runtime.device.index] if runtime.device.type == 'cuda' else None
    return DistributedDataParallel(module, device_ids=device_ids)


# ----------------------------------------------------------------------------------------
# Plots


def plot_curves(log_path: Path, png_path: Path) -> None:
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
    units = {'coords': 'loss (m or px)', 'head': 'loss (m or px)', 'score': '|s - s*|',
             'e2e': 'expected pose loss'}
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
