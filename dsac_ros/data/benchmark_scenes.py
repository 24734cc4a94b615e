"""Benchmark scenes: rooms by seed, a mapping run to train on and a test run along its own path.

The demo room (:mod:`dsac_ros.data.synthetic`) tests on a loop that interpolates its training
loops, which measures interpolation. A benchmark scene is shaped like a user's recording
instead, with the project's renderer (:class:`~dsac_ros.data.synthetic.SyntheticRoom`: exact
colour and depth for any pose):

* **Room by seed** (:func:`make_layout`): size 5-7 x 4.2-6 x 2.6-3.1 m (world x east, y north,
  z up, origin at a floor corner); furniture blocks placed by seed (shelves, cabinets, desks,
  sofas along the walls; pillars that occlude between the walls and the camera volume; low
  tables and boxes anywhere), none inside the camera volume (a box 1.1 m from the walls,
  camera heights 1.05-1.8 m); 3-5 posters on the walls, two of them identical prints in
  different places; surface materials drawn by seed from several texture styles
  (:mod:`dsac_ros.data.materials`), one wall material repeated on a second wall (another cut
  of it) and one material on every piece of a furniture group (wood: shelves, cabinets, desks,
  tables).
* **Training** (``seq-01``, ``seq-02``, ``TrainSplit.txt``): a mapping run of two hand-held
  walks round the room centre (:func:`~dsac_ros.data.camera_paths.handheld_loop`): an outer
  loop looking across the room and an inner loop, walked the other way, looking at the nearer
  walls; left-right sweeps, hand wobble and walking bob.
* **Test** (``seq-03``, ``TestSplit.txt``), by ``kind``:
  ``revisit`` (7-Scenes-like): another hand-held run over the same two loops, on its own path
  (about 12 cm off the training loops, other heights, the sweep shifted, the inner loop walked
  the other way): the nearest training view is typically 10-20 cm / 10-15 deg away;
  ``free``: a route through the camera volume (a spline through waypoints drawn by seed, as a
  robot or a walker takes), looking roughly where it goes, at its own heights, pitches and
  with roll up to ~12 deg: views closer to or further from the walls than any training view,
  typically 35-55 cm / 40-50 deg from the nearest training view.
* **Camera** (:class:`CameraEffects`): per-frame exposure drift (gain, gamma, white balance),
  sensor noise (read + shot) and optional slight blur, on training and test frames alike;
  depth stays exact (z-depth, metres, registered to colour).

A scene folder holds the 7-Scenes layout (320x240 by default), ``intrinsics.json`` and
``benchmark.json`` (the config, the layout, the materials and the coverage of the test views
by the training views, :mod:`dsac_ros.evaluation.coverage`). :data:`BENCHMARK_SUITE` names the
suite's scenes (``dsac_make_scene --benchmark NAME OUT``; ``docs/BENCHMARKS.md``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
import enum
import json
import logging
import math
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from dsac_ros.data.atomic import atomic_directory
from dsac_ros.data.camera_paths import (
    LoopPath,
    RoutePath,
    free_route,
    handheld_loop,
    smooth_noise,
)
from dsac_ros.data.materials import TextureStyle, crop_material, make_material
from dsac_ros.data.seven_scenes import write_frame, write_intrinsics_json
from dsac_ros.data.synthetic import TEXELS_PER_METRE, Block, SyntheticRoom
from dsac_ros.data.view_coverage import coverage_summary, nearest_training_views

LOGGER = logging.getLogger(__name__)

#: Camera volume: positions at least this far from the walls (m), heights within (m).
CAMERA_WALL_MARGIN_M = 1.1
CAMERA_HEIGHTS_M = (1.05, 1.8)


class PathKind(str, enum.Enum):
    """Kind of test path: revisit the mapped loops (7-Scenes-like) or go a free route."""

    REVISIT = 'revisit'
    FREE = 'free'


@dataclass(frozen=True)
class CameraEffects:
    """What a real camera adds, per frame, to every colour image (depth stays exact).

    gain_drift: exposure gain = exp(gain_drift * s(t)) with s a smooth signal in [-1, 1];
    gamma_drift: gamma = 1 + gamma_drift * s'(t); colour_drift: per-channel white-balance gain
    1 + colour_drift * s''(t); drift_cycles: periods of these drifts per sequence.
    read_noise_dn: Gaussian noise std in 8-bit levels; shot_noise_dn: signal-dependent
    variance per level (std = sqrt(read^2 + shot * level)); blur_sigma_px: largest Gaussian
    blur sigma (pixels), reached in the frames where a smooth signal peaks (0 = no blur).
    """

    gain_drift: float = 0.15
    gamma_drift: float = 0.06
    colour_drift: float = 0.02
    drift_cycles: float = 3.0
    read_noise_dn: float = 1.5
    shot_noise_dn: float = 0.05
    blur_sigma_px: float = 0.0

    def schedule(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, 6) per-frame parameters: gain, gamma, white balance r g b, blur sigma (px)."""
        out = np.empty((n, 6))
        out[:, 0] = np.exp(self.gain_drift * smooth_noise(rng, n, self.drift_cycles))
        out[:, 1] = 1.0 + self.gamma_drift * smooth_noise(rng, n, self.drift_cycles)
        for c in range(3):
            out[:, 2 + c] = 1.0 + self.colour_drift * smooth_noise(rng, n, self.drift_cycles)
        out[:, 5] = self.blur_sigma_px * np.maximum(smooth_noise(rng, n, 4.0), 0.0)
        return out

    def apply(self, rgb: np.ndarray, params: np.ndarray, rng: np.random.Generator
              ) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> the same image as the camera saw it with ``params`` (one
        row of :meth:`schedule`); noise drawn from ``rng``."""
        gain, gamma, wb, blur = params[0], params[1], params[2:5], params[5]
        x = rgb.astype(np.float32) / 255.0 * (gain * wb).astype(np.float32)
        x = np.power(np.clip(x, 0.0, 1.0), np.float32(gamma))
        if blur >= 0.2:
            x = cv2.GaussianBlur(x, (0, 0), float(blur))
        level = 255.0 * x
        std = np.sqrt(self.read_noise_dn ** 2 + self.shot_noise_dn * level)
        level = level + std * rng.standard_normal(level.shape, dtype=np.float32)
        return np.clip(level + 0.5, 0, 255).astype(np.uint8)


#: The noisier camera of the suite's noisy free-path scene.
NOISY_CAMERA = CameraEffects(gain_drift=0.3, gamma_drift=0.12, colour_drift=0.05,
                             read_noise_dn=4.0, shot_noise_dn=0.25, blur_sigma_px=0.9)


@dataclass(frozen=True)
class BenchmarkSceneConfig:
    """Everything that defines a benchmark scene; the same config gives the same bytes.

    name: label written to benchmark.json; seed: room layout, materials, paths and noise;
    kind: test path (see :class:`PathKind`); camera: pinhole fx, fy in pixels, principal
    point at the image centre; train_frames: split over the two mapping walks (the first
    gets the odd one); test_frames: the test run; effects: the camera's imperfections.
    """

    name: str = 'custom'
    seed: int = 0
    kind: PathKind = PathKind.REVISIT
    width: int = 320
    height: int = 240
    fx: float = 260.0
    fy: float = 260.0
    train_frames: int = 600
    test_frames: int = 200
    effects: CameraEffects = field(default_factory=CameraEffects)
    description: str = ''

    def __post_init__(self) -> None:
        object.__setattr__(self, 'kind', PathKind(self.kind))
        if self.width < 8 or self.height < 8:
            raise ValueError(f'image size {self.width}x{self.height} is too small')
        if self.train_frames < 2 or self.test_frames < 2:
            raise ValueError('need train_frames >= 2 (two walks) and test_frames >= 2')

    @property
    def K(self) -> np.ndarray:
        """(3, 3) float64 colour (= depth) intrinsics in pixels."""
        return np.array([[self.fx, 0.0, self.width / 2.0], [0.0, self.fy, self.height / 2.0],
                         [0.0, 0.0, 1.0]])

    def to_dict(self) -> dict:
        data = asdict(self)
        data['kind'] = self.kind.value
        return data


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Surface:
    """Material of one face: ``face`` index as :class:`SyntheticRoom` numbers them, ``style``,
    material ``seed`` (same style and seed = the same texture), crop ``offset`` (texels)."""

    face: int
    style: TextureStyle
    seed: int = 0
    offset: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class RoomLayout:
    """A benchmark room: size (m), blocks with a kind each ('shelf', 'poster', ...), the free
    camera box ((x0, y0), (x1, y1)) in metres and the surfaces' materials (faces not listed
    use the demo room's per-face default texture)."""

    room_size_m: tuple[float, float, float]
    blocks: tuple[Block, ...]
    kinds: tuple[str, ...]
    camera_box_xy: tuple[tuple[float, float], tuple[float, float]]
    surfaces: tuple[Surface, ...]

    def to_dict(self) -> dict:
        return {
            'room_size_m': list(self.room_size_m),
            'camera_box_xy': [list(c) for c in self.camera_box_xy],
            'camera_heights_m': list(CAMERA_HEIGHTS_M),
            'blocks': [{'kind': k, 'center': list(b.center), 'half_size': list(b.half_size),
                        'yaw_rad': b.yaw} for k, b in zip(self.kinds, self.blocks)],
            'surfaces': [{'face': s.face, 'style': s.style.value, 'seed': s.seed,
                          'offset': list(s.offset)} for s in self.surfaces],
        }


