"""Synthetic textured indoor scenes with exact depth and poses, written in the 7-Scenes layout.

The room is an axis-aligned box (default 6 x 5 x 3 m, world frame: x east, y north, z up,
origin at a floor corner) holding a few furniture blocks (boxes with a yaw about z). Every
surface carries its own procedural texture (multi-scale colour value noise plus random shapes,
lines and glyphs, a distinct hue per surface), so small image patches are locally distinctive,
which is what a scene-coordinate CNN needs. Rendering is analytic ray casting in numpy: one ray
per pixel centre, ray/box slab tests, texture lookup from surface coordinates through one
texture atlas sampled bilinearly with ``cv2.remap``, Lambertian shading from a fixed point
light plus ambient (a function of the world point only, so it is identical across frames).

Depth is z-depth in metres (distance along the camera's optical axis), as in 7-Scenes; colour
and depth share one camera (depth registered to colour).

Trajectories: ``num_loops`` training loops (one 7-Scenes sequence each) circle the room centre
at different heights and look across the room with different yaw offsets and pitches, with a
small smooth wobble. The test sequence is another loop whose parameters move smoothly between
those of neighbouring training loops (an interpolation of the training coverage, never a copy
of a training frame), with its own wobble, as 7-Scenes test sequences revisit the same space.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import json
import logging
import math
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from dsac_ros.data.atomic import atomic_directory
from dsac_ros.data.seven_scenes import write_frame, write_intrinsics_json

LOGGER = logging.getLogger(__name__)

TEXELS_PER_METRE = 128.0


@dataclass(frozen=True)
class SyntheticSceneConfig:
    """Everything that defines a synthetic scene; the same config gives the same bytes.

    Camera: pinhole fx, fy, cx, cy in pixels for a ``width`` x ``height`` image. Trajectory
    tuples hold one value per training loop (heights in metres, yaw offsets in degrees of the
    viewing direction relative to looking through the room centre, look-at heights in metres).
    """

    seed: int = 0
    width: int = 320
    height: int = 240
    fx: float = 260.0
    fy: float = 260.0
    cx: float | None = None  # None -> width / 2
    cy: float | None = None  # None -> height / 2
    train_frames: int = 600
    test_frames: int = 200
    room_size_m: tuple[float, float, float] = (6.0, 5.0, 3.0)
    loop_heights_m: tuple[float, ...] = (1.25, 1.5, 1.75)
    look_yaw_offsets_deg: tuple[float, ...] = (-12.0, 0.0, 12.0)
    look_heights_m: tuple[float, ...] = (1.0, 1.3, 1.6)
    loop_radius_m: tuple[float, float] = (1.3, 1.0)
    look_distance_m: float = 1.2
    wobble_m: float = 0.03
    wobble_deg: float = 1.5
    test_spread: float = 0.5  # test loop moves within +- this many loop indices of the middle

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8:
            raise ValueError(f'image size {self.width}x{self.height} is too small')
        if self.train_frames < 1 or self.test_frames < 1:
            raise ValueError('train_frames and test_frames must be >= 1')
        n = len(self.loop_heights_m)
        if n < 1 or len(self.look_yaw_offsets_deg) != n or len(self.look_heights_m) != n:
            raise ValueError('loop_heights_m, look_yaw_offsets_deg and look_heights_m must have '
                             'the same non-zero length')
        if self.train_frames < n:
            raise ValueError(f'train_frames={self.train_frames} < number of loops {n}')

    @property
    def K(self) -> np.ndarray:
        """(3, 3) float64 colour (= depth) intrinsics in pixels."""
        cx = self.width / 2.0 if self.cx is None else self.cx
        cy = self.height / 2.0 if self.cy is None else self.cy
        return np.array([[self.fx, 0.0, cx], [0.0, self.fy, cy], [0.0, 0.0, 1.0]])


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Block:
    """An oriented box: centre (x, y, z) in metres (world), half sizes, yaw about +z (rad)."""

    center: tuple[float, float, float]
    half_size: tuple[float, float, float]
    yaw: float = 0.0

    @property
    def R(self) -> np.ndarray:
        """(3, 3) rotation block-to-world."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _default_blocks(room: tuple[float, float, float]) -> list[Block]:
    """Furniture kept out of the camera band around the room centre (cameras never collide)."""
    sx, sy, _ = room
    return [
        Block((0.45, 0.9 * sy / 2, 0.45), (0.35, 0.6, 0.45)),            # low cabinet, west
        Block((sx - 0.5, 0.8, 0.9), (0.3, 0.45, 0.9), 0.25),             # tall shelf, SE
        Block((sx / 2, sy / 2, 0.25), (0.45, 0.3, 0.25), 0.4),           # coffee table, centre
        Block((1.4, sy - 0.45, 0.5), (0.6, 0.3, 0.5)),                   # desk, north
        Block((sx - 0.9, sy - 0.6, 0.35), (0.3, 0.3, 0.35), -0.5),       # cube, NE
        Block((1.6, 0.4, 1.3), (0.12, 0.12, 1.3)),                       # pillar, south
        Block((sx - 0.25, sy / 2 + 0.6, 1.6), (0.05, 0.5, 0.35)),        # picture frame, east
    ]


