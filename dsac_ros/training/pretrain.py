"""Encoder pretraining on many procedurally generated rooms (the ACE design, for CPU budgets).

Stage 1 of the per-scene recipe spends most of its minutes teaching a randomly initialised
encoder what any room needs (edges, texture, context at 1/8 resolution) before it can learn the
room itself; on a 2-core CPU it never finishes in 30 minutes (docs/BENCHMARKS.md: the recipe's
accuracy followed the host's step rate, 71.5 % at 33 k stage-1 steps, 19.5-41.5 % at 12-14 k).
Pretraining does the generic part once, for every user: one shared encoder and one small
regression head per room (``RoomHeads``: a head memorises its room, the encoder must serve them
all), on rooms drawn by seed from the benchmark generator
(:func:`~dsac_ros.data.benchmark_scenes.make_layout`) and views drawn at random through each
room (positions, heights, headings, pitch, roll and focal length all vary, so the encoder sees
the distances and rolls a test path brings). Only the encoder is kept
(:func:`~dsac_ros.models.checkpoint.save_encoder`); ``dsac_train`` starts stage 1 from it with
a fresh head (``TrainConfig.encoder``).

Rooms use seeds from ``PretrainConfig.first_seed`` (10000) on; the benchmark suite's seeds are
below 100, so no benchmark room is ever a pretraining room.

Measured (docs/BENCHMARKS.md, 2-core CPU): 10 minutes of stage 1 and 2.3 of the head on
``free_a`` gave 3.5 % of the test poses within 5 cm / 5 deg from a random start and 11.0 % from
another room's stage-1 encoder; the README's 30 minutes on ``revisit_a`` from the shipped encoder
gave 41.5-43 % (componentwise) at 10.7 k stage-1 steps, where random starts gave 19.5-38 % at
12.7-14 k. Many rooms at once learn slowly on a CPU: with 32 or 8 rooms of random views the
loss stayed at 2.6-2.9 m for the first 900 steps. So the shipped encoder is a curriculum
(``PretrainConfig.init_encoder``): 50 minutes on 4 rooms, then 50 on 8 from that encoder (loss
2.0 m after 200 steps, 0.38 m at the end), then 60 on 16 from that one (0.34 m at the end). On
``free_a`` (10 + 2.3 minutes as above) the 8-room encoder gave 16.5 % within 5 cm / 5 deg and
46.5 % within 10 cm / 10 deg, the 4-room one 10.5 % and 37.5 %, the 16-room one 15.0 % and
47.5 % (a tie); the README's 30 minutes on ``revisit_a`` 45.5-46.5 % componentwise at 13.6 k
steps from the 8-room encoder, 48.5-50 % at 15.3 k from the 16-room one, whose training loss
was 1-13 % lower at equal steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
import hashlib
import logging
import math
from pathlib import Path
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from dsac_ros.device import resolve_device
from dsac_ros.models.checkpoint import (
    atomic_torch_save,
    load_encoder,
    load_encoder_into,
    remove_stale_temporaries,
    save_encoder,
)
from dsac_ros.models.scene_coordinate_net import SceneCoordinateNet, SceneCoordinateNetConfig
from dsac_ros.training.augmentation import (
    AugmentationConfig,
    AugmentedBatch,
    augment_batch,
    crop_batch,
)
from dsac_ros.training.config import Budget, LrSchedule, Precision, Schedule, window_size
from dsac_ros.training.losses import coordinate_loss
from dsac_ros.training.runtime import num_threads, resolve_amp_dtype

_LOG = logging.getLogger(__name__)

STATE_NAME = 'pretrain_state.pt'
ENCODER_NAME = 'encoder.pt'


@dataclass(frozen=True)
class PretrainViews:
    """The views of a pretraining room: ``walk_frames`` along the benchmark generator's mapping
    walks of the room (two hand-held loops, as a user maps a room) and ``random_views`` drawn at
    random through it.

    Random views: positions uniform over the room's floor at least ``wall_margin_m`` from the
    walls and ``furniture_margin_m`` from furniture, heights in ``heights_m``; heading uniform;
    pitch in ``pitch_deg``; roll normal with ``roll_std_deg`` (clipped at 2 sigma). Every view
    of a room has the focal length ``fx_px`` times a per-room factor, log-uniform in
    ``focal_factor``."""

    walk_frames: int = 500
    random_views: int = 100
    width: int = 320
    height: int = 240
    fx_px: float = 260.0
    focal_factor: tuple[float, float] = (0.75, 1.35)
    wall_margin_m: float = 0.5
    furniture_margin_m: float = 0.3
    heights_m: tuple[float, float] = (0.8, 2.0)
    pitch_deg: tuple[float, float] = (-35.0, 15.0)
    roll_std_deg: float = 10.0


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run. ``out_dir`` holds the rendered rooms (a cache), the resumable state
    and ``encoder.pt``; a rerun with the same ``out_dir`` resumes. ``minutes`` / ``iterations``:
    the budget (either may be None, not both); the lr decays over it (cosine).

    init_encoder: an encoder file (an earlier run's ``encoder.pt``) that a fresh run starts
    from, with fresh room heads: a curriculum, e.g. 4 rooms first, then more rooms from that
    encoder, since many rooms from random weights learn slowly on a CPU. Ignored on resume.
    ``net`` must match the file's architecture."""

    out_dir: Path
    rooms: int = 4
    first_seed: int = 10_000
    views: PretrainViews = PretrainViews()
    net: SceneCoordinateNetConfig = SceneCoordinateNetConfig()
    minutes: float | None = 50.0
    iterations: int | None = None
    batch_size: int = 8
    crop_fraction: float = 0.6
    lr: LrSchedule = LrSchedule(2e-3, Schedule.COSINE)
    augmentation: AugmentationConfig = AugmentationConfig(
        max_rotation_deg=0.0, min_scale=1.0, max_scale=1.0)  # photometric only: views vary
    seed: int = 0
    init_encoder: Path | None = None
    device: str = 'auto'
    precision: Precision = Precision.AUTO
    threads: int | None = None
    save_seconds: float = 120.0
    log_every: int = 50
    progress: Callable[[str], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, 'out_dir', Path(self.out_dir))
        if self.init_encoder is not None:
            object.__setattr__(self, 'init_encoder', Path(self.init_encoder))
        if self.minutes is None and self.iterations is None:
            raise ValueError('pretraining needs minutes or iterations')
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f'minutes must be > 0, got {self.minutes}')
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f'iterations must be >= 1, got {self.iterations}')
        views = self.views.walk_frames + self.views.random_views
        if self.rooms < 1 or views < 1 or self.batch_size < 1:
            raise ValueError(f'need rooms, views per room and batch size >= 1: {self}')
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f'crop_fraction must be in (0, 1], got {self.crop_fraction}')

    def recipe(self) -> dict[str, Any]:
        """What made the encoder (stored with it): rooms, views and budget."""
        views = asdict(self.views)
        views['focal_factor'] = list(self.views.focal_factor)
        views['heights_m'] = list(self.views.heights_m)
        views['pitch_deg'] = list(self.views.pitch_deg)
        return {'rooms': self.rooms, 'first_seed': self.first_seed, 'views': views,
                'batch_size': self.batch_size, 'crop_fraction': self.crop_fraction,
                'lr': self.lr.lr, 'seed': self.seed}