# kind: (width, depth, height) ranges in metres, where it stands, XY clearance from the camera
# box (m). Height None: floor to ceiling.
_FURNITURE = {
    'shelf': ((0.6, 1.2), (0.3, 0.45), (1.6, 2.2), 'wall', 0.35),
    'cabinet': ((0.6, 1.4), (0.4, 0.6), (0.6, 1.0), 'wall', 0.15),
    'desk': ((1.0, 1.6), (0.6, 0.8), (0.72, 0.78), 'wall', 0.15),
    'sofa': ((1.6, 2.2), (0.75, 0.9), (0.75, 0.9), 'wall', 0.15),
    'table': ((0.8, 1.2), (0.5, 0.8), (0.4, 0.5), 'floor', None),
    'box': ((0.3, 0.6), (0.3, 0.6), (0.3, 0.55), 'floor', None),
    'pillar': ((0.2, 0.4), (0.2, 0.4), None, 'band', 0.35),
}
_FURNITURE_WEIGHTS = {'shelf': 3, 'cabinet': 3, 'desk': 2, 'sofa': 1, 'table': 1, 'box': 2,
                      'pillar': 1}
_WOOD_KINDS = ('shelf', 'cabinet', 'desk', 'table')


def _footprint(center: np.ndarray, half: np.ndarray, yaw: float) -> np.ndarray:
    """(2, 2) XY axis-aligned bounds [[x0, y0], [x1, y1]] of a yawed box (conservative)."""
    c, s = abs(math.cos(yaw)), abs(math.sin(yaw))
    ext = np.array([c * half[0] + s * half[1], s * half[0] + c * half[1]])
    return np.stack([center[:2] - ext, center[:2] + ext])