@dataclass
class _Face:
    """One textured rectangle. ``axis``/``sign`` give the outward (visible-side) normal in the
    owner's local frame; ``u_axis``/``v_axis`` index the local coordinates used as texture
    coordinates, offset by ``origin_uv`` (metres)."""

    axis: int
    sign: float
    u_axis: int
    v_axis: int
    origin_uv: tuple[float, float]
    size_uv: tuple[float, float]
    atlas_row: int = 0
    atlas_col: int = 0


def _faces_of_box(lo: np.ndarray, hi: np.ndarray, inward: bool) -> list[_Face]:
    """Six faces of the box [lo, hi] (local frame), index = 2 * axis + (0 for -, 1 for +)."""
    faces = []
    for axis in range(3):
        u_axis, v_axis = [a for a in range(3) if a != axis]
        for side in (0, 1):
            sign = (1.0 if side == 1 else -1.0) * (-1.0 if inward else 1.0)
            faces.append(_Face(axis, sign, u_axis, v_axis, (lo[u_axis], lo[v_axis]),
                               (hi[u_axis] - lo[u_axis], hi[v_axis] - lo[v_axis])))
    return faces


# ----------------------------------------------------------------------------- textures


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float, channels: int
                 ) -> np.ndarray:
    """(h, w, channels) float32 smooth noise in [0, 1] with feature size ~``cell`` texels."""
    gh, gw = max(2, int(math.ceil(h / cell)) + 2), max(2, int(math.ceil(w / cell)) + 2)
    grid = rng.random((gh, gw, channels), dtype=np.float32)
    big = cv2.resize(grid, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
    big = big.reshape(big.shape[0], big.shape[1], channels)
    return np.clip(big[:h, :w], 0.0, 1.0)


def _make_texture(rng: np.random.Generator, h: int, w: int, hue: float) -> np.ndarray:
    """(h, w, 3) uint8 RGB texture: colour noise over several scales plus random decorations.

    The base hue (degrees, OpenCV scale 0..180) differs per surface; the finest noise octave
    and the drawn shapes give detail at the 1-5 cm scale (a few pixels at 2-4 m, 320x240).
    """
    octaves = [(96.0, 1.0), (40.0, 0.8), (16.0, 0.6), (7.0, 0.45), (3.0, 0.3)]
    acc = np.zeros((h, w, 3), np.float32)
    total = 0.0
    for cell, amp in octaves:
        acc += amp * _value_noise(rng, h, w, cell, 3)
        total += amp
    acc /= total
    # Stretch contrast: sums of noise cluster around 0.5.
    acc = np.clip((acc - 0.5) * 2.6 + 0.5, 0.0, 1.0)
    hsv = np.empty((h, w, 3), np.float32)
    hsv[..., 0] = np.mod(hue + 50.0 * (acc[..., 0] - 0.5), 180.0)
    hsv[..., 1] = 60.0 + 180.0 * acc[..., 1]
    hsv[..., 2] = 40.0 + 210.0 * acc[..., 2]
    tex = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)

    area_m2 = (h / TEXELS_PER_METRE) * (w / TEXELS_PER_METRE)
    n_shapes = int(60 * area_m2) + 8
    kinds = rng.integers(0, 5, n_shapes)
    for kind in kinds:
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(rng.integers(3, 28))
        thick = int(rng.integers(1, 4))
        if kind == 0:
            cv2.circle(tex, (x, y), size, color, -1 if rng.random() < 0.5 else thick, cv2.LINE_AA)
        elif kind == 1:
            x2, y2 = x + int(rng.integers(4, 40)), y + int(rng.integers(4, 40))
            cv2.rectangle(tex, (x, y), (x2, y2), color, -1 if rng.random() < 0.5 else thick)
        elif kind == 2:
            ang = rng.uniform(0, math.pi)
            length = rng.uniform(10, 60)
            p2 = (int(x + length * math.cos(ang)), int(y + length * math.sin(ang)))
            cv2.line(tex, (x, y), p2, color, thick, cv2.LINE_AA)
        elif kind == 3:
            pts = (np.array([x, y]) + rng.integers(-25, 26, (int(rng.integers(3, 6)), 2)))
            cv2.fillPoly(tex, [pts.astype(np.int32)], color, cv2.LINE_AA)
        else:
            text = ''.join(chr(c) for c in rng.integers(65, 91, int(rng.integers(1, 4))))
            cv2.putText(tex, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, rng.uniform(0.3, 0.9),
                        color, thick, cv2.LINE_AA)
    # Mild prefilter: limits aliasing when a texel is smaller than a pixel.
    return cv2.GaussianBlur(tex, (0, 0), 0.6)