# ----------------------------------------------------------------------------- rooms


@dataclass
class RoomViews:
    """The rendered views of one room: images (V, H, W, 3) uint8, cell targets (V, 3, h, w)
    float16 in the room's frame minus ``centre`` (metres), K (3, 3) float64, T_cw (V, 4, 4)."""

    images_vhw3: Tensor
    coords_v3hw: Tensor
    K_33: Tensor
    T_cw_v44: Tensor
    centre_3: Tensor


def render_room(seed: int, views: PretrainViews, stride: int = 8) -> RoomViews:
    """Render the views (:class:`PretrainViews`) of the benchmark generator's room ``seed``."""
    from dsac_ros.data.benchmark_scenes import (
        BenchmarkSceneConfig,
        CameraEffects,
        benchmark_trajectories,
        build_room,
        make_layout,
    )
    from dsac_ros.data.camera_paths import poses_from_angles

    layout = make_layout(seed)
    room = build_room(layout, seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5150]))
    size = np.asarray(layout.room_size_m, np.float64)
    lo, hi = math.log(views.focal_factor[0]), math.log(views.focal_factor[1])
    f = views.fx_px * math.exp(rng.uniform(lo, hi))
    K = np.array([[f, 0.0, views.width / 2.0], [0.0, f, views.height / 2.0], [0.0, 0.0, 1.0]])
    positions = []
    while len(positions) < views.random_views:
        p = np.array([rng.uniform(views.wall_margin_m, size[0] - views.wall_margin_m),
                      rng.uniform(views.wall_margin_m, size[1] - views.wall_margin_m),
                      rng.uniform(*views.heights_m)])
        if room.inside_free_space(p, margin=views.furniture_margin_m):
            positions.append(p)
    n = views.random_views
    roll = np.clip(rng.normal(0.0, views.roll_std_deg, n), -2 * views.roll_std_deg,
                   2 * views.roll_std_deg)
    T_wc = poses_from_angles(np.stack(positions).reshape(n, 3), rng.uniform(0.0, 360.0, n),
                             rng.uniform(*views.pitch_deg, n), roll).reshape(n, 4, 4)
    if views.walk_frames >= 2:
        walk = BenchmarkSceneConfig(seed=seed, train_frames=views.walk_frames,
                                    width=views.width, height=views.height, fx=f, fy=f)
        T_wc = np.concatenate(benchmark_trajectories(walk, layout)[0] + [T_wc])
    n = len(T_wc)
    effects = CameraEffects()
    params = effects.schedule(rng, n)
    images, depths = [], []
    for i in range(n):
        rgb, depth = room.render_frame(T_wc[i], K, views.width, views.height)
        images.append(effects.apply(rgb, params[i], rng))
        depths.append(depth)
    T_cw = torch.linalg.inv(torch.from_numpy(T_wc))
    K_t = torch.from_numpy(K)
    exact = augment_batch(torch.from_numpy(np.stack(images)), T_cw, K_t, torch.Generator(),
                          AugmentationConfig.none(), torch.from_numpy(np.stack(depths)),
                          None, stride)
    centre = torch.from_numpy(size / 2.0).float()
    coords = exact.coords_b3hw - centre.view(1, 3, 1, 1)
    return RoomViews(torch.from_numpy(np.stack(images)), coords.half(), K_t, T_cw, centre)


