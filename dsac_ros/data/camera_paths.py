"""Camera paths for benchmark scenes: hand-held mapping loops and free routes.

World frame: x east, y north, z up (metres), as in :mod:`dsac_ros.data.synthetic`; every path
returns (N, 4, 4) camera-to-world poses ``T_wc`` with OpenCV camera axes (x right, y down,
z forward). Viewing directions are given as yaw (degrees, counter-clockwise from +x) and pitch
(degrees, positive looking up); roll turns the camera about its optical axis.

* :func:`handheld_loop`: a person walking an ellipse round the room centre holding the camera,
  looking inward (across the room) or outward (at the nearer walls), sweeping the view left and
  right, with the hand's wobble and the walking bob: a mapping run, or a test run that revisits
  the mapped space on its own path.
* :func:`free_route`: a robot or a walker going its own way through the room (a smooth spline
  through waypoints), looking roughly where it goes, with its own heights, pitches and some
  roll: views that no mapping loop took.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

from dsac_ros.data.synthetic import look_at


def smooth_noise(rng: np.random.Generator, n: int, cycles: float, components: int = 3
                 ) -> np.ndarray:
    """(n,) smooth random signal in [-1, 1]: a sum of ``components`` sinusoids with about
    ``cycles`` periods (each 0.5..1.5 x) over the n samples and random phases."""
    t = np.arange(n) / max(n, 1)
    freq = cycles * rng.uniform(0.5, 1.5, components)
    phase = rng.uniform(0.0, 2 * math.pi, components)
    amp = rng.uniform(0.5, 1.0, components)
    signal = (amp[:, None] * np.sin(2 * math.pi * freq[:, None] * t[None] + phase[:, None])).sum(0)
    return signal / amp.sum()


def poses_from_angles(positions_n3: np.ndarray, yaw_deg_n: np.ndarray, pitch_deg_n: np.ndarray,
                      roll_deg_n: np.ndarray) -> np.ndarray:
    """(N, 4, 4) camera-to-world poses at world ``positions`` (metres) looking along yaw
    (degrees from +x, counter-clockwise) and pitch (degrees, up positive), rolled by roll
    (degrees, about the optical axis)."""
    yaw, pitch = np.deg2rad(yaw_deg_n), np.deg2rad(pitch_deg_n)
    forward = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw),
                        np.sin(pitch)], axis=1)
    return np.stack([look_at(p, p + f, math.radians(r))
                     for p, f, r in zip(positions_n3, forward, roll_deg_n)])


@dataclass(frozen=True)
class LoopPath:
    """A hand-held walk round an ellipse (see :func:`handheld_loop`).

    center_xy, radii_xy: ellipse in metres (world x, y). height_m: mean camera height;
    height_swing_m: slow height change. start_deg: where the walk starts on the ellipse;
    turns: fraction of the ellipse walked (negative: clockwise). inward: look across the room
    (else outward at the nearer walls). yaw_offset_deg: constant offset of the view from
    radial; sweep_deg / sweep_cycles / sweep_phase_deg: left-right sweep of the view, a
    sinusoid of the position on the ellipse (sweep_cycles periods per full round), so a walk
    that passes the same place with another phase looks a little differently;
    pitch_deg / pitch_swing_deg: mean pitch and its slow change; wobble_m / wobble_deg: hand
    shake; bob_m / steps: walking bob and steps per walk.
    """

    center_xy: tuple[float, float]
    radii_xy: tuple[float, float]
    height_m: float = 1.45
    height_swing_m: float = 0.08
    start_deg: float = 0.0
    turns: float = 1.0
    inward: bool = True
    yaw_offset_deg: float = 0.0
    sweep_deg: float = 25.0
    sweep_cycles: int = 4
    sweep_phase_deg: float = 0.0
    pitch_deg: float = -8.0
    pitch_swing_deg: float = 6.0
    wobble_m: float = 0.03
    wobble_deg: float = 2.0
    bob_m: float = 0.015
    steps: int = 40


def handheld_loop(path: LoopPath, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 4, 4) camera-to-world poses of a hand-held walk along ``path``; the smooth noise
    (wobble, swings) is drawn from ``rng``."""
    theta = math.radians(path.start_deg) + 2 * math.pi * path.turns * np.arange(n) / n
    cx, cy = path.center_xy
    rx, ry = path.radii_xy
    pos = np.stack([cx + rx * np.cos(theta), cy + ry * np.sin(theta),
                    np.full(n, path.height_m)], axis=1)
    wobble_cycles = 6.0 * abs(path.turns) + 3.0
    for axis in range(3):
        pos[:, axis] += path.wobble_m * smooth_noise(rng, n, wobble_cycles)
    pos[:, 2] += path.height_swing_m * smooth_noise(rng, n, 1.5)
    pos[:, 2] += path.bob_m * np.sin(2 * math.pi * path.steps * np.arange(n) / n)
    # Radial direction from the centre, measured from the position (not the ellipse angle).
    radial = np.degrees(np.arctan2(pos[:, 1] - cy, pos[:, 0] - cx))
    yaw = radial + (180.0 if path.inward else 0.0) + path.yaw_offset_deg
    yaw += path.sweep_deg * np.sin(path.sweep_cycles * theta
                                   + math.radians(path.sweep_phase_deg))
    yaw += path.wobble_deg * smooth_noise(rng, n, wobble_cycles)
    pitch = (path.pitch_deg + path.pitch_swing_deg * smooth_noise(rng, n, 2.0)
             + path.wobble_deg * smooth_noise(rng, n, wobble_cycles))
    roll = path.wobble_deg * smooth_noise(rng, n, wobble_cycles)
    return poses_from_angles(pos, yaw, pitch, roll)