# ----------------------------------------------------------------------------- the room


class SyntheticRoom:
    """A textured box room with furniture; renders exact colour and depth for any pose.

    Deterministic by ``seed``: textures and the layout are built once at construction.
    ``texture_fn(face_index, height_texels, width_texels)`` (optional) supplies the (h, w, 3)
    uint8 texture of a face, or None for the default one; faces are numbered room first
    (0..5), then 6 per block in ``blocks`` order, ``2 * axis + (1 for the + side)`` within an
    owner (texture rows follow the face's second local axis, columns its first).
    """

    def __init__(self, seed: int = 0, room_size_m: tuple[float, float, float] = (6.0, 5.0, 3.0),
                 blocks: list[Block] | None = None,
                 texture_fn: Callable[[int, int, int], np.ndarray | None] | None = None) -> None:
        self.seed = int(seed)
        self._texture_fn = texture_fn
        self.room_size_m = tuple(float(s) for s in room_size_m)
        self.blocks = list(_default_blocks(self.room_size_m) if blocks is None else blocks)
        self.light_world = np.array([self.room_size_m[0] * 0.4, self.room_size_m[1] * 0.6,
                                     self.room_size_m[2] - 0.2])
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 7001]))
        room_lo = np.zeros(3)
        room_hi = np.array(self.room_size_m)
        # owners: 0 = room interior, 1 + k = block k (local frame, centred).
        self._faces: list[list[_Face]] = [_faces_of_box(room_lo, room_hi, inward=True)]
        for b in self.blocks:
            hs = np.array(b.half_size)
            self._faces.append(_faces_of_box(-hs, hs, inward=False))
        self._build_atlas(rng)
        self._ray_cache: dict[tuple, np.ndarray] = {}

    def _build_atlas(self, rng: np.random.Generator) -> None:
        """Pack every face's texture into one atlas (shelf packing), 2-texel gutters."""
        flat = [f for owner in self._faces for f in owner]
        sizes = [(max(4, int(round(f.size_uv[1] * TEXELS_PER_METRE))),
                  max(4, int(round(f.size_uv[0] * TEXELS_PER_METRE)))) for f in flat]
        atlas_w = 2048
        row = col = shelf_h = 0
        pad = 2
        for f, (h, w) in zip(flat, sizes):
            if col + w + pad > atlas_w:
                row, col, shelf_h = row + shelf_h + pad, 0, 0
            f.atlas_row, f.atlas_col = row + pad, col + pad
            col += w + pad
            shelf_h = max(shelf_h, h + pad)
        atlas = np.zeros((row + shelf_h + 2 * pad, atlas_w, 3), np.uint8)
        hues = rng.permutation(np.linspace(0.0, 180.0, len(flat), endpoint=False))
        for i, (f, (h, w), hue) in enumerate(zip(flat, sizes, hues)):
            tex = None if self._texture_fn is None else self._texture_fn(i, h, w)
            if tex is None:
                tex = _make_texture(rng, h, w, float(hue))
            atlas[f.atlas_row:f.atlas_row + h, f.atlas_col:f.atlas_col + w] = tex
            f.size_texels = (h, w)  # type: ignore[attr-defined]
        self.atlas = atlas
        n_owner = [len(o) for o in self._faces]
        self._face_offset = np.concatenate([[0], np.cumsum(n_owner)]).astype(np.int64)
        # Per global face index: atlas origin, texel size, axes, origin in uv.
        self._f_row = np.array([f.atlas_row for f in flat], np.float32)
        self._f_col = np.array([f.atlas_col for f in flat], np.float32)
        self._f_h = np.array([f.size_texels[0] for f in flat], np.float32)
        self._f_w = np.array([f.size_texels[1] for f in flat], np.float32)
        self._f_uax = np.array([f.u_axis for f in flat])
        self._f_vax = np.array([f.v_axis for f in flat])
        self._f_u0 = np.array([f.origin_uv[0] for f in flat], np.float32)
        self._f_v0 = np.array([f.origin_uv[1] for f in flat], np.float32)

    def _rays_cam(self, K: np.ndarray, width: int, height: int) -> np.ndarray:
        """(H*W, 3) ray directions in the camera frame with z = 1 (t along a ray = z-depth)."""
        key = (tuple(np.asarray(K, np.float64).ravel().tolist()), width, height)
        rays = self._ray_cache.get(key)
        if rays is None:
            u, v = np.meshgrid(np.arange(width, dtype=np.float64),
                               np.arange(height, dtype=np.float64))
            pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
            rays = pix @ np.linalg.inv(K).T
            self._ray_cache = {key: rays}
        return rays

    def inside_free_space(self, point_world: np.ndarray, margin: float = 0.1) -> bool:
        """True when the point is inside the room and outside every block by ``margin`` m."""
        p = np.asarray(point_world, np.float64)
        if np.any(p < margin) or np.any(p > np.array(self.room_size_m) - margin):
            return False
        for b in self.blocks:
            local = b.R.T @ (p - np.array(b.center))
            if np.all(np.abs(local) < np.array(b.half_size) + margin):
                return False
        return True

    @staticmethod
    def _block_rays(block: Block, T_cw: np.ndarray, K: np.ndarray, width: int, height: int
                    ) -> np.ndarray | None:
        """Flat indices of the pixels inside the image rectangle bounding the block's
        projection (empty when it is out of view); None (all rays) when a corner lies behind
        the camera, where the projection does not bound anything."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        corners = np.array(block.center) + (signs * np.array(block.half_size)) @ block.R.T
        cam = corners @ T_cw[:3, :3].T + T_cw[:3, 3]
        if np.any(cam[:, 2] < 1e-3):
            return None
        pix = cam @ np.asarray(K, np.float64).T
        uv = pix[:, :2] / pix[:, 2:3]
        u0, v0 = np.maximum(np.floor(uv.min(axis=0)) - 1, 0).astype(int)
        u1 = int(min(np.ceil(uv[:, 0].max()) + 1, width - 1))
        v1 = int(min(np.ceil(uv[:, 1].max()) + 1, height - 1))
        if u0 > u1 or v0 > v1:
            return np.empty(0, np.int64)
        return (np.arange(v0, v1 + 1)[:, None] * width + np.arange(u0, u1 + 1)).ravel()

    def render_frame(self, T_wc: np.ndarray, K: np.ndarray, width: int, height: int
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Render one view.

        Args:
            T_wc: (4, 4) camera-to-world pose (OpenCV camera axes).
            K: (3, 3) intrinsics in pixels.
            width, height: image size in pixels.
        Returns:
            rgb (H, W, 3) uint8 and depth_m (H, W) float32 z-depth in metres (NaN where a ray
            hits nothing, which cannot happen from inside the closed room).
        """
        T_wc = np.asarray(T_wc, np.float64)
        R, origin = T_wc[:3, :3], T_wc[:3, 3]
        dirs = self._rays_cam(K, width, height) @ R.T  # (P, 3) world, t = z-depth
        n = dirs.shape[0]
        with np.errstate(divide='ignore', invalid='ignore'):
            # Room interior: exit distance of the ray from the box [0, size].
            inv = 1.0 / np.where(np.abs(dirs) < 1e-12, 1e-12, dirs)
            hi = np.array(self.room_size_m)
            t_axes = np.where(dirs > 0, (hi - origin) * inv, (0.0 - origin) * inv)  # (P, 3)
            axis = np.argmin(t_axes, axis=1)
            best_t = t_axes[np.arange(n), axis]
            # Inward-facing room faces: local index 2*axis + (1 if the + wall).
            best_face = 2 * axis + (dirs[np.arange(n), axis] > 0).astype(np.int64)
            best_owner = np.zeros(n, np.int64)
            T_cw = np.linalg.inv(T_wc)
            for k, b in enumerate(self.blocks):
                idx = self._block_rays(b, T_cw, K, width, height)
                if idx is not None and idx.size == 0:
                    continue
                # Slab test per axis on 1-D columns, only over the rays whose pixels the box
                # can cover; the face index is only worked out for the rays that hit.
                Rb = b.R
                o_l = Rb.T @ (origin - np.array(b.center))
                d_l = (dirs if idx is None else dirs[idx]) @ Rb  # rows: Rb^T d
                sub_best = best_t if idx is None else best_t[idx]
                m = d_l.shape[0]
                t_near = np.full(m, -np.inf)
                t_far = np.full(m, np.inf)
                lows = []
                for a in range(3):
                    d_a = d_l[:, a]
                    inv_a = 1.0 / np.where(np.abs(d_a) < 1e-12, 1e-12, d_a)
                    t1 = (-b.half_size[a] - o_l[a]) * inv_a
                    t2 = (b.half_size[a] - o_l[a]) * inv_a
                    low = np.minimum(t1, t2)
                    lows.append(low)
                    np.maximum(t_near, low, out=t_near)
                    np.minimum(t_far, np.maximum(t1, t2), out=t_far)
                hit = np.flatnonzero((t_near <= t_far) & (t_near > 1e-6) & (t_near < sub_best))
                if hit.size == 0:
                    continue
                ax = np.argmax(np.stack([low[hit] for low in lows], axis=1), axis=1)
                # Outward face: + side when the ray travels in -axis direction.
                face = 2 * ax + (d_l[hit, ax] < 0)
                rays = hit if idx is None else idx[hit]
                best_t[rays] = t_near[hit]
                best_face[rays] = face
                best_owner[rays] = k + 1
        points = origin + dirs * best_t[:, None]
        gface = self._face_offset[best_owner] + best_face
        # Local coordinates per owner for texture lookup and the normal.
        local = points.copy()
        normal_world = np.zeros_like(points)
        room = best_owner == 0
        ax_all = best_face // 2
        sgn = np.where(best_face % 2 == 1, 1.0, -1.0)
        normal_local = np.zeros_like(points)
        normal_local[np.arange(n), ax_all] = np.where(room, -sgn, sgn)
        normal_world[room] = normal_local[room]
        for k, b in enumerate(self.blocks):
            sel = best_owner == k + 1
            if np.any(sel):
                local[sel] = (points[sel] - np.array(b.center)) @ b.R
                normal_world[sel] = normal_local[sel] @ b.R.T
        uax, vax = self._f_uax[gface], self._f_vax[gface]
        uu = (local[np.arange(n), uax] - self._f_u0[gface]) * TEXELS_PER_METRE
        vv = (local[np.arange(n), vax] - self._f_v0[gface]) * TEXELS_PER_METRE
        # Texel centres at integer + 0.5 in metric coordinates; clamp inside the face.
        uu = np.clip(uu - 0.5, 0.0, self._f_w[gface] - 1.0) + self._f_col[gface]
        vv = np.clip(vv - 0.5, 0.0, self._f_h[gface] - 1.0) + self._f_row[gface]
        map_x = uu.astype(np.float32).reshape(height, width)
        map_y = vv.astype(np.float32).reshape(height, width)
        albedo = cv2.remap(self.atlas, map_x, map_y, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
        to_light = self.light_world - points
        dist = np.linalg.norm(to_light, axis=1)
        lambert = np.clip(np.sum(normal_world * to_light, axis=1) / dist, 0.0, 1.0)
        shade = 0.45 + 0.75 * lambert / (1.0 + 0.04 * dist * dist)
        rgb = albedo.astype(np.float32) * shade.reshape(height, width, 1).astype(np.float32)
        rgb = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
        depth = best_t.reshape(height, width).astype(np.float32)
        depth[~np.isfinite(depth)] = np.nan
        return rgb, depth


# ----------------------------------------------------------------------------- trajectories


def look_at(position: np.ndarray, target: np.ndarray, roll_rad: float = 0.0) -> np.ndarray:
    """(4, 4) camera-to-world pose of a camera at ``position`` looking at ``target`` (world,
    z up), OpenCV axes (x right, y down, z forward), rotated by ``roll_rad`` about its z."""
    fwd = np.asarray(target, np.float64) - np.asarray(position, np.float64)
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    c, s = math.cos(roll_rad), math.sin(roll_rad)
    right, down = c * right + s * down, -s * right + c * down
    T = np.eye(4)
    T[:3, :3] = np.stack([right, down, fwd], axis=1)
    T[:3, 3] = position
    return T


def _loop_poses(config: SyntheticSceneConfig, theta: np.ndarray, loop_index: np.ndarray,
                wobble_phase: np.ndarray) -> np.ndarray:
    """(N, 4, 4) camera-to-world poses at loop angles ``theta`` (rad) with (fractional)
    loop-parameter indices ``loop_index`` and wobble phases (rad)."""
    idx = np.arange(len(config.loop_heights_m))
    h = np.interp(loop_index, idx, config.loop_heights_m)
    yaw_off = np.deg2rad(np.interp(loop_index, idx, config.look_yaw_offsets_deg))
    look_h = np.interp(loop_index, idx, config.look_heights_m)
    sx, sy, _ = config.room_size_m
    c = np.array([sx / 2, sy / 2])
    rx, ry = config.loop_radius_m
    w = np.deg2rad(config.wobble_deg)
    poses = np.empty((len(theta), 4, 4))
    for i, (th, hh, yo, lh, ph) in enumerate(zip(theta, h, yaw_off, look_h, wobble_phase)):
        pos = np.array([c[0] + rx * math.cos(th), c[1] + ry * math.sin(th),
                        hh + 0.06 * math.sin(3 * th)])
        pos += config.wobble_m * np.array([math.sin(5 * th + ph), math.cos(7 * th + 2 * ph),
                                           math.sin(4 * th + 3 * ph)])
        look_dir = th + math.pi + yo + w * math.sin(6 * th + ph)
        target = np.array([c[0] + config.look_distance_m * math.cos(look_dir),
                           c[1] + config.look_distance_m * math.sin(look_dir),
                           lh + 0.15 * math.sin(2 * th + ph)])
        poses[i] = look_at(pos, target, roll_rad=w * math.sin(5 * th + 2 * ph))
    return poses


def trajectories(config: SyntheticSceneConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """Training loops (list of (N_k, 4, 4)) and the test sequence (N_test, 4, 4), camera-to-world.

    Train frames are split evenly over the loops (remainder to the first ones). The test loop's
    parameter index oscillates between neighbouring training loops, its angles fall halfway
    between training samples and its wobble phase differs.
    """
    n_loops = len(config.loop_heights_m)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 7002]))
    counts = [config.train_frames // n_loops + (1 if k < config.train_frames % n_loops else 0)
              for k in range(n_loops)]
    train = []
    for k, cnt in enumerate(counts):
        phase0 = rng.uniform(0, 2 * math.pi)
        theta = phase0 + 2 * math.pi * np.arange(cnt) / cnt
        wob = np.full(cnt, rng.uniform(0, 2 * math.pi))
        train.append(_loop_poses(config, theta, np.full(cnt, float(k)), wob))
    nt = config.test_frames
    theta = rng.uniform(0, 2 * math.pi) + 2 * math.pi * (np.arange(nt) + 0.5) / nt
    mid = (n_loops - 1) / 2.0
    spread = min(config.test_spread, mid) if n_loops > 1 else 0.0
    loop_index = mid + spread * np.sin(2 * theta + rng.uniform(0, 2 * math.pi))
    wob = np.full(nt, rng.uniform(0, 2 * math.pi))
    test = _loop_poses(config, theta, loop_index, wob)
    return train, test