def _boxes_overlap(a: np.ndarray, b: np.ndarray, gap: float) -> bool:
    """Axis-aligned boxes [[lo...], [hi...]] closer than ``gap`` (any dimension count)."""
    return bool(np.all(a[0] < b[1] + gap) and np.all(b[0] < a[1] + gap))


def _bounds3(block: Block) -> np.ndarray:
    fp = _footprint(np.array(block.center), np.array(block.half_size), block.yaw)
    z = [block.center[2] - block.half_size[2], block.center[2] + block.half_size[2]]
    return np.concatenate([fp, np.array(z)[:, None]], axis=1)


def _wall_pose(rng: np.random.Generator, room: np.ndarray, wall: int, width: float,
               depth: float, gap: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Centre (x, y) and (half x, half y) of a ``width`` x ``depth`` footprint against wall
    0 = west (x=0), 1 = east, 2 = south (y=0), 3 = north; None when the wall is too short."""
    along = room[1] if wall < 2 else room[0]
    if along < width + 0.2:
        return None
    t = rng.uniform(0.1 + width / 2, along - 0.1 - width / 2)
    off = gap + depth / 2
    if wall < 2:
        xy = np.array([off if wall == 0 else room[0] - off, t])
        return xy, np.array([depth / 2, width / 2])
    xy = np.array([t, off if wall == 2 else room[1] - off])
    return xy, np.array([width / 2, depth / 2])


def _place_furniture(rng: np.random.Generator, room: np.ndarray, box: np.ndarray
                     ) -> tuple[list[Block], list[str]]:
    kinds = list(_FURNITURE_WEIGHTS)
    weights = np.array([_FURNITURE_WEIGHTS[k] for k in kinds], np.float64)
    wanted = ['pillar'] * int(rng.integers(1, 3)) + [str(k) for k in (
        rng.choice(kinds, int(rng.integers(6, 10)), p=weights / weights.sum()))]
    blocks: list[Block] = []
    names: list[str] = []
    for kind in wanted:
        (w0, w1), (d0, d1), h_range, where, clearance = _FURNITURE[kind]
        for _ in range(60):
            width, depth = rng.uniform(w0, w1), rng.uniform(d0, d1)
            height = room[2] if h_range is None else rng.uniform(*h_range)
            yaw = 0.0
            if where == 'wall':
                placed = _wall_pose(rng, room, int(rng.integers(0, 4)), width, depth,
                                    rng.uniform(0.02, 0.05))
                if placed is None:
                    continue
                xy, half_xy = placed
                yaw = rng.uniform(-0.1, 0.1)
            else:
                half_xy = np.array([width / 2, depth / 2])
                xy = rng.uniform([0.3, 0.3], room[:2] - 0.3)
                yaw = rng.uniform(-math.pi / 4, math.pi / 4)
            half = np.array([half_xy[0], half_xy[1], height / 2])
            fp = _footprint(xy, half, yaw)
            if np.any(fp[0] < 0.01) or np.any(fp[1] > room[:2] - 0.01):
                continue
            if clearance is not None and _boxes_overlap(fp, box, clearance):
                continue
            bounds = np.concatenate([fp, [[0.0], [height]]], axis=1)
            if any(_boxes_overlap(bounds, _bounds3(b), 0.05) for b in blocks):
                continue
            blocks.append(Block((float(xy[0]), float(xy[1]), height / 2),
                                tuple(float(h) for h in half), float(yaw)))
            names.append(kind)
            break
    return blocks, names


def _place_posters(rng: np.random.Generator, room: np.ndarray, blocks: list[Block]
                   ) -> list[tuple[Block, int]]:
    """3-5 posters (thin blocks on the walls) as (block, wall); the first two are the same
    size (they carry the same print) and hang on different walls."""
    posters: list[tuple[Block, int]] = []
    twin_size = (rng.uniform(0.45, 0.9), rng.uniform(0.35, 0.7))
    for k in range(int(rng.integers(3, 6))):
        for _ in range(80):
            width, height = twin_size if k < 2 else (rng.uniform(0.4, 1.0),
                                                     rng.uniform(0.3, 0.8))
            wall = int(rng.integers(0, 4))
            if k == 1 and wall == posters[0][1]:
                continue
            placed = _wall_pose(rng, room, wall, width, 0.02, 0.002)
            if placed is None:
                continue
            xy, half_xy = placed
            zc = rng.uniform(1.1 + height / 2, min(2.1, room[2] - 0.15 - height / 2))
            block = Block((float(xy[0]), float(xy[1]), float(zc)),
                          (float(half_xy[0]), float(half_xy[1]), height / 2))
            bounds = _bounds3(block)
            if any(_boxes_overlap(bounds, _bounds3(b), 0.05)
                   for b in blocks + [p for p, _ in posters]):
                continue
            posters.append((block, wall))
            break
        else:
            if k < 2:  # the twin must exist: start the pair again elsewhere
                return _place_posters(rng, room, blocks)
    return posters


def _pick(rng: np.random.Generator, styles: tuple[TextureStyle, ...], n: int = 1,
          p: tuple[float, ...] | None = None) -> list[TextureStyle]:
    """``n`` styles drawn with probabilities ``p`` (uniform when None)."""
    return [styles[int(i)] for i in rng.choice(len(styles), n, p=p)]


def make_layout(seed: int) -> RoomLayout:
    """The room of ``seed``: size, furniture, posters and materials (see the module
    docstring)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 8101]))
    room = np.array([rng.uniform(5.0, 7.0), rng.uniform(4.2, 6.0), rng.uniform(2.6, 3.1)])
    m = CAMERA_WALL_MARGIN_M
    box = np.array([[m, m], [room[0] - m, room[1] - m]])
    blocks, kinds = _place_furniture(rng, room, box)
    posters = _place_posters(rng, room, blocks)

    surfaces: list[Surface] = []

    def material_seed() -> int:
        return int(rng.integers(0, 2 ** 31))

    # Walls (faces 0..3), floor (4), ceiling (5): styles by seed, one wall material repeated.
    wall_styles = _pick(rng, (TextureStyle.DEFAULT, TextureStyle.WALLPAPER, TextureStyle.PAINT,
                              TextureStyle.TILES, TextureStyle.FABRIC), 4,
                        (0.35, 0.25, 0.15, 0.15, 0.10))
    first, second = (int(i) for i in rng.choice(4, 2, replace=False))
    if wall_styles[first] is TextureStyle.DEFAULT:
        wall_styles[first] = TextureStyle.WALLPAPER
    wall_seeds = [material_seed() for _ in range(4)]
    wall_styles[second], wall_seeds[second] = wall_styles[first], wall_seeds[first]
    periodic = (TextureStyle.TILES, TextureStyle.WALLPAPER)
    for face in range(4):  # periodic patterns on two walls at most
        if face not in (first, second) and wall_styles[face] in periodic and sum(
                style in periodic for style in wall_styles) > 2:
            wall_styles[face] = TextureStyle.DEFAULT
    half = int(max(room) * TEXELS_PER_METRE) // 2  # the repeat: same material, another cut
    for face in range(4):
        if wall_styles[face] is not TextureStyle.DEFAULT:
            offset = (half, half) if face == second else (0, 0)
            surfaces.append(Surface(face, wall_styles[face], wall_seeds[face], offset))
    (floor,) = _pick(rng, (TextureStyle.WOOD, TextureStyle.TILES, TextureStyle.FABRIC,
                           TextureStyle.DEFAULT))
    if floor is not TextureStyle.DEFAULT:
        surfaces.append(Surface(4, floor, material_seed()))
    surfaces.append(Surface(5, TextureStyle.PAINT, material_seed()))
    # Furniture: one material per group, the same on every face of every block of the group.
    groups = {'wood': (_pick(rng, (TextureStyle.WOOD, TextureStyle.DEFAULT), 1, (2 / 3, 1 / 3))[0],
                       material_seed()),
              'sofa': (TextureStyle.FABRIC, material_seed()),
              'pillar': (_pick(rng, (TextureStyle.PAINT, TextureStyle.TILES,
                                     TextureStyle.DEFAULT))[0], material_seed())}
    for k, kind in enumerate(kinds):
        group = 'wood' if kind in _WOOD_KINDS else kind
        if group in groups and groups[group][0] is not TextureStyle.DEFAULT:
            style, mseed = groups[group]  # one material, every piece its own cut
            cut = (37 * k, 53 * k)
            surfaces.extend(Surface(6 + 6 * k + f, style, mseed, cut) for f in range(6))
    # Posters: the front face (towards the room) carries the print; the twins share one.
    twin_seed = material_seed()
    for j, (_, wall) in enumerate(posters):
        front = (1, 0, 3, 2)[wall]  # +x on the west wall, -x east, +y south, -y north
        face = 6 + 6 * (len(blocks) + j) + front
        surfaces.append(Surface(face, TextureStyle.POSTER, twin_seed if j < 2
                                else material_seed()))
    return RoomLayout(room_size_m=tuple(float(r) for r in room),
                      blocks=tuple(blocks) + tuple(b for b, _ in posters),
                      kinds=tuple(kinds) + ('poster',) * len(posters),
                      camera_box_xy=((m, m), (float(room[0] - m), float(room[1] - m))),
                      surfaces=tuple(surfaces))