@dataclass(frozen=True)
class RoutePath:
    """A free route through the room (see :func:`free_route`).

    waypoints_xy: (K, 2) metres, visited in order (K >= 2). heights_m: (low, high) range the
    camera height wanders in. pan_deg / pan_cycles: how far and how often the view turns away
    from the direction of travel. pitch_deg / pitch_swing_deg: mean pitch and its change.
    roll_deg: largest roll (about the optical axis). box_xy: ((x0, y0), (x1, y1)) the positions
    are clamped to (None: no clamp). wobble_m / wobble_deg: small shake.
    """

    waypoints_xy: tuple[tuple[float, float], ...]
    heights_m: tuple[float, float] = (1.1, 1.7)
    pan_deg: float = 35.0
    pan_cycles: float = 3.0
    pitch_deg: float = -5.0
    pitch_swing_deg: float = 10.0
    roll_deg: float = 12.0
    box_xy: tuple[tuple[float, float], tuple[float, float]] | None = None
    wobble_m: float = 0.01
    wobble_deg: float = 1.0


def _catmull_rom(points_k2: np.ndarray, samples_per_segment: int = 64) -> np.ndarray:
    """(M, 2) dense samples of a Catmull-Rom spline through the points (ends repeated)."""
    p = np.concatenate([points_k2[:1], points_k2, points_k2[-1:]])
    t = np.linspace(0.0, 1.0, samples_per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (3 * p1 - p0 - 3 * p2 + p3) * t ** 3))
    out.append(points_k2[-1:])
    return np.concatenate(out)


def free_route(path: RoutePath, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 4, 4) camera-to-world poses along the route, evenly spaced by distance (with a
    slowly changing speed), heading along the route plus the pan; noise drawn from ``rng``."""
    waypoints = np.asarray(path.waypoints_xy, np.float64)
    if waypoints.ndim != 2 or waypoints.shape[1] != 2 or len(waypoints) < 2:
        raise ValueError(f'need (K >= 2, 2) waypoints, got shape {waypoints.shape}')
    dense = _catmull_rom(waypoints)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
    speed = 1.0 + 0.4 * smooth_noise(rng, n, 3.0)  # > 0: relative speed along the route
    s = np.concatenate([[0.0], np.cumsum(speed[:-1])])
    s = s / s[-1] * arc[-1] if n > 1 else s
    xy = np.stack([np.interp(s, arc, dense[:, 0]), np.interp(s, arc, dense[:, 1])], axis=1)
    ahead = np.stack([np.interp(np.minimum(s + 0.3, arc[-1]), arc, dense[:, k])
                      for k in range(2)], axis=1)
    behind = np.stack([np.interp(np.maximum(s - 0.3, 0.0), arc, dense[:, k])
                       for k in range(2)], axis=1)
    heading = np.degrees(np.unwrap(np.arctan2(ahead[:, 1] - behind[:, 1],
                                              ahead[:, 0] - behind[:, 0])))
    for axis in range(2):
        xy[:, axis] += path.wobble_m * smooth_noise(rng, n, 20.0)
    if path.box_xy is not None:
        (x0, y0), (x1, y1) = path.box_xy
        xy = np.clip(xy, [x0, y0], [x1, y1])
    low, high = path.heights_m
    z = 0.5 * (low + high) + 0.5 * (high - low) * smooth_noise(rng, n, 2.5)
    yaw = (heading + path.pan_deg * smooth_noise(rng, n, path.pan_cycles)
           + path.wobble_deg * smooth_noise(rng, n, 20.0))
    pitch = (path.pitch_deg + path.pitch_swing_deg * smooth_noise(rng, n, 2.0)
             + path.wobble_deg * smooth_noise(rng, n, 20.0))
    roll = path.roll_deg * smooth_noise(rng, n, 2.0) + path.wobble_deg * smooth_noise(rng, n,
                                                                                       20.0)
    return poses_from_angles(np.concatenate([xy, z[:, None]], axis=1), yaw, pitch, roll)


__all__ = ['LoopPath', 'RoutePath', 'free_route', 'handheld_loop', 'poses_from_angles',
           'smooth_noise']
