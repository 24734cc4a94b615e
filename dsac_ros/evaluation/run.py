"""Evaluate a checkpoint on a scene's test split with RANSAC / SoftAM / DSAC selection.

The network runs once per frame; its scene-coordinate map is reused by every selection mode, and
every mode draws the same hypothesis pool (the generator is seeded with ``estimator.seed`` on
every call), so the modes differ only in how they select (the paper's Table 1 comparison).

With ``depth`` every selection mode also runs in RGB-D mode on the same frames and the same
network output (results keyed ``<mode>_rgbd``), so RGB and RGB-D stand side by side; exact
depth (synthetic scenes) can be given sensor-like noise (``depth_noise``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from dsac_ros.data.seven_scenes import SceneDataset
from dsac_ros.data.view_coverage import CoverageConfig, SceneCoverage, scene_coverage
from dsac_ros.dsac import EstimatorConfig, PoseMode, Scoring, Selection
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
            its `seed` gives every frame and mode the same hypotheses); None: the checkpoint's
            (`Relocalizer.model_estimator_config`: its inlier threshold, beta, temperatures).
        estimator_overrides: EstimatorConfig fields set on top of that (e.g. from the CLI:
            {'inlier_threshold_px': 5.0, 'num_hypotheses': 256}).
        device: 'auto' | 'cpu' | 'cuda' (see `RelocalizerConfig`).
        max_frames: evaluate at most this many frames, evenly spaced over the split (None = all).
        scoring: AUTO (the checkpoint's recorded choice), SCORE_NET or SOFT_INLIERS.
        precision: network precision (see `NetworkPrecision`).
        progress: show a tqdm progress bar on stderr.
        coverage: scales of the distance of test views to the training views (test split).
        depth: also localize every frame in RGB-D mode from the scene's depth images (which
            must be registered to colour), beside RGB, on the same network output.
        depth_noise: relative standard deviation of Gaussian noise added to every depth pixel
            (0.01: 1 % of the range, like a real sensor's), seeded by ``estimator.seed`` and the
            frame; 0 = the depth as stored.
    """

    split: str = 'test'
    selections: tuple[Selection, ...] = tuple(Selection)
    estimator: EstimatorConfig | None = None
    estimator_overrides: dict[str, Any] = field(default_factory=dict)
    device: str = 'auto'
    max_frames: int | None = None
    scoring: Scoring = Scoring.AUTO
    precision: NetworkPrecision = NetworkPrecision.AUTO
    progress: bool = False
    coverage: CoverageConfig = field(default_factory=CoverageConfig)
    depth: bool = False
    depth_noise: float = 0.0

    def __post_init__(self) -> None:
        selections = tuple(Selection(s) for s in self.selections)
        if not selections:
            raise ValueError('no selection mode given')
        object.__setattr__(self, 'selections', tuple(dict.fromkeys(selections)))
        if self.max_frames is not None and int(self.max_frames) < 1:
            raise ValueError(f'max_frames must be >= 1 or None, got {self.max_frames}')
        if self.split not in ('train', 'test'):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")
        object.__setattr__(self, 'scoring', Scoring(self.scoring))
        replace(self.estimator or EstimatorConfig(), **self.estimator_overrides)  # validates
        if not 0.0 <= float(self.depth_noise) < 1.0:
            raise ValueError(f'depth_noise must be in [0, 1), got {self.depth_noise}')


