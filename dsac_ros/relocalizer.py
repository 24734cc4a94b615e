"""Camera relocalization from one RGB image: scene-coordinate CNN + DSAC estimator (ROS-free).

Per frame: check and resize the image to the model's training size (scaling K to match), run
the scene-coordinate network once, then estimate the pose with `DsacEstimator` (RANSAC, SoftAM
or DSAC selection). The ROS node (`dsac_ros.ros.node`) and the evaluator
(`dsac_ros.evaluation.run`) both use this module.

RGB-D: given a depth image registered to the colour image (any resolution, same field of
view), the pose comes from the estimator's RGB-D mode (`dsac_ros.dsac.rgbd`: Kabsch hypotheses,
3D inliers); a frame whose depth has too few valid cells falls back to RGB, and the
`Localization` says which mode produced its pose and why depth was not used.

Conventions (docs/CONTRACTS.md): images are uint8 (H, W, 3) RGB; K (3, 3) pixels with the
OpenCV pixel-centre convention; T_cw is world-to-camera, T_wc camera-to-world (what ROS
publishes as map -> camera).

Choices, measured on a 2-core Xeon with AMX/AVX512-BF16 (default SceneCoordinateNet, random
weights, 320x240, mean of 10 calls):
bf16 autocast ran the network in 0.72x the float32 time (290 vs 404 ms) and moved the scene
coordinates by 0.4 mm median (0.16 % of the offset from the scene mean), far below the
centimetre errors of a trained net. So bf16 is used where the checkpoint was trained in bf16 and
the CPU runs bf16 natively (`NetworkPrecision.AUTO`); float32 otherwise (bf16 emulation is slower
than float32). The estimator runs in float64 on the CPU (same speed as float32 there: 213 vs
224 ms for 256 hypotheses on 30x40 cells) and in float32 on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
import enum
import logging
import os
import threading
import time
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from dsac_ros.device import bf16_supported, check_device_name, resolve_device
from dsac_ros.dsac import (
    DsacEstimator,
    EstimatorConfig,
    ModelSettings,
    PoseEstimate,
    PoseMode,
    Scoring,
    Selection,
    cell_depths,
    read_model_settings,
)
from dsac_ros.geometry.camera import as_intrinsics_np, scale_intrinsics_np
from dsac_ros.models.checkpoint import Checkpoint, CheckpointError, load_checkpoint

__all__ = [
    'CheckpointError',
    'Localization',
    'NetworkPrecision',
    'PoseMode',
    'Prediction',
    'Relocalizer',
    'RelocalizerConfig',
    'check_depth_image',
]

LOGGER = logging.getLogger(__name__)


class NetworkPrecision(str, enum.Enum):
    """Arithmetic of the scene-coordinate network at inference.

    FLOAT32: plain float32. BFLOAT16: bf16 autocast (the regression head stays float32, see
    `SceneCoordinateNet.forward`). AUTO: bf16 on CUDA with bf16 support; on the CPU only when
    the model was trained under bf16 autocast (`ModelSettings.amp_dtype`) AND the CPU runs bf16
    natively (AVX512-BF16 / AMX); float32 otherwise.
    """

    AUTO = 'auto'
    FLOAT32 = 'float32'
    BFLOAT16 = 'bfloat16'


@dataclass(frozen=True)
class RelocalizerConfig:
    """Settings of a `Relocalizer`.

    Attributes:
        device: 'auto' (CUDA when available, else CPU), 'cpu', or 'cuda' / 'cuda:N' (falls back
            to the CPU with a logged warning when CUDA is absent).
        estimator: DSAC estimator settings (selection mode, hypotheses, thresholds), used as
            given except an unset (None) `inlier_threshold_cm`, which takes the checkpoint's;
            None: the defaults with the checkpoint's `ModelSettings` (inlier thresholds,
            soft-inlier beta, selection temperatures), see `Relocalizer.model_estimator_config`.
        scoring: AUTO (the checkpoint's recorded choice), SCORE_NET or SOFT_INLIERS.
        precision: network arithmetic, see `NetworkPrecision`.

    The sampling seed is ``estimator.seed``: every call draws from a generator seeded with it,
    so the same image gives the same pose.
    """

    device: str = 'auto'
    estimator: EstimatorConfig | None = None
    scoring: Scoring = Scoring.AUTO
    precision: NetworkPrecision = NetworkPrecision.AUTO

    def __post_init__(self) -> None:
        if not isinstance(self.precision, NetworkPrecision):
            try:
                object.__setattr__(self, 'precision', NetworkPrecision(self.precision))
            except ValueError as exc:
                names = [p.value for p in NetworkPrecision]
                raise ValueError(
                    f'precision must be one of {names}, got {self.precision!r}') from exc
        if self.estimator is not None and not isinstance(self.estimator, EstimatorConfig):
            raise ValueError('estimator must be an EstimatorConfig or None, got '
                             f'{type(self.estimator).__name__}')
        try:
            object.__setattr__(self, 'scoring', Scoring(self.scoring))
        except ValueError as exc:
            names = [x.value for x in Scoring]
            raise ValueError(f'scoring must be one of {names}, got {self.scoring!r}') from exc
        check_device_name(self.device)


@dataclass(frozen=True)
class Localization:
    """Pose of one image (numpy, read-only arrays).

    Attributes:
        T_wc: (4, 4) float64 camera-to-world pose (identity when not valid).
        T_cw: (4, 4) float64 world-to-camera pose (inverse of T_wc).
        valid: False = no pose (too few inliers / valid cells); T_wc is then the identity.
        inlier_count: cells with reprojection error below the inlier threshold at the pose.
        inlier_ratio: inlier_count / number of valid cells, in [0, 1].
        score_entropy: entropy (nats) of the hypothesis selection distribution; near 0 = one
            clear winner, log(num_hypotheses) = no preference.
        covariance: (6, 6) float64 covariance of xi = (rho [m], phi [rad]), translation first,
            a perturbation in the CAMERA frame: T_wc_true = T_wc @ se3_exp(xi). Rotate both 3x3
            blocks by R_wc for the world frame. diag(1e6) when not valid.
        timings: milliseconds spent in 'preprocess' (checks, resize, upload), 'network' and
            'estimator'.
        mode: which correspondences produced the pose: PoseMode.RGB (2D-3D) or PoseMode.RGBD
            (3D-3D from depth; inlier_count then counts cells within inlier_threshold_cm).
        depth_fallback: why a frame that came with depth was localized with RGB ('' when
            depth was used or none was given).
    """

    T_wc: np.ndarray
    T_cw: np.ndarray
    valid: bool
    inlier_count: int
    inlier_ratio: float
    score_entropy: float
    covariance: np.ndarray
    timings: dict[str, float]
    mode: PoseMode = PoseMode.RGB
    depth_fallback: str = ''


@dataclass(frozen=True)
class Prediction:
    """Network output for B images, ready for `Relocalizer.estimate` (reusable across modes).

    Attributes:
        scene_coords_b3hw: (B, 3, H/8, W/8) world coordinates (metres), on the device.
        K_b33: (B, 3, 3) intrinsics of the resized (training-size) images, same dtype/device.
        timings: per-image milliseconds for 'preprocess' and 'network'.
        depth_bhw: (B, H/8, W/8) depth of every cell centre (metres, NaN = invalid;
            `dsac_ros.dsac.cell_depths`), same dtype/device, or None when no image came with
            depth; images without depth have all-NaN rows.
        depth_given_b: per image, whether it came with a depth image.
    """

    scene_coords_b3hw: Tensor
    K_b33: Tensor
    timings: dict[str, float]
    depth_bhw: Tensor | None = None
    depth_given_b: tuple[bool, ...] = ()


def _check_image(image: np.ndarray, name: str = 'image_rgb_hw3') -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f'{name} must be a numpy array, got {type(image).__name__}')
    if image.dtype != np.uint8:
        raise ValueError(f'{name} must be uint8 RGB, got dtype {image.dtype}')
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'{name} must have shape (H, W, 3), got {image.shape}')
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise ValueError(f'{name} is empty or too small: shape {image.shape}')


def check_depth_image(depth: np.ndarray, image_shape: tuple[int, ...],
                 name: str = 'depth_m') -> None:
    """Checks a depth image registered to an image of `image_shape` (H, W, ...): float32 /
    float64 metres (H', W') of the same aspect ratio (1 %); ValueError naming `name`."""
    if not isinstance(depth, np.ndarray):
        raise ValueError(f'{name} must be a numpy array, got {type(depth).__name__}')
    if depth.dtype not in (np.float32, np.float64):
        raise ValueError(f'{name} must be float32/float64 metres (NaN or 0 = invalid), got dtype '
                         f'{depth.dtype} (16UC1 millimetres: divide by 1000)')
    if depth.ndim != 2 or depth.shape[0] < 1 or depth.shape[1] < 1:
        raise ValueError(f'{name} must have shape (H, W), got {depth.shape}')
    h, w = image_shape[:2]
    if abs(depth.shape[1] / depth.shape[0] - w / h) > 0.01 * (w / h):
        raise ValueError(f'{name} is {depth.shape[1]}x{depth.shape[0]} but the image is {w}x{h}:'
                         ' depth must be registered to the colour image (same field of view)')


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


class Relocalizer:
    """Localizes RGB images in the scene a checkpoint was trained on.

    Thread-safe for one caller at a time per instance; `set_estimator_config` may be called from
    another thread (it swaps the estimator between calls).

    Args:
        checkpoint: a loaded `Checkpoint` (networks on any device; moved to the config's).
        config: RelocalizerConfig.
    """

    def __init__(self, checkpoint: Checkpoint, config: RelocalizerConfig | None = None) -> None:
        self.config = config if config is not None else RelocalizerConfig()
        self.device = resolve_device(self.config.device)
        self.coord_net = checkpoint.coord_net.to(self.device).eval()
        self.coord_net = self.coord_net.to(memory_format=torch.channels_last)
        self.score_net = None
        if checkpoint.score_net is not None:
            self.score_net = checkpoint.score_net.to(self.device).eval()
        self.image_size = tuple(int(x) for x in checkpoint.image_size)  # (height, width)
        self.K_train = as_intrinsics_np(checkpoint.K.detach().cpu().numpy(), 'checkpoint K')
        self.metadata = dict(checkpoint.metadata or {})
        self.model_settings: ModelSettings = read_model_settings(self.metadata, self.image_size)
        self.autocast_bf16 = self._use_bf16()
        # Float64 PnP on the CPU (cheap there, exact); float32 on GPUs (float64 is slow there).
        self.estimator_dtype = torch.float64 if self.device.type == 'cpu' else torch.float32
        self._lock = threading.Lock()
        self._estimator = self._make_estimator(
            self.config.estimator if self.config.estimator is not None
            else self.model_estimator_config)
        self._by_selection: dict[Selection, tuple[DsacEstimator, DsacEstimator]] = {}
        self._warned_aspect = False

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike,
                        config: RelocalizerConfig | None = None) -> Relocalizer:
        """Load a checkpoint file (CheckpointError, a ValueError, when missing or corrupt)."""
        # Loaded on the CPU; __init__ moves the nets to the configured device (one warning).
        return cls(load_checkpoint(path, 'cpu'), config)

    # -- configuration ------------------------------------------------------------------------

    def _use_bf16(self) -> bool:
        precision = self.config.precision
        if precision is NetworkPrecision.FLOAT32:
            return False
        if precision is NetworkPrecision.BFLOAT16:
            return True
        if self.device.type == 'cuda':
            return bf16_supported(self.device)
        return self.model_settings.amp_dtype == 'bfloat16' and bf16_supported(self.device)

    @property
    def model_estimator_config(self) -> EstimatorConfig:
        """The defaults with the checkpoint's `ModelSettings` applied: what the model was trained
        for (the node's and the evaluator's base, their parameters override it)."""
        return self.model_settings.apply(EstimatorConfig())

    @property
    def uses_score_net(self) -> bool:
        """Whether hypotheses are scored by the checkpoint's Score CNN."""
        return self._estimator.score_fn is not None

    def _make_estimator(self, config: EstimatorConfig) -> DsacEstimator:
        config = self.model_settings.fill_unset(config)
        score_fn = None
        if self.model_settings.use_score_net(self.config.scoring):
            if self.score_net is None:
                if self.config.scoring is Scoring.SCORE_NET:
                    LOGGER.warning('scoring score_net was asked for but the checkpoint has no '
                                   'score net: scoring with soft inlier counts')
            else:
                score_fn = self.score_net.score_fn
        return DsacEstimator(config, score_fn, self.device)

    @property
    def estimator_config(self) -> EstimatorConfig:
        """The estimator settings in use."""
        return self._estimator.config

    def set_estimator_config(self, config: EstimatorConfig) -> None:
        """Replace the estimator settings; takes effect from the next call."""
        if not isinstance(config, EstimatorConfig):
            raise ValueError(f'expected an EstimatorConfig, got {type(config).__name__}')
        self._estimator = self._make_estimator(config)

    # -- pipeline -----------------------------------------------------------------------------

    def _resize(self, image: np.ndarray, K: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Image at the training size (H, W, 3) and its intrinsics."""
        h, w = self.image_size
        H, W = image.shape[:2]
        if (H, W) == (h, w):
            return image, (self.K_train if K is None else K)
        if not self._warned_aspect and abs(W / H - w / h) > 0.01 * (w / h):
            LOGGER.warning('image aspect %dx%d differs from the training size %dx%d: resizing '
                           'anisotropically', W, H, w, h)
            self._warned_aspect = True
        shrinking = W > w or H > h
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        resized = cv2.resize(image, (w, h), interpolation=interpolation)
        # K None: the image is taken to come from the training camera at another resolution.
        K_out = self.K_train if K is None else scale_intrinsics_np(K, w / W, h / H)
        return resized, K_out

    def predict(self, images_rgb: Sequence[np.ndarray],
                K_33s: Sequence[np.ndarray | None] | None = None,
                depths_m: Sequence[np.ndarray | None] | None = None) -> Prediction:
        """Run the scene-coordinate network once on B images.

        Args:
            images_rgb: B uint8 (H_i, W_i, 3) RGB images (any size; resized to the model's).
            K_33s: B intrinsics (3, 3) in pixels of the images as given, or None entries (or
                None) for the model's training camera.
            depths_m: B depth images registered to the colour images, or None entries (or
                None) for RGB only: float (H', W') metres along the optical axis, NaN / inf /
                <= 0 invalid, any resolution of the colour image's aspect; resampled to the
                cell grid (`dsac_ros.dsac.cell_depths`).

        Returns:
            Prediction with (B, 3, h/8, w/8) scene coordinates and the matching (B, 3, 3) K.

        Raises:
            ValueError: wrong dtype / shape, empty image, NaN or zero-focal K, depth not float
                or not of the image's aspect.
        """
        t0 = time.perf_counter()
        images_rgb = list(images_rgb)
        if not images_rgb:
            raise ValueError('no images given')
        if K_33s is None:
            K_33s = [None] * len(images_rgb)
        K_33s = list(K_33s)
        if len(K_33s) != len(images_rgb):
            raise ValueError(f'{len(images_rgb)} images but {len(K_33s)} intrinsics')
        depths = [None] * len(images_rgb) if depths_m is None else list(depths_m)
        if len(depths) != len(images_rgb):
            raise ValueError(f'{len(images_rgb)} images but {len(depths)} depth images')
        resized, Ks = [], []
        for i, (image, K, depth) in enumerate(zip(images_rgb, K_33s, depths)):
            _check_image(image, f'image {i}' if len(images_rgb) > 1 else 'image_rgb_hw3')
            if depth is not None:
                check_depth_image(depth, image.shape,
                                  f'depth {i}' if len(depths) > 1 else 'depth_m')
            K = None if K is None else as_intrinsics_np(K, 'K_33')
            image, K = self._resize(image, K)
            resized.append(image)
            Ks.append(K)
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(resized))).to(self.device)
        x_b3hw = batch.permute(0, 3, 1, 2).float().div_(255.0)
        x_b3hw = x_b3hw.contiguous(memory_format=torch.channels_last)
        K_b33 = torch.from_numpy(np.stack(Ks)).to(self.device, self.estimator_dtype)
        self._sync()
        t1 = time.perf_counter()
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.autocast_bf16):
            coords = self.coord_net(x_b3hw)
        # A normal (non-inference) tensor, so the estimator may use it freely.
        coords = coords.to(self.estimator_dtype).contiguous().clone()
        self._sync()
        t2 = time.perf_counter()
        depth_bhw = self._cell_depths(depths, coords.shape[-2:])
        self._sync()
        t3 = time.perf_counter()
        n = len(images_rgb)
        return Prediction(coords, K_b33, {'preprocess': 1e3 * ((t1 - t0) + (t3 - t2)) / n,
                                          'network': 1e3 * (t2 - t1) / n},
                          depth_bhw=depth_bhw,
                          depth_given_b=tuple(d is not None for d in depths))

    def _cell_depths(self, depths: list[np.ndarray | None],
                     grid_hw: tuple[int, int]) -> Tensor | None:
        """(B, h, w) cell depths of the given depth images (NaN rows for None), or None."""
        if all(d is None for d in depths):
            return None
        h, w = int(grid_hw[0]), int(grid_hw[1])
        rows = []
        for depth in depths:  # images of different sizes: one resampling each
            if depth is None:
                rows.append(torch.full((1, h, w), torch.nan, dtype=self.estimator_dtype,
                                       device=self.device))
                continue
            d = torch.from_numpy(np.ascontiguousarray(depth)).to(self.device)
            rows.append(cell_depths(d[None], (h, w), self.coord_net.stride).to(
                self.estimator_dtype))
        return torch.cat(rows)

    def estimate(self, prediction: Prediction, selection: Selection | str | None = None,
                 use_depth: bool = True) -> list[Localization]:
        """Poses of the B images of `prediction` (the network output may be reused).

        Args:
            prediction: from `predict`.
            selection: overrides the configured selection mode (RANSAC / SoftAM / DSAC).
            use_depth: localize the images that came with depth in RGB-D mode (False: RGB for
                all, e.g. to compare both modes on one network output).

        Images with depth but fewer valid depth cells than an RGB-D pose needs
        (max(3, min_inliers_for_pose)) are localized with RGB; their `depth_fallback` says so.
        """
        estimator = self._estimator
        if selection is not None and Selection(selection) != estimator.config.selection:
            estimator = self._estimator_for(estimator, Selection(selection))
        n = prediction.scene_coords_b3hw.shape[0]
        fallback = [''] * n
        rgbd_b = [False] * n
        if use_depth and prediction.depth_bhw is not None:
            needed = max(3, estimator.config.min_inliers_for_pose)
            counts = torch.isfinite(prediction.depth_bhw).flatten(1).sum(dim=1).tolist()
            for b, (given, count) in enumerate(zip(prediction.depth_given_b, counts)):
                rgbd_b[b] = given and count >= needed
                if given and not rgbd_b[b]:
                    fallback[b] = f'{count} cells with valid depth, fewer than {needed}'
        t0 = time.perf_counter()
        if all(rgbd_b) or not any(rgbd_b):
            est = self._run(estimator, prediction, None, all(rgbd_b))
            order = list(range(n))
        else:  # some with depth, some without: two estimator calls
            with_depth = [b for b in range(n) if rgbd_b[b]]
            without = [b for b in range(n) if not rgbd_b[b]]
            parts = [self._run(estimator, prediction, idx, depth)
                     for idx, depth in ((with_depth, True), (without, False))]
            est = PoseEstimate(*(torch.cat([getattr(p, f.name) for p in parts])
                                 for f in fields(PoseEstimate)))
            order = [(with_depth + without).index(b) for b in range(n)]
        T_cw = est.T_cw_b44.double().cpu().numpy()
        T_wc = est.T_wc_b44.double().cpu().numpy()
        cov = est.covariance_b66.double().cpu().numpy()
        valid = est.valid_b.cpu().numpy()
        inliers = est.inlier_count_b.cpu().numpy()
        ratio = est.inlier_ratio_b.double().cpu().numpy()
        entropy = est.score_entropy_b.double().cpu().numpy()
        estimator_ms = 1e3 * (time.perf_counter() - t0) / n
        out = []
        for b in range(n):
            timings = dict(prediction.timings)
            timings['estimator'] = estimator_ms
            k = order[b]
            out.append(Localization(
                T_wc=_readonly(T_wc[k].copy()), T_cw=_readonly(T_cw[k].copy()),
                valid=bool(valid[k]), inlier_count=int(inliers[k]),
                inlier_ratio=float(ratio[k]), score_entropy=float(entropy[k]),
                covariance=_readonly(cov[k].copy()), timings=timings,
                mode=PoseMode.RGBD if rgbd_b[b] else PoseMode.RGB, depth_fallback=fallback[b]))
        return out

    def _run(self, estimator: DsacEstimator, prediction: Prediction, images: list[int] | None,
             depth: bool) -> PoseEstimate:
        """The estimator on all images (None) or a subset, RGB-D when `depth`."""
        coords, K = prediction.scene_coords_b3hw, prediction.K_b33
        depth_bhw = prediction.depth_bhw if depth else None
        if images is not None:
            index = torch.tensor(images, device=coords.device)
            coords, K = coords[index], K[index]
            depth_bhw = None if depth_bhw is None else depth_bhw[index]
        # generator None: a fresh one seeded with the estimator's seed (same image, same pose).
        return estimator.estimate(coords, K, self.coord_net.stride, depth_bhw=depth_bhw)

    def localize(self, image_rgb_hw3: np.ndarray, K_33: np.ndarray | None = None,
                 depth_m: np.ndarray | None = None) -> Localization:
        """Pose of one image.

        Args:
            image_rgb_hw3: uint8 (H, W, 3) RGB image, any size (resized to the training size
                with cv2.resize, INTER_AREA when shrinking).
            K_33: (3, 3) intrinsics (pixels) of the image as given, or None for the model's
                training camera.
            depth_m: depth registered to the image (RealSense / Orbbec `aligned_depth_to_color`):
                float (H', W') metres along the optical axis, NaN / inf / <= 0 invalid, any
                resolution of the image's aspect. Given: RGB-D mode (falls back to RGB when
                too few cells have depth, see `Localization.depth_fallback`). None: RGB.

        Returns:
            Localization (T_wc camera-to-world, T_cw world-to-camera, quality, timings, mode).

        Raises:
            ValueError: wrong dtype / shape, empty image, NaN or zero-focal K, depth not float
                or not of the image's aspect.
        """
        with self._lock:
            return self.estimate(self.predict([image_rgb_hw3], [K_33], [depth_m]))[0]

    def warm_up(self, frames: int = 2) -> list[float]:
        """Localize ``frames`` synthetic images (seeded noise at the training size, the
        training camera) and forget the results: the first call of a fresh process pays for
        kernel selection and buffer allocation (demo model, one thread, busy 2-core CPU: 1066 ms,
        then 139-221 ms), so the node does this before it subscribes instead of dropping the
        first camera frames. Returns the wall time of each call in milliseconds."""
        h, w = self.image_size
        image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        times_ms = []
        for _ in range(frames):
            start = time.perf_counter()
            self.localize(image)
            times_ms.append(1e3 * (time.perf_counter() - start))
        return times_ms

    def localize_batch(self, images_rgb: Sequence[np.ndarray],
                       K_33s: Sequence[np.ndarray | None] | None = None,
                       depths_m: Sequence[np.ndarray | None] | None = None
                       ) -> list[Localization]:
        """Poses of B images with one network call and one batched estimator call per mode.

        Timings are per image (batch time / B). The random stream differs from B single calls,
        so poses agree with `localize` up to RANSAC noise, not bit for bit.
        """
        with self._lock:
            return self.estimate(self.predict(images_rgb, K_33s, depths_m))

    def _estimator_for(self, base: DsacEstimator, selection: Selection) -> DsacEstimator:
        # One estimator per mode, kept so its scratch buffers are reused from frame to frame;
        # the entry remembers its base so a swapped configuration is never served stale.
        cached = self._by_selection.get(selection)
        if cached is None or cached[0] is not base:
            cached = (base, DsacEstimator(replace(base.config, selection=selection),
                                          base.score_fn, self.device))
            self._by_selection[selection] = cached
        return cached[1]

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