class LayoutTextures:
    """``SyntheticRoom`` texture function of a layout: crops of shared materials (posters:
    the whole print, resized to the face), None (the per-face default) elsewhere."""

    def __init__(self, layout: RoomLayout) -> None:
        self._surfaces = {s.face: s for s in layout.surfaces}
        self._size = int(math.ceil(max(layout.room_size_m) * TEXELS_PER_METRE)) + 8
        self._cache: dict[tuple, np.ndarray] = {}

    def __call__(self, face: int, height: int, width: int) -> np.ndarray | None:
        surface = self._surfaces.get(face)
        if surface is None or surface.style is TextureStyle.DEFAULT:
            return None
        vertical = (face % 6) // 2 < 2  # x or y faces: rows count upwards
        if surface.style is TextureStyle.POSTER:
            key = (surface.style, surface.seed, height, width)
            if key not in self._cache:
                print_ = make_material(surface.style, surface.seed, max(height, width))
                self._cache[key] = cv2.resize(print_, (width, height),
                                              interpolation=cv2.INTER_AREA)
            material = self._cache[key]
            return np.ascontiguousarray(material[::-1] if vertical else material)
        key = (surface.style, surface.seed)
        if key not in self._cache:
            self._cache[key] = make_material(surface.style, surface.seed, self._size)
        return crop_material(self._cache[key], height, width, surface.offset, vertical)