def _room_cache(out_dir: Path, seed: int, views: PretrainViews) -> Path:
    tag = hashlib.sha256(repr(views).encode()).hexdigest()[:10]
    return out_dir / 'rooms' / f'room_{seed}_{tag}.pt'


def load_rooms(config: PretrainConfig, stride: int) -> list[RoomViews]:
    """Render the config's rooms (or read them from the cache in ``out_dir/rooms``)."""
    rooms = []
    for k in range(config.rooms):
        seed = config.first_seed + k
        path = _room_cache(config.out_dir, seed, config.views)
        if path.exists():
            try:
                d = torch.load(path, weights_only=True)
                rooms.append(RoomViews(**d))
                continue
            except Exception as exc:  # a damaged cache file is re-rendered
                _LOG.warning('room cache %s unreadable (%s); rendering again', path, exc)
        t0 = time.monotonic()
        room = render_room(seed, config.views, stride)
        atomic_torch_save(path, asdict(room))
        rooms.append(room)
        _report(config, f'room {k + 1}/{config.rooms} (seed {seed}) rendered in '
                        f'{time.monotonic() - t0:.1f} s')
    return rooms


# ----------------------------------------------------------------------------- heads


class RoomHeads(nn.Module):
    """One regression MLP per room (the architecture of ``SceneCoordinateNet``'s head), run
    as batched matrix products: features (B, C, h, w) of images of rooms ``room_b`` (B,) ->
    coordinates (B, 3, h, w) in each room's frame minus its centre (metres)."""

    def __init__(self, rooms: int, channels: int, width: int) -> None:
        super().__init__()

        def layer(cin: int, cout: int, std: float | None = None) -> tuple[nn.Parameter,
                                                                          nn.Parameter]:
            bound = 1.0 / math.sqrt(cin)
            w = torch.empty(rooms, cin, cout).uniform_(-bound, bound)
            if std is not None:
                w.normal_(0.0, std)
            b = torch.zeros(rooms, 1, cout) if std is not None else \
                torch.empty(rooms, 1, cout).uniform_(-bound, bound)
            return nn.Parameter(w), nn.Parameter(b)

        self.w1, self.b1 = layer(channels, width)
        self.w2, self.b2 = layer(width, width)
        self.w3, self.b3 = layer(width, 3, std=1e-3)

    def forward(self, features_bchw: Tensor, room_b: Tensor) -> Tensor:
        B, C, h, w = features_bchw.shape
        x = features_bchw.float().flatten(2).transpose(1, 2)  # (B, hw, C)
        x = torch.relu(torch.baddbmm(self.b1[room_b], x, self.w1[room_b]))
        x = torch.relu(torch.baddbmm(self.b2[room_b], x, self.w2[room_b]))
        x = torch.baddbmm(self.b3[room_b], x, self.w3[room_b])  # (B, hw, 3)
        return x.transpose(1, 2).reshape(B, 3, h, w)