@dataclass(frozen=True)
class SelectionResult:
    """Per-frame results of one selection mode (N frames).

    T_wc_n44: (N, 4, 4) estimated camera-to-world poses (identity where not valid).
    valid_n: (N,) bool. rotation_deg_n / translation_m_n: (N,) errors (inf where not valid),
    translation = camera-centre distance. inlier_ratio_n: (N,). estimator_ms_n: (N,) ms.
    mode: RGB or RGB-D. depth_fallbacks: RGB-D frames localized with RGB instead (no depth
    file, or too few cells with valid depth).
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
    mode: PoseMode = PoseMode.RGB
    depth_fallbacks: int = 0
    covariance_n66: np.ndarray | None = None
    calibration: CovarianceCalibration | None = None


@dataclass(frozen=True)
class SceneResult:
    """Evaluation of one scene: ground truth, network timings and one entry per selection.

    T_wc_gt_n44: (N, 4, 4) ground-truth camera-to-world poses. preprocess_ms_n / network_ms_n:
    (N,) per-frame milliseconds (shared by all modes). selections: result key -> result, the
    key is the selection mode's value, with ``_rgbd`` for its RGB-D run (`result_key`).
    coverage: how far each evaluated frame is from the training views, and whether test
    frames are training frames (test split with a readable training split; else None).
    scoring: 'score_net' or 'soft_inliers', what scored the hypotheses; inlier_threshold_px:
    the estimator's tau. depth_noise: relative depth noise of the RGB-D runs (0 without).
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
    scoring: str = ''
    inlier_threshold_px: float = float('nan')
    depth_noise: float = 0.0


def result_key(selection: Selection, mode: PoseMode = PoseMode.RGB) -> str:
    """Key of a SceneResult.selections entry: 'ransac', ..., 'ransac_rgbd', ..."""
    return selection.value if mode is PoseMode.RGB else f'{selection.value}_{mode.value}'