def build_room(layout: RoomLayout, seed: int) -> SyntheticRoom:
    """The renderer of a layout (``seed`` draws the per-face default textures)."""
    return SyntheticRoom(seed, layout.room_size_m, list(layout.blocks),
                         texture_fn=LayoutTextures(layout))


# ----------------------------------------------------------------------------- paths


def _mapping_loops(rng: np.random.Generator, layout: RoomLayout) -> tuple[LoopPath, LoopPath]:
    (x0, y0), (x1, y1) = layout.camera_box_xy
    centre, half = ((x0 + x1) / 2, (y0 + y1) / 2), ((x1 - x0) / 2, (y1 - y0) / 2)
    outer = LoopPath(centre, (0.9 * half[0], 0.9 * half[1]), height_m=rng.uniform(1.45, 1.55),
                     start_deg=rng.uniform(0, 360), turns=1.0, inward=True, sweep_deg=25.0,
                     sweep_cycles=int(rng.integers(3, 6)), sweep_phase_deg=rng.uniform(0, 360),
                     pitch_deg=-10.0)
    inner = LoopPath(centre, (0.45 * half[0], 0.45 * half[1]),
                     height_m=rng.uniform(1.25, 1.35), start_deg=rng.uniform(0, 360),
                     turns=-1.0, inward=False, sweep_deg=30.0,
                     sweep_cycles=int(rng.integers(3, 6)), sweep_phase_deg=rng.uniform(0, 360),
                     pitch_deg=-6.0)
    return outer, inner