# ----------------------------------------------------------------------------- writing


def _render_sequence(room: SyntheticRoom, config: SyntheticSceneConfig, poses: np.ndarray,
                     seq_dir: Path, progress: Callable[[int], None] | None = None) -> None:
    """Render camera-to-world ``poses`` into ``seq_dir`` (created) in the 7-Scenes layout."""
    seq_dir.mkdir(parents=True, exist_ok=True)
    for i, T_wc in enumerate(poses):
        rgb, depth = room.render_frame(T_wc, config.K, config.width, config.height)
        write_frame(seq_dir, i, rgb, depth, T_wc)
        if progress is not None:
            progress(1)


def _write_scene_files(root: Path, config: SyntheticSceneConfig, train_sequences: list[int],
                       test_sequences: list[int]) -> None:
    """Split files, ``intrinsics.json`` and ``scene_config.json`` of a rendered scene."""
    (root / 'TrainSplit.txt').write_text(''.join(f'sequence{s}\n' for s in train_sequences))
    (root / 'TestSplit.txt').write_text(''.join(f'sequence{s}\n' for s in test_sequences))
    write_intrinsics_json(root / 'intrinsics.json', config.K, config.width, config.height)
    (root / 'scene_config.json').write_text(json.dumps(asdict(config), indent=2) + '\n')