# ----------------------------------------------------------------------------- training


def _report(config: PretrainConfig, line: str) -> None:
    _LOG.info(line)
    if config.progress is not None:
        config.progress(line)


def _batch(rooms: list[RoomViews], pick_room: Tensor, pick_view: Tensor,
           config: PretrainConfig, generator: torch.Generator, stride: int
           ) -> tuple[Tensor, Tensor]:
    """Augmented windows (B, 3, ch, cw) in [0, 1] and their targets (B, 3, ch/s, cw/s)."""
    images, coords = [], []
    for r, v in zip(pick_room.tolist(), pick_view.tolist()):
        room = rooms[r]
        aug = augment_batch(room.images_vhw3[v:v + 1], room.T_cw_v44[v:v + 1], room.K_33,
                            generator, config.augmentation, None, None, stride)
        images.append(aug.images_b3hw)
        coords.append(room.coords_v3hw[v:v + 1].float())
    # Poses are not needed (the loss is in metres); each view keeps its room's camera.
    frame = AugmentedBatch(torch.cat(images), torch.cat(coords),
                           torch.stack([rooms[r].K_33 for r in pick_room.tolist()]),
                           torch.eye(4, dtype=torch.float64).expand(len(images), 4, 4))
    H, W = frame.images_b3hw.shape[-2:]
    crop = window_size((H, W), config.crop_fraction, stride)
    window = crop_batch(frame, crop, generator, stride)
    return window.images_b3hw, window.coords_b3hw