def _revisit(loop: LoopPath, rng: np.random.Generator, offset_m: float) -> LoopPath:
    """The same kind of walk on its own path: ``offset_m`` off the loop (radially), another
    height, start, sweep phase and pitch; inner loops are walked the other way."""
    sign = -1.0 if loop.inward else 1.0  # outer loop: step inwards; inner: outwards
    radii = (loop.radii_xy[0] + sign * offset_m, loop.radii_xy[1] + sign * offset_m)
    return replace(loop, radii_xy=radii,
                   height_m=loop.height_m + rng.choice([-1.0, 1.0]) * rng.uniform(0.06, 0.1),
                   start_deg=rng.uniform(0, 360), turns=abs(loop.turns),
                   sweep_phase_deg=loop.sweep_phase_deg + rng.choice([-1.0, 1.0]) * 35.0,
                   pitch_deg=loop.pitch_deg + rng.uniform(-4.0, 4.0))


def _free_route(rng: np.random.Generator, layout: RoomLayout) -> RoutePath:
    (x0, y0), (x1, y1) = layout.camera_box_xy
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    half = np.array([(x1 - x0) / 2, (y1 - y0) / 2]) - 0.15
    sectors = rng.permutation(6)
    angles = 2 * math.pi * (sectors + rng.uniform(0.2, 0.8, 6)) / 6
    radius = rng.uniform(0.35, 1.0, 6)
    points = centre + (radius[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1) * half)
    return RoutePath(tuple(map(tuple, points)), heights_m=(CAMERA_HEIGHTS_M[0] + 0.1,
                                                           CAMERA_HEIGHTS_M[1] - 0.1),
                     pan_deg=30.0, roll_deg=12.0,
                     box_xy=((x0 + 0.05, y0 + 0.05), (x1 - 0.05, y1 - 0.05)))