def _noisy(depth_m: np.ndarray | None, relative_std: float, seed: int) -> np.ndarray | None:
    """depth * (1 + relative_std * n), n ~ N(0, 1) per pixel (invalid pixels stay invalid)."""
    if depth_m is None or relative_std == 0.0:
        return depth_m
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(depth_m.shape).astype(np.float32)
    return (depth_m * (1.0 + relative_std * noise)).astype(np.float32)


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
            modes, split and max_frames come from `config`). A file is evaluated with the
            estimator settings stored in it (`dsac_ros.dsac.settings`) unless `config` gives
            its own or overrides.
        scene_root: scene folder in the 7-Scenes layout (``dsac_ros.data.seven_scenes``).
        config: EvaluationConfig.

    Returns:
        SceneResult with per-frame errors and summaries for each selection mode.

    Raises:
        CheckpointError: missing / corrupt checkpoint. FileNotFoundError / ValueError: bad scene.
    """
    config = config if config is not None else EvaluationConfig()
    # The scene first: a wrong folder should not wait for a model to load.
    dataset = SceneDataset(scene_root, config.split, load_depth=config.depth)
    if config.depth and not dataset.intrinsics.depth_registered:
        LOGGER.warning('%s: depth is not registered to colour (7-Scenes); RGB-D uses it as if it '
                       'were, an approximation of a few pixels', scene_root)
    if isinstance(checkpoint, Relocalizer):
        relocalizer, checkpoint_name = checkpoint, '<in-memory relocalizer>'
    else:
        relocalizer = Relocalizer.from_checkpoint(checkpoint, RelocalizerConfig(
            device=config.device, estimator=config.estimator, scoring=config.scoring,
            precision=config.precision))
        if config.estimator_overrides:
            relocalizer.set_estimator_config(replace(relocalizer.estimator_config,
                                                     **config.estimator_overrides))
        checkpoint_name = str(checkpoint)
    indices = frame_indices(len(dataset), config.max_frames)
    n = len(indices)
    LOGGER.info('evaluating %s (%d of %d %s frames) on %s, modes %s, tau %g px, %s', scene_root,
                n, len(dataset), config.split, relocalizer.device,
                [s.value for s in config.selections],
                relocalizer.estimator_config.inlier_threshold_px,
                'Score CNN' if getattr(relocalizer, 'uses_score_net', False) else 'soft inliers')

    names: list[str] = []
    T_gt = np.zeros((n, 4, 4))
    pre_ms, net_ms = np.zeros(n), np.zeros(n)
    runs = [(s, m) for s in config.selections
            for m in ((PoseMode.RGB, PoseMode.RGBD) if config.depth else (PoseMode.RGB,))]
    T_est = {r: np.zeros((n, 4, 4)) for r in runs}
    valid = {r: np.zeros(n, dtype=bool) for r in runs}
    ratio = {r: np.zeros(n) for r in runs}
    est_ms = {r: np.zeros(n) for r in runs}
    fallbacks = dict.fromkeys(runs, 0)
    cov = {r: np.zeros((n, 6, 6)) for r in runs}
    seed = relocalizer.estimator_config.seed

    def predict(frame, k: int):
        if not config.depth:
            return relocalizer.predict([frame.image_rgb], [frame.K])
        depth = _noisy(frame.depth_m, config.depth_noise, seed * 1_000_003 + k)
        return relocalizer.predict([frame.image_rgb], [frame.K], [depth])

    if n:
        # Untimed warm-up (first-call allocations, oneDNN kernel selection) so the per-frame
        # timings of the first mode are not inflated.
        warm = predict(dataset[int(indices[0])], 0)
        for selection, mode in runs:
            relocalizer.estimate(warm, selection, use_depth=mode is PoseMode.RGBD)

    iterator = range(n)
    if config.progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc=Path(scene_root).name, unit='frame')
    for k in iterator:
        frame = dataset[int(indices[k])]
        names.append(frame.name)
        T_gt[k] = frame.T_wc
        prediction = predict(frame, k)
        pre_ms[k] = prediction.timings['preprocess']
        net_ms[k] = prediction.timings['network']
        for run in runs:
            selection, mode = run
            (loc,) = relocalizer.estimate(prediction, selection,
                                          use_depth=mode is PoseMode.RGBD)
            T_est[run][k] = loc.T_wc
            valid[run][k] = loc.valid
            ratio[run][k] = loc.inlier_ratio
            est_ms[run][k] = loc.timings['estimator']
            cov[run][k] = loc.covariance
            fallbacks[run] += mode is PoseMode.RGBD and loc.mode is not PoseMode.RGBD

    scoring = (Scoring.SCORE_NET if getattr(relocalizer, 'uses_score_net', False)
               else Scoring.SOFT_INLIERS).value
    threshold = float(relocalizer.estimator_config.inlier_threshold_px)
    T_cw_gt = np.linalg.inv(T_gt) if n else T_gt
    results = {}
    for run in runs:
        selection, mode = run
        key = result_key(selection, mode)
        T_cw_est = np.linalg.inv(T_est[run]) if n else T_est[run]
        deg, m = frame_errors(T_cw_est, T_cw_gt, valid[run])
        results[key] = SelectionResult(
            selection=selection, T_wc_n44=T_est[run], valid_n=valid[run],
            rotation_deg_n=deg, translation_m_n=m, inlier_ratio_n=ratio[run],
            estimator_ms_n=est_ms[run], summary=summarize(deg, m, valid[run]), mode=mode,
            depth_fallbacks=fallbacks[run], covariance_n66=cov[run],
            calibration=covariance_calibration(T_est[run], T_gt, cov[run], valid[run]))
        calibration = results[key].calibration
        LOGGER.info('%s %s: %.1f%% within 5cm/5deg; covariance NEES median %.2f (calibrated: '
                    '5.35), %.0f%% within the 95%% bound, scale %.3g', Path(scene_root).name,
                    key, results[key].summary.within_pct['5cm_5deg'], calibration.nees_median,
                    calibration.within_95_pct, calibration.scale)
        if fallbacks[run]:
            LOGGER.warning('%s %s: %d of %d frames without usable depth, localized with RGB',
                           Path(scene_root).name, key, fallbacks[run], n)
    coverage = (_coverage(dataset, indices, T_gt, config.coverage)
                if config.split == 'test' and n else None)
    return SceneResult(scene=Path(scene_root).resolve().name, scene_root=str(scene_root),
                       checkpoint=checkpoint_name, split=config.split,
                       frame_names=tuple(names), T_wc_gt_n44=T_gt, preprocess_ms_n=pre_ms,
                       network_ms_n=net_ms, selections=results,
                       device=str(relocalizer.device), coverage=coverage,
                       scoring=scoring, inlier_threshold_px=threshold,
                       depth_noise=float(config.depth_noise) if config.depth else 0.0)


__all__ = ['EvaluationConfig', 'SceneResult', 'SelectionResult', 'evaluate', 'frame_indices',
           'result_key']