def generate_scene(out_dir: str | Path, config: SyntheticSceneConfig = SyntheticSceneConfig(),
                   progress: Callable[[int], None] | None = None) -> Path:
    """Render a synthetic scene into ``out_dir`` in the 7-Scenes layout.

    Writes ``seq-01`` .. ``seq-NN`` (one per training loop, listed in ``TrainSplit.txt``) and
    one test sequence (``TestSplit.txt``), ``intrinsics.json`` and ``scene_config.json``.
    Work happens in a temporary folder next to ``out_dir``, renamed when complete; an existing
    non-empty ``out_dir`` is an error. ``progress(n)`` is called after every n frames written.
    Returns the scene root.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f'output folder {out} exists and is not empty')
    room = SyntheticRoom(config.seed, config.room_size_m)
    train, test = trajectories(config)
    with atomic_directory(out) as tmp:
        for s, poses in enumerate(train + [test]):
            _render_sequence(room, config, poses, tmp / f'seq-{s + 1:02d}', progress)
        n_train = len(train)
        _write_scene_files(tmp, config, list(range(1, n_train + 1)), [n_train + 1])
    LOGGER.info('wrote synthetic scene to %s (%d train, %d test frames)', out,
                config.train_frames, config.test_frames)
    return out


def generate_test_sequence(out_dir: str | Path, config: SyntheticSceneConfig,
                           max_frames: int = 0) -> Path:
    """Render only the test loop of a scene (its first ``max_frames`` frames; 0: all) into a
    7-Scenes layout root: ``seq-01`` listed in ``TestSplit.txt``, an empty ``TrainSplit.txt``,
    ``intrinsics.json`` and ``scene_config.json``. Returns ``out_dir``."""
    out = Path(out_dir)
    _, test_poses = trajectories(config)
    if max_frames:
        test_poses = test_poses[:max_frames]
    _render_sequence(SyntheticRoom(config.seed, config.room_size_m), config, test_poses,
                     out / 'seq-01')
    _write_scene_files(out, config, [], [1])
    return out


__all__ = ['Block', 'SyntheticRoom', 'SyntheticSceneConfig', 'generate_scene',
           'generate_test_sequence', 'look_at', 'trajectories']