def benchmark_trajectories(config: BenchmarkSceneConfig, layout: RoomLayout
                           ) -> tuple[list[np.ndarray], np.ndarray]:
    """Training walks (list of two (N_k, 4, 4)) and the test run (N_test, 4, 4), T_wc."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 8102]))
    outer, inner = _mapping_loops(rng, layout)
    n_outer = (config.train_frames + 1) // 2
    train = [handheld_loop(outer, n_outer, rng),
             handheld_loop(inner, config.train_frames - n_outer, rng)]
    n = config.test_frames
    if config.kind is PathKind.REVISIT:
        half = (n + 1) // 2
        test = np.concatenate([handheld_loop(_revisit(outer, rng, 0.12), half, rng),
                               handheld_loop(_revisit(inner, rng, 0.12), n - half, rng)])
    else:
        test = free_route(_free_route(rng, layout), n, rng)
    return train, test


# ----------------------------------------------------------------------------- writing


def generate_benchmark_scene(out_dir: str | Path, config: BenchmarkSceneConfig,
                             progress: Callable[[int], None] | None = None) -> Path:
    """Render a benchmark scene into ``out_dir`` in the 7-Scenes layout.

    Writes ``seq-01``, ``seq-02`` (training walks, ``TrainSplit.txt``), ``seq-03`` (test run,
    ``TestSplit.txt``), ``intrinsics.json`` and ``benchmark.json``. The folder appears
    complete or not at all; an existing non-empty ``out_dir`` is an error. ``progress(n)``
    after every n frames. Returns the scene root.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f'output folder {out} exists and is not empty')
    layout = make_layout(config.seed)
    room = build_room(layout, config.seed)
    train, test = benchmark_trajectories(config, layout)
    for poses in train + [test]:
        for T_wc in poses:
            if not room.inside_free_space(T_wc[:3, 3], margin=0.2):
                raise ValueError(f'seed {config.seed}: a camera at {T_wc[:3, 3]} is not in '
                                 'free space')
    coverage = coverage_summary(nearest_training_views(test, np.concatenate(train)))
    K = config.K
    with atomic_directory(out) as tmp:
        for s, poses in enumerate(train + [test]):
            seq_dir = tmp / f'seq-{s + 1:02d}'
            seq_dir.mkdir()
            rng = np.random.default_rng(np.random.SeedSequence([config.seed, 8103, s]))
            params = config.effects.schedule(rng, len(poses))
            for i, T_wc in enumerate(poses):
                rgb, depth = room.render_frame(T_wc, K, config.width, config.height)
                write_frame(seq_dir, i, config.effects.apply(rgb, params[i], rng), depth, T_wc)
                if progress is not None:
                    progress(1)
        (tmp / 'TrainSplit.txt').write_text('sequence1\nsequence2\n')
        (tmp / 'TestSplit.txt').write_text('sequence3\n')
        write_intrinsics_json(tmp / 'intrinsics.json', K, config.width, config.height)
        description = {'config': config.to_dict(), 'layout': layout.to_dict(),
                       'coverage': coverage}
        (tmp / 'benchmark.json').write_text(json.dumps(description, indent=1) + '\n')
    LOGGER.info('wrote benchmark scene %s to %s: test views %.0f cm / %.0f deg (median) from '
                'the nearest training view', config.name, out,
                100 * coverage['nearest_distance_m']['median'],
                coverage['nearest_angle_deg']['median'])
    return out


# ----------------------------------------------------------------------------- the suite

#: The benchmark suite (docs/BENCHMARKS.md): name -> config. Seeds are fixed; scenes are
#: rendered on demand (``dsac_make_scene --benchmark NAME OUT``), never committed.
BENCHMARK_SUITE: dict[str, BenchmarkSceneConfig] = {
    'revisit_a': BenchmarkSceneConfig(
        name='revisit_a', seed=11, kind=PathKind.REVISIT,
        description='7-Scenes-like revisit of the mapped loops, mild camera drift and noise'),
    'revisit_b': BenchmarkSceneConfig(
        name='revisit_b', seed=12, kind=PathKind.REVISIT,
        description='another room, revisit, mild camera drift and noise'),
    'free_a': BenchmarkSceneConfig(
        name='free_a', seed=25, kind=PathKind.FREE,
        description='free route through the room (robot-like), mild camera drift and noise'),
    'free_noisy': BenchmarkSceneConfig(
        name='free_noisy', seed=2, kind=PathKind.FREE, effects=NOISY_CAMERA,
        description='free route, a noisier camera: strong exposure drift, noise, slight blur'),
}


def benchmark_config(name: str, **overrides) -> BenchmarkSceneConfig:
    """The suite's config called ``name`` with fields replaced (e.g. fewer frames)."""
    if name not in BENCHMARK_SUITE:
        raise ValueError(f'unknown benchmark scene {name!r}; known: '
                         f'{", ".join(BENCHMARK_SUITE)}')
    return replace(BENCHMARK_SUITE[name], **overrides)


__all__ = ['BENCHMARK_SUITE', 'NOISY_CAMERA', 'BenchmarkSceneConfig', 'CameraEffects',
           'LayoutTextures', 'PathKind', 'RoomLayout', 'Surface', 'benchmark_config',
           'benchmark_trajectories', 'build_room', 'generate_benchmark_scene', 'make_layout']