def pretrain(config: PretrainConfig) -> Path:
    """Run (or resume) pretraining; writes ``out_dir/encoder.pt`` and returns its path."""
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out / STATE_NAME)
    device = resolve_device(config.device)
    amp_dtype = resolve_amp_dtype(config.precision, device)
    with num_threads(config.threads):
        net = SceneCoordinateNet(config.net)
        state_path = out / STATE_NAME
        lineage = {}
        if config.init_encoder is not None and not state_path.exists():
            start = load_encoder(config.init_encoder)
            load_encoder_into(net, start)
            lineage = {'init_encoder': start.origin,
                       'init_encoder_steps': start.metadata.get('pretrain_steps', 0),
                       'init_encoder_minutes': start.metadata.get('pretrain_minutes', 0.0)}
            _report(config, f'starting from the encoder {lineage["init_encoder"]} '
                            f'({lineage["init_encoder_steps"]} steps)')
        rooms = load_rooms(config, net.stride)
        heads = RoomHeads(config.rooms, config.net.stem_widths[-1], config.net.head_width)
        encoder_params = list(net.encoder.parameters())
        optimizer = torch.optim.Adam([{'params': encoder_params},
                                      {'params': list(heads.parameters())}],
                                     lr=config.lr.lr)
        generator = torch.Generator().manual_seed(config.seed)
        step, elapsed = 0, 0.0
        if state_path.exists():
            state = torch.load(state_path, weights_only=True)
            lineage = dict(state.get('lineage', {}))
            net.load_state_dict(state['net'])
            heads.load_state_dict(state['heads'])
            optimizer.load_state_dict(state['optimizer'])
            generator.set_state(state['generator'])
            step, elapsed = int(state['step']), float(state['elapsed_s'])
            _report(config, f'resuming pretraining at step {step} ({elapsed / 60:.1f} min)')
        net = net.to(device).to(memory_format=torch.channels_last).train()
        heads = heads.to(device).train()
        # the optimizer's state follows its parameters' device on load_state_dict
        views = torch.tensor([len(r.images_vhw3) for r in rooms])
        losses: list[float] = []
        last_save = time.monotonic()

        budget = Budget(iterations=config.iterations, minutes=config.minutes)

        def progress_now() -> float:
            return budget.progress(step, elapsed)

        def save_state() -> None:
            atomic_torch_save(state_path, {'net': net.state_dict(), 'heads': heads.state_dict(),
                                      'optimizer': optimizer.state_dict(),
                                      'generator': generator.get_state(), 'step': step,
                                      'elapsed_s': elapsed, 'lineage': lineage})

        try:
            while progress_now() < 1.0:
                t0 = time.monotonic()
                lr = config.lr.at(step, progress_now())
                for group in optimizer.param_groups:
                    group['lr'] = lr
                pick_room = torch.randint(config.rooms, (config.batch_size,), generator=generator)
                pick_view = (torch.rand(config.batch_size, generator=generator)
                             * views[pick_room]).long()
                images, target = _batch(rooms, pick_room, pick_view, config, generator,
                                        net.stride)
                images = images.to(device).contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    features = net.features(images)
                pred = heads(features, pick_room.to(device))
                loss = coordinate_loss(pred, target.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                elapsed += time.monotonic() - t0
                losses.append(float(loss.detach()))
                if step % config.log_every == 0:
                    _report(config, f'step {step}, {elapsed / 60:.1f} min, lr {lr:.2e}, loss '
                                    f'{np.mean(losses[-config.log_every:]):.3f} m')
                    with open(out / 'log.csv', 'a') as log:
                        log.write(f'{step},{elapsed:.1f},{lr:.3e},'
                                  f'{np.mean(losses[-config.log_every:]):.4f}\n')
                if time.monotonic() - last_save > config.save_seconds:
                    save_state()
                    last_save = time.monotonic()
        except KeyboardInterrupt:
            save_state()  # SIGINT: keep every step done so far
            raise
        save_state()
        recent = float(np.mean(losses[-config.log_every:])) if losses else math.nan
        metadata = {'pretrain_steps': step, 'pretrain_minutes': round(elapsed / 60.0, 2),
                    'pretrain_final_loss_m': recent, **lineage,
                    **{f'recipe_{k}': v for k, v in _flat(config.recipe()).items()}}
        path = save_encoder(out / ENCODER_NAME, net.cpu(), metadata)
        _report(config, f'encoder written to {path} after {step} steps '
                        f'({elapsed / 60:.1f} min, loss {recent:.3f} m)')
        return path


def _flat(d: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f'{prefix}{k}_'))
        elif isinstance(v, (list, tuple)):
            out[f'{prefix}{k}'] = ','.join(str(x) for x in v)
        else:
            out[f'{prefix}{k}'] = v
    return out


__all__ = ['ENCODER_NAME', 'PretrainConfig', 'PretrainViews', 'RoomHeads', 'RoomViews',
           'load_rooms', 'pretrain', 'render_room']
