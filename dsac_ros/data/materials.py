"""Procedural surface materials for the benchmark rooms: several texture styles.

The demo room paints every surface with one generator (colour noise plus random shapes, a
distinct hue per surface: ``synthetic._make_texture``). Benchmark rooms mix that generator with
the styles below, chosen per room by seed, so that a network or recipe is not tuned to one
texture generator, and they reuse one material on several surfaces (repeated textures) as real
rooms do:

* ``paint``: plaster / paint, weakly textured: a low-contrast colour wash and sparse details
  (sockets, switches, scuffs, nail holes, patches); tiles and wallpaper get fewer of these
  details, so that stretches of one periodic surface can still be told apart up close;
* ``wood``: planks with warped grain, seams and knots;
* ``tiles``: a periodic grid of tiles with grout, small per-tile colour changes, a few odd
  tiles and speckle;
* ``wallpaper``: one motif repeated on a half-drop grid (periodic);
* ``fabric``: a fine weave with a plaid of stripes (carpets, upholstery);
* ``poster``: a picture: gradient background, large shapes and block letters.

A material is an (S, S, 3) uint8 RGB image at ``TEXELS_PER_METRE`` (1 texel = 7.8 mm); faces
take a crop of it (:func:`crop_material`). Everything is deterministic by the generator passed.
"""

from __future__ import annotations

import enum
import math

import cv2
import numpy as np

from dsac_ros.data.synthetic import TEXELS_PER_METRE, _value_noise


