"""Evaluate a checkpoint on a scene's test split with RANSAC / SoftAM / DSAC selection.

The network runs once per frame; its scene-coordinate map is reused by every selection mode, and
every mode draws the same hypothesis pool (the generator is seeded with ``estimator.seed`` on
every call), so the modes differ only in how they select (the paper's Table 1 comparison).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
import os
from pathlib import Path

import numpy as np

from dsac_ros.data.seven_scenes import SceneDataset
from dsac_ros.data.view_coverage import CoverageConfig, SceneCoverage, scene_coverage
from dsac_ros.dsac import EstimatorConfig, Selection
from dsac_ros.evaluation.calibration import CovarianceCalibration, covariance_calibration
from dsac_ros.evaluation.metrics import ErrorSummary, frame_errors, summarize
from dsac_ros.relocalizer import NetworkPrecision, Relocalizer, RelocalizerConfig

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationConfig:
    """What to evaluate and how.

    Attributes:
        split: 'test' or 'train' (7-Scenes split files).
        selections: selection modes to run on every frame (network output shared).
        estimator: estimator settings (its `selection` is replaced by each of `selections`;
            its `seed` gives every frame and mode the same hypotheses).
        device: 'auto' | 'cpu' | 'cuda' (see `RelocalizerConfig`).
        max_frames: evaluate at most this many frames, evenly spaced over the split (None = all).
        use_score_net: score hypotheses with the checkpoint's ScoreNet (else soft inliers).
        precision: network precision (see `NetworkPrecision`).
        progress: show a tqdm progress bar on stderr.
        coverage: scales of the distance of test views to the training views (test split).
    """

    split: str = 'test'
    selections: tuple[Selection, ...] = tuple(Selection)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    device: str = 'auto'
    max_frames: int | None = None
    use_score_net: bool = False
    precision: NetworkPrecision = NetworkPrecision.AUTO
    progress: bool = False
    coverage: CoverageConfig = field(default_factory=CoverageConfig)

    def __post_init__(self) -> None:
        selections = tuple(Selection(s) for s in self.selections)
        if not selections:
            raise ValueError('no selection mode given')
        object.__setattr__(self, 'selections', tuple(dict.fromkeys(selections)))
        if self.max_frames is not None and int(self.max_frames) < 1:
            raise ValueError(f'max_frames must be >= 1 or None, got {self.max_frames}')
        if self.split not in ('train', 'test'):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")


@dataclass(frozen=True)
class SelectionResult:
    """Per-frame results of one selection mode (N frames).

    T_wc_n44: (N, 4, 4) estimated camera-to-world poses (identity where not valid).
    valid_n: (N,) bool. rotation_deg_n / translation_m_n: (N,) errors (inf where not valid),
    translation = camera-centre distance. inlier_ratio_n: (N,). estimator_ms_n: (N,) ms.
    covariance_n66: (N, 6, 6) the estimator's covariances (camera-frame twist, translation
    first); calibration: their NEES statistics on this split (`evaluation.calibration`).
    """

    selection: Selection
    T_wc_n44: np.ndarray
    valid_n: np.ndarray
    rotation_deg_n: np.ndarray
    translation_m_n: np.ndarray
    inlier_ratio_n: np.ndarray
    estimator_ms_n: np.ndarray
    summary: ErrorSummary
    covariance_n66: np.ndarray | None = None
    calibration: CovarianceCalibration | None = None


@dataclass(frozen=True)
class SceneResult:
    """Evaluation of one scene: ground truth, network timings and one entry per selection.

    T_wc_gt_n44: (N, 4, 4) ground-truth camera-to-world poses. preprocess_ms_n / network_ms_n:
    (N,) per-frame milliseconds (shared by all modes). selections: mode value -> result.
    coverage: how far each evaluated frame is from the training views, and whether test
    frames are training frames (test split with a readable training split; else None).
    """

    scene: str
    scene_root: str
    checkpoint: str
    split: str
    frame_names: tuple[str, ...]
    T_wc_gt_n44: np.ndarray
    preprocess_ms_n: np.ndarray
    network_ms_n: np.ndarray
    selections: dict[str, SelectionResult]
    device: str
    coverage: SceneCoverage | None = None


def frame_indices(num_frames: int, max_frames: int | None) -> np.ndarray:
    """Indices of at most `max_frames` frames spread evenly over 0..num_frames-1 (sorted)."""
    if num_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if max_frames is None or max_frames >= num_frames:
        return np.arange(num_frames)
    return np.unique(np.linspace(0, num_frames - 1, int(max_frames)).round().astype(np.int64))


def _coverage(dataset: SceneDataset, indices: np.ndarray, T_wc_n44: np.ndarray,
              config: CoverageConfig) -> SceneCoverage | None:
    """Coverage of the evaluated test frames by the scene's training split (None without
    one)."""
    try:
        train = SceneDataset(dataset.root, 'train', load_depth=False)
    except (FileNotFoundError, ValueError) as exc:
        LOGGER.warning('no coverage statistics for %s: %s', dataset.root, exc)
        return None
    paths = dataset.color_paths()
    coverage = scene_coverage([paths[int(i)] for i in indices], T_wc_n44, train.color_paths(),
                              train.poses(), config)
    if coverage.overlap.any:
        LOGGER.warning('%s: %s', dataset.root, coverage.overlap.message())
    return coverage


def evaluate(checkpoint: str | os.PathLike | Relocalizer, scene_root: str | os.PathLike,
             config: EvaluationConfig | None = None) -> SceneResult:
    """Localize the frames of one scene split and measure pose errors per selection mode.

    Args:
        checkpoint: checkpoint file, or an already built Relocalizer (then its own device,
            precision, score function, seed and estimator settings apply; only the selection
            modes, split and max_frames come from `config`).
        scene_root: scene folder in the 7-Scenes layout (``dsac_ros.data.seven_scenes``).
        config: EvaluationConfig.

    Returns:
        SceneResult with per-frame errors and summaries for each selection mode.

    Raises:
        CheckpointError: missing / corrupt checkpoint. FileNotFoundError / ValueError: bad scene.
    """
    config = config if config is not None else EvaluationConfig()
    # The scene first: a wrong folder should not wait for a model to load.
    dataset = SceneDataset(scene_root, config.split, load_depth=False)
    if isinstance(checkpoint, Relocalizer):
        relocalizer, checkpoint_name = checkpoint, '<in-memory relocalizer>'
    else:
        relocalizer = Relocalizer.from_checkpoint(checkpoint, RelocalizerConfig(
            device=config.device, estimator=config.estimator,
            use_score_net=config.use_score_net, precision=config.precision))
        checkpoint_name = str(checkpoint)
    indices = frame_indices(len(dataset), config.max_frames)
    n = len(indices)
    LOGGER.info('evaluating %s (%d of %d %s frames) on %s, modes %s', scene_root, n,
                len(dataset), config.split, relocalizer.device,
                [s.value for s in config.selections])

    names: list[str] = []
    T_gt = np.zeros((n, 4, 4))
    pre_ms, net_ms = np.zeros(n), np.zeros(n)
    T_est = {s: np.zeros((n, 4, 4)) for s in config.selections}
    valid = {s: np.zeros(n, dtype=bool) for s in config.selections}
    ratio = {s: np.zeros(n) for s in config.selections}
    est_ms = {s: np.zeros(n) for s in config.selections}
    cov = {s: np.zeros((n, 6, 6)) for s in config.selections}

    if n:
        # Untimed warm-up (first-call allocations, oneDNN kernel selection) so the per-frame
        # timings of the first mode are not inflated.
        first = dataset[int(indices[0])]
        warm = relocalizer.predict([first.image_rgb], [first.K])
        for selection in config.selections:
            relocalizer.estimate(warm, selection)

    iterator = range(n)
    if config.progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc=Path(scene_root).name, unit='frame')
    for k in iterator:
        frame = dataset[int(indices[k])]
        names.append(frame.name)
        T_gt[k] = frame.T_wc
        prediction = relocalizer.predict([frame.image_rgb], [frame.K])
        pre_ms[k] = prediction.timings['preprocess']
        net_ms[k] = prediction.timings['network']
        for selection in config.selections:
            (loc,) = relocalizer.estimate(prediction, selection)
            T_est[selection][k] = loc.T_wc
            valid[selection][k] = loc.valid
            ratio[selection][k] = loc.inlier_ratio
            est_ms[selection][k] = loc.timings['estimator']
            cov[selection][k] = loc.covariance

    T_cw_gt = np.linalg.inv(T_gt) if n else T_gt
    results = {}
    for selection in config.selections:
        T_cw_est = np.linalg.inv(T_est[selection]) if n else T_est[selection]
        deg, m = frame_errors(T_cw_est, T_cw_gt, valid[selection])
        results[selection.value] = SelectionResult(
            selection=selection, T_wc_n44=T_est[selection], valid_n=valid[selection],
            rotation_deg_n=deg, translation_m_n=m, inlier_ratio_n=ratio[selection],
            estimator_ms_n=est_ms[selection], summary=summarize(deg, m, valid[selection]),
            covariance_n66=cov[selection], calibration=covariance_calibration(
                T_est[selection], T_gt, cov[selection], valid[selection]))
        calibration = results[selection.value].calibration
        LOGGER.info('%s %s: %.1f%% within 5cm/5deg; covariance NEES median %.2f (calibrated: '
                    '5.35), %.0f%% within the 95%% bound, scale %.3g', Path(scene_root).name,
                    selection.value, results[selection.value].summary.within_pct['5cm_5deg'],
                    calibration.nees_median, calibration.within_95_pct, calibration.scale)
    coverage = (_coverage(dataset, indices, T_gt, config.coverage)
                if config.split == 'test' and n else None)
    return SceneResult(scene=Path(scene_root).resolve().name, scene_root=str(scene_root),
                       checkpoint=checkpoint_name, split=config.split,
                       frame_names=tuple(names), T_wc_gt_n44=T_gt, preprocess_ms_n=pre_ms,
                       network_ms_n=net_ms, selections=results,
                       device=str(relocalizer.device), coverage=coverage)


__all__ = ['EvaluationConfig', 'SceneResult', 'SelectionResult', 'evaluate', 'frame_indices']
