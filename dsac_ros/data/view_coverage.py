"""How far each test view is from the training views, and accuracy by that distance.

A relocalization number means little without saying how far the test views were from the
views the map was trained on: a test path that interpolates the training path measures
interpolation. For every test frame (camera-to-world ``T_wc``, OpenCV axes) and every training
frame we take the distance between the camera centres (metres) and the angle between the
optical axes (the cameras' +z in the world, degrees; roll about the axis is not counted), and
report per test frame:

* ``min_distance_m``: distance to the nearest training camera centre, and
  ``angle_at_min_distance_deg``: the angle to that same training view;
* ``min_angle_deg``: the smallest optical-axis angle to any training view, wherever it is;
* the *nearest training view*: the one minimizing ``score = max(d / near_distance_m,
  a / near_angle_deg)`` (with the defaults 25 cm and 20 deg, score <= 1 means "within 25 cm
  and 20 deg of some training view"), with its ``nearest_distance_m``, ``nearest_angle_deg``
  and ``nearest_score``.

Bins on ``nearest_score``: ``near`` (<= 1), ``mid`` (1 .. 2: within 50 cm and 40 deg with the
defaults) and ``far`` (> 2). Pure numpy; the benchmark scenes and the evaluator
(`dsac_ros.evaluation.coverage`: accuracy per bin) use it. Also: test frames that are training
frames (`train_test_overlap`) and both for a scene (`scene_coverage`).
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from pathlib import Path
from typing import Sequence

import numpy as np

#: Coverage bins (name, upper bound of the nearest-view score), in order.
BINS: tuple[tuple[str, float], ...] = (('near', 1.0), ('mid', 2.0), ('far', math.inf))


@dataclass(frozen=True)
class CoverageConfig:
    """Scales of the nearest-view score: a training view within ``near_distance_m`` (metres)
    AND ``near_angle_deg`` (degrees) of a test view makes that test view 'near'."""

    near_distance_m: float = 0.25
    near_angle_deg: float = 20.0
    chunk: int = 256  # test frames per block of the (test x train) distance matrices

    def __post_init__(self) -> None:
        if not (self.near_distance_m > 0 and self.near_angle_deg > 0 and self.chunk >= 1):
            raise ValueError('near_distance_m, near_angle_deg and chunk must be positive')

    def describe(self) -> str:
        return (f'within {100 * self.near_distance_m:g} cm and {self.near_angle_deg:g} deg of '
                'some training view')


@dataclass(frozen=True)
class NearestViews:
    """Per test frame (N,) arrays, see the module docstring; ``nearest_index``: index of the
    nearest training view (score) in the training poses given."""

    min_distance_m: np.ndarray
    angle_at_min_distance_deg: np.ndarray
    min_angle_deg: np.ndarray
    nearest_distance_m: np.ndarray
    nearest_angle_deg: np.ndarray
    nearest_score: np.ndarray
    nearest_index: np.ndarray

    def __len__(self) -> int:
        return int(self.nearest_score.shape[0])

    def bins(self) -> np.ndarray:
        """(N,) bin name per test frame ('near', 'mid', 'far')."""
        edges = np.array([upper for _, upper in BINS[:-1]])
        names = np.array([name for name, _ in BINS])
        return names[np.searchsorted(edges, self.nearest_score, side='left')]

    def per_frame(self, index: int) -> dict[str, float]:
        """The values of frame ``index`` (floats, for reports)."""
        return {'nearest_train_distance_m': float(self.nearest_distance_m[index]),
                'nearest_train_angle_deg': float(self.nearest_angle_deg[index]),
                'min_train_distance_m': float(self.min_distance_m[index]),
                'min_train_angle_deg': float(self.min_angle_deg[index])}


def _check_poses(T_n44: np.ndarray, name: str) -> np.ndarray:
    T = np.asarray(T_n44, np.float64)
    if T.ndim != 3 or T.shape[1:] != (4, 4):
        raise ValueError(f'{name} must be (N, 4, 4) camera-to-world poses, got {T.shape}')
    return T


def nearest_training_views(T_wc_test_n44: np.ndarray, T_wc_train_m44: np.ndarray,
                           config: CoverageConfig = CoverageConfig()) -> NearestViews:
    """Nearest training views of every test view.

    Args:
        T_wc_test_n44: (N, 4, 4) camera-to-world test poses (OpenCV camera axes, metres).
        T_wc_train_m44: (M, 4, 4) camera-to-world training poses, M >= 1.
        config: scales of the nearest-view score.
    Returns:
        NearestViews of (N,) arrays (metres, degrees).
    """
    test = _check_poses(T_wc_test_n44, 'test poses')
    train = _check_poses(T_wc_train_m44, 'training poses')
    if len(train) == 0:
        raise ValueError('no training poses')
    c_train, z_train = train[:, :3, 3], train[:, :3, 2]
    z_train = z_train / np.linalg.norm(z_train, axis=1, keepdims=True)
    n = len(test)
    out = {k: np.zeros(n) for k in ('min_d', 'a_at_min_d', 'min_a', 'd', 'a', 'score')}
    index = np.zeros(n, np.int64)
    for start in range(0, n, config.chunk):
        block = test[start:start + config.chunk]
        rows = np.arange(len(block))
        stop = start + len(block)
        dist = np.linalg.norm(block[:, None, :3, 3] - c_train[None], axis=2)  # (b, M) m
        z = block[:, :3, 2] / np.linalg.norm(block[:, :3, 2], axis=1, keepdims=True)
        angle = np.degrees(np.arccos(np.clip(z @ z_train.T, -1.0, 1.0)))  # (b, M) deg
        score = np.maximum(dist / config.near_distance_m, angle / config.near_angle_deg)
        i_d = np.argmin(dist, axis=1)
        i_s = np.argmin(score, axis=1)
        out['min_d'][start:stop] = dist[rows, i_d]
        out['a_at_min_d'][start:stop] = angle[rows, i_d]
        out['min_a'][start:stop] = angle.min(axis=1)
        out['d'][start:stop] = dist[rows, i_s]
        out['a'][start:stop] = angle[rows, i_s]
        out['score'][start:stop] = score[rows, i_s]
        index[start:stop] = i_s
    return NearestViews(min_distance_m=out['min_d'], angle_at_min_distance_deg=out['a_at_min_d'],
                        min_angle_deg=out['min_a'], nearest_distance_m=out['d'],
                        nearest_angle_deg=out['a'], nearest_score=out['score'],
                        nearest_index=index)


def _stats(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return {'median': math.nan, 'p90': math.nan}
    return {'median': float(np.median(values)), 'p90': float(np.percentile(values, 90))}


def coverage_summary(nearest: NearestViews, config: CoverageConfig = CoverageConfig()
                     ) -> dict:
    """Median and 90th percentile of every per-frame quantity, and the share of frames per bin.

    Returns {'frames', 'near_definition', 'nearest_distance_m': {'median', 'p90'},
    'nearest_angle_deg', 'min_distance_m', 'angle_at_min_distance_deg', 'min_angle_deg',
    'bins': {name: {'frames', 'pct'}}}.
    """
    bins = nearest.bins()
    n = len(nearest)
    return {
        'frames': n,
        'near_definition': config.describe(),
        'nearest_distance_m': _stats(nearest.nearest_distance_m),
        'nearest_angle_deg': _stats(nearest.nearest_angle_deg),
        'min_distance_m': _stats(nearest.min_distance_m),
        'angle_at_min_distance_deg': _stats(nearest.angle_at_min_distance_deg),
        'min_angle_deg': _stats(nearest.min_angle_deg),
        'bins': {name: {'frames': int((bins == name).sum()),
                        'pct': float(100.0 * (bins == name).mean()) if n else math.nan}
                 for name, _ in BINS},
    }


@dataclass(frozen=True)
class TrainTestOverlap:
    """Test frames that are also training frames: ``shared_files`` read the same colour image
    file as a training frame; ``identical_poses`` have a training frame with the same pose
    (all 4x4 entries within ``pose_tolerance``); ``test_frames``: frames checked."""

    test_frames: int
    shared_files: int
    identical_poses: int
    pose_tolerance: float = 1e-6

    @property
    def any(self) -> bool:
        return self.shared_files > 0 or self.identical_poses > 0

    def message(self) -> str:
        """One line for reports; empty when there is no overlap."""
        if not self.any:
            return ''
        return (f'WARNING: test frames are also training frames: {self.shared_files} of '
                f'{self.test_frames} test frames are training image files, '
                f'{self.identical_poses} have a training frame with an identical pose; '
                'these numbers measure the training frames, not relocalization')


def train_test_overlap(test_files: Sequence[str | Path], train_files: Sequence[str | Path],
                       T_wc_test_n44: np.ndarray, T_wc_train_m44: np.ndarray,
                       nearest: NearestViews | None = None, pose_tolerance: float = 1e-6
                       ) -> TrainTestOverlap:
    """Count test frames that are training frames (same file, or identical pose).

    Args:
        test_files / train_files: colour image paths of the frames (compared after resolving).
        T_wc_test_n44 / T_wc_train_m44: (N, 4, 4) / (M, 4, 4) camera-to-world poses.
        nearest: NearestViews of these poses when already computed (saves the search).
        pose_tolerance: largest absolute difference of pose entries counted as identical.
    """
    train_set = {str(Path(p).resolve()) for p in train_files}
    shared = sum(str(Path(p).resolve()) in train_set for p in test_files)
    test = _check_poses(T_wc_test_n44, 'test poses')
    train = _check_poses(T_wc_train_m44, 'training poses')
    if nearest is None:
        nearest = nearest_training_views(test, train)
    identical = 0
    radius = math.sqrt(3.0) * pose_tolerance  # centre distance when every entry is within
    candidates = np.flatnonzero(nearest.min_distance_m <= radius)
    for i in candidates:  # few: only test frames sitting on a training camera centre
        close = np.linalg.norm(train[:, :3, 3] - test[i, :3, 3], axis=1) <= radius
        diff = np.abs(train[close] - test[i]).reshape(int(close.sum()), -1).max(axis=1)
        identical += bool((diff <= pose_tolerance).any())
    return TrainTestOverlap(test_frames=len(test), shared_files=int(shared),
                            identical_poses=int(identical), pose_tolerance=pose_tolerance)


@dataclass(frozen=True)
class SceneCoverage:
    """Coverage of a scene's evaluated test frames by its training frames (N test frames)."""

    config: CoverageConfig
    nearest: NearestViews
    overlap: TrainTestOverlap
    train_frames: int

    def summary(self) -> dict:
        """coverage_summary plus 'train_frames' and 'overlap' (counts and the warning)."""
        out = coverage_summary(self.nearest, self.config)
        out['train_frames'] = self.train_frames
        out['overlap'] = {'shared_files': self.overlap.shared_files,
                          'identical_poses': self.overlap.identical_poses,
                          'warning': self.overlap.message() or None}
        return out


def scene_coverage(test_files: Sequence[str | Path], T_wc_test_n44: np.ndarray,
                   train_files: Sequence[str | Path], T_wc_train_m44: np.ndarray,
                   config: CoverageConfig = CoverageConfig()) -> SceneCoverage:
    """Nearest training views and train/test overlap of N test frames (colour image files
    and (N, 4, 4) camera-to-world poses) given the M training frames."""
    nearest = nearest_training_views(T_wc_test_n44, T_wc_train_m44, config)
    overlap = train_test_overlap(test_files, train_files, T_wc_test_n44, T_wc_train_m44,
                                 nearest)
    return SceneCoverage(config=config, nearest=nearest, overlap=overlap,
                         train_frames=len(train_files))


__all__ = ['BINS', 'CoverageConfig', 'NearestViews', 'SceneCoverage', 'TrainTestOverlap',
           'coverage_summary', 'nearest_training_views', 'scene_coverage', 'train_test_overlap']