class TextureStyle(str, enum.Enum):
    """Texture generators; ``DEFAULT`` is the demo room's own (noise and shapes, per face)."""

    DEFAULT = 'default'
    PAINT = 'paint'
    WOOD = 'wood'
    TILES = 'tiles'
    WALLPAPER = 'wallpaper'
    FABRIC = 'fabric'
    POSTER = 'poster'


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV in OpenCV ranges (hue 0..180, s and v 0..255; arrays of one shape) -> uint8 RGB."""
    hsv = np.stack([np.mod(h, 180.0), np.clip(s, 0, 255), np.clip(v, 0, 255)], axis=-1)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def _random_colour(rng: np.random.Generator, s_range=(40, 230), v_range=(40, 240)
                   ) -> tuple[int, int, int]:
    rgb = _hsv_to_rgb(np.array([[rng.uniform(0, 180)]]), np.array([[rng.uniform(*s_range)]]),
                      np.array([[rng.uniform(*v_range)]]))
    return tuple(int(c) for c in rgb[0, 0])


def _details(rng: np.random.Generator, tex: np.ndarray, per_m2: tuple[int, int]) -> None:
    """Draw sparse unique details in place (sockets, switches, scuffs, nail holes, patches,
    stains), ``per_m2`` (low, high) per square metre: what tells two stretches of one wall
    apart."""
    size = tex.shape[0]
    area_m2 = (size / TEXELS_PER_METRE) * (tex.shape[1] / TEXELS_PER_METRE)
    for _ in range(int(rng.integers(*per_m2) * area_m2) + 4):
        x, y = int(rng.integers(0, tex.shape[1])), int(rng.integers(0, size))
        kind = rng.integers(0, 5)
        if kind == 0:  # socket / switch plate
            w, h = int(rng.integers(8, 14)), int(rng.integers(8, 18))
            cv2.rectangle(tex, (x, y), (x + w, y + h), (235, 235, 228), -1)
            cv2.rectangle(tex, (x, y), (x + w, y + h), (120, 120, 120), 1)
            cv2.circle(tex, (x + w // 2, y + h // 3), 2, (60, 60, 60), -1)
            cv2.circle(tex, (x + w // 2, y + 2 * h // 3), 2, (60, 60, 60), -1)
        elif kind == 1:  # scuff
            ang, length = rng.uniform(0, math.pi), rng.uniform(8, 50)
            p2 = (int(x + length * math.cos(ang)), int(y + length * math.sin(ang)))
            cv2.line(tex, (x, y), p2, _random_colour(rng, (0, 60), (40, 140)), 1, cv2.LINE_AA)
        elif kind == 2:  # nail hole / dot
            cv2.circle(tex, (x, y), int(rng.integers(1, 3)), (50, 45, 40), -1, cv2.LINE_AA)
        elif kind == 3:  # touched-up patch
            cv2.ellipse(tex, (x, y), (int(rng.integers(10, 40)), int(rng.integers(8, 25))),
                        rng.uniform(0, 180), 0, 360, _random_colour(rng, (10, 70), (120, 230)),
                        -1, cv2.LINE_AA)
        else:  # stain
            cv2.ellipse(tex, (x, y), (int(rng.integers(4, 20)), int(rng.integers(3, 12))),
                        rng.uniform(0, 180), 0, 360, _random_colour(rng, (10, 80), (90, 200)),
                        -1, cv2.LINE_AA)


def _paint(rng: np.random.Generator, size: int) -> np.ndarray:
    hue = rng.uniform(0, 180)
    wash = _value_noise(rng, size, size, 60.0, 2)
    fine = _value_noise(rng, size, size, 6.0, 1)[..., 0]
    tex = _hsv_to_rgb(hue + 8.0 * (wash[..., 0] - 0.5),
                      rng.uniform(20, 90) + 40.0 * (wash[..., 1] - 0.5),
                      rng.uniform(150, 210) + 45.0 * (wash[..., 1] - 0.5) + 14.0 * (fine - 0.5))
    _details(rng, tex, (10, 20))
    return cv2.GaussianBlur(tex, (0, 0), 0.7)


def _wood(rng: np.random.Generator, size: int) -> np.ndarray:
    plank = int(rng.uniform(0.10, 0.25) * TEXELS_PER_METRE)
    rows = np.arange(size)[:, None].astype(np.float32)
    cols = np.arange(size)[None, :].astype(np.float32)
    warp = _value_noise(rng, size, size, 40.0, 1)[..., 0]
    index = (rows // plank).astype(np.int64)
    offsets = rng.uniform(0, 50, int(size // plank) + 2).astype(np.float32)
    tones = rng.uniform(-18, 18, int(size // plank) + 2).astype(np.float32)
    period = rng.uniform(3.0, 7.0)
    grain = np.sin(2 * math.pi * (rows + 12.0 * warp + offsets[index]) / period
                   + 0.02 * cols)
    hue = rng.uniform(8, 20)
    value = rng.uniform(110, 190) + tones[index] + 25.0 * grain + 20.0 * (warp - 0.5)
    tex = _hsv_to_rgb(np.full_like(value, hue) + 3.0 * (warp - 0.5),
                      np.full_like(value, rng.uniform(110, 190)), value)
    tex[(np.arange(size) % plank) < 2] = (45, 30, 20)  # seams between planks
    for _ in range(int(rng.integers(3, 8) * (size / TEXELS_PER_METRE) ** 2) + 2):
        centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        cv2.ellipse(tex, centre, (int(rng.integers(4, 12)), int(rng.integers(2, 5))), 0, 0,
                    360, (70, 45, 25), -1, cv2.LINE_AA)
    joints = rng.integers(0, size, int(size // plank) + 2)  # plank ends
    for r in range(0, size, plank):
        c = int(joints[r // plank])
        cv2.line(tex, (c, r), (c, min(r + plank, size - 1)), (45, 30, 20), 2)
    return cv2.GaussianBlur(tex, (0, 0), 0.6)


def _tiles(rng: np.random.Generator, size: int) -> np.ndarray:
    tile = int(rng.uniform(0.15, 0.40) * TEXELS_PER_METRE)
    n = size // tile + 2
    base_h, base_s, base_v = rng.uniform(0, 180), rng.uniform(20, 160), rng.uniform(120, 220)
    checker = rng.random() < 0.4
    alt_v = base_v - rng.uniform(40, 90)
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing='ij')
    v = np.where(checker & ((ii + jj) % 2 == 1), alt_v, base_v) + rng.uniform(-10, 10, (n, n))
    h = base_h + rng.uniform(-3, 3, (n, n))
    decor = rng.random((n, n)) < 0.06  # a few odd tiles
    h = np.where(decor, rng.uniform(0, 180, (n, n)), h)
    v = np.where(decor, rng.uniform(60, 220, (n, n)), v)
    per_tile = _hsv_to_rgb(h, np.full((n, n), base_s), v)
    tex = cv2.resize(per_tile, (n * tile, n * tile), interpolation=cv2.INTER_NEAREST)[:size, :size]
    speckle = (rng.standard_normal((size, size, 1)) * 6.0).astype(np.float32)
    tex = np.clip(tex.astype(np.float32) + speckle, 0, 255).astype(np.uint8)
    grout = _random_colour(rng, (0, 40), (60, 200))
    lines = np.arange(size) % tile < 2
    tex[lines] = grout
    tex[:, lines] = grout
    _details(rng, tex, (4, 8))
    return cv2.GaussianBlur(tex, (0, 0), 0.6)


def _wallpaper(rng: np.random.Generator, size: int) -> np.ndarray:
    cell = int(rng.uniform(0.20, 0.45) * TEXELS_PER_METRE)
    background = _random_colour(rng, (20, 120), (150, 235))
    motif = np.empty((cell, cell, 3), np.uint8)
    motif[:] = background
    for _ in range(int(rng.integers(3, 7))):
        colour = _random_colour(rng)
        x, y = int(rng.integers(0, cell)), int(rng.integers(0, cell))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.circle(motif, (x, y), int(rng.integers(3, cell // 4)), colour, -1, cv2.LINE_AA)
        elif kind == 1:
            pts = np.array([x, y]) + rng.integers(-cell // 4, cell // 4 + 1, (4, 2))
            cv2.fillPoly(motif, [pts.astype(np.int32)], colour, cv2.LINE_AA)
        else:
            cv2.line(motif, (x, y), (int(rng.integers(0, cell)), int(rng.integers(0, cell))),
                     colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    reps = size // cell + 2
    columns = [np.roll(np.tile(motif, (reps, 1, 1)), (k % 2) * (cell // 2), axis=0)
               for k in range(reps)]  # half-drop repeat
    tex = np.ascontiguousarray(np.concatenate(columns, axis=1)[:size, :size])
    _details(rng, tex, (4, 8))
    return cv2.GaussianBlur(tex, (0, 0), 0.6)


def _fabric(rng: np.random.Generator, size: int) -> np.ndarray:
    rows = np.arange(size)[:, None].astype(np.float32)
    cols = np.arange(size)[None, :].astype(np.float32)
    weave = 0.5 + 0.5 * np.sin(2 * math.pi * rows / 2.5) * np.sin(2 * math.pi * cols / 2.5)
    blotch = _value_noise(rng, size, size, 30.0, 1)[..., 0]
    hue = rng.uniform(0, 180)
    tex = _hsv_to_rgb(np.full((size, size), hue) + 8.0 * (blotch - 0.5),
                      np.full((size, size), rng.uniform(60, 200)),
                      rng.uniform(90, 190) + 30.0 * (weave - 0.5) + 30.0 * (blotch - 0.5))
    spacing = int(rng.uniform(0.08, 0.25) * TEXELS_PER_METRE)
    for axis in (0, 1):
        colour = np.array(_random_colour(rng), np.float32)
        width = int(rng.integers(2, 6))
        stripe = (np.arange(size) % spacing) < width
        view = tex[stripe] if axis == 0 else tex[:, stripe]
        mixed = (0.5 * view.astype(np.float32) + 0.5 * colour).astype(np.uint8)
        if axis == 0:
            tex[stripe] = mixed
        else:
            tex[:, stripe] = mixed
    return cv2.GaussianBlur(tex, (0, 0), 0.5)


def _poster(rng: np.random.Generator, size: int) -> np.ndarray:
    top = np.array(_random_colour(rng), np.float32)
    bottom = np.array(_random_colour(rng), np.float32)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    tex = np.broadcast_to((1 - t) * top + t * bottom, (size, size, 3)).astype(np.uint8).copy()
    for _ in range(int(rng.integers(4, 10))):
        colour = _random_colour(rng)
        x, y = int(rng.integers(0, size)), int(rng.integers(0, size))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.circle(tex, (x, y), int(rng.integers(size // 16, size // 4)), colour, -1,
                       cv2.LINE_AA)
        elif kind == 1:
            w, h = int(rng.integers(size // 10, size // 3)), int(rng.integers(size // 10,
                                                                             size // 3))
            cv2.rectangle(tex, (x, y), (x + w, y + h), colour, -1)
        else:
            pts = np.array([x, y]) + rng.integers(-size // 4, size // 4 + 1, (3, 2))
            cv2.fillPoly(tex, [pts.astype(np.int32)], colour, cv2.LINE_AA)
    for line in range(int(rng.integers(1, 4))):
        text = ''.join(chr(c) for c in rng.integers(65, 91, int(rng.integers(3, 8))))
        cv2.putText(tex, text, (int(rng.integers(0, size // 4)), size // 5 + line * size // 6),
                    cv2.FONT_HERSHEY_DUPLEX, size / 300.0, _random_colour(rng),
                    max(1, size // 120), cv2.LINE_AA)
    return cv2.GaussianBlur(tex, (0, 0), 0.6)


_GENERATORS = {TextureStyle.PAINT: _paint, TextureStyle.WOOD: _wood,
               TextureStyle.TILES: _tiles, TextureStyle.WALLPAPER: _wallpaper,
               TextureStyle.FABRIC: _fabric, TextureStyle.POSTER: _poster}


def make_material(style: TextureStyle | str, seed: int, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB texture of ``style`` at ``TEXELS_PER_METRE``, deterministic
    by ``seed``. ``DEFAULT`` has no shared material (the room draws it per face): ValueError."""
    style = TextureStyle(style)
    if style is TextureStyle.DEFAULT:
        raise ValueError('the default style is drawn per face by SyntheticRoom')
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 8201]))
    return _GENERATORS[style](rng, int(size))


def crop_material(material: np.ndarray, height: int, width: int, offset: tuple[int, int] = (0, 0),
                  flip_rows: bool = False) -> np.ndarray:
    """(height, width, 3) crop of a material from ``offset`` (row, col), wrapping around; rows
    reversed when ``flip_rows`` (vertical faces, whose texture rows count upwards)."""
    rows = (np.arange(height) + int(offset[0])) % material.shape[0]
    cols = (np.arange(width) + int(offset[1])) % material.shape[1]
    crop = material[rows[:, None], cols[None, :]]
    return np.ascontiguousarray(crop[::-1] if flip_rows else crop)


__all__ = ['TextureStyle', 'crop_material', 'make_material']
