"""Training augmentation that keeps image, intrinsics, pose and scene-coordinate target in step.

Geometric part: an in-plane rotation by ``angle`` about the optical axis together with a zoom
by ``scale`` about the principal point. Both are exact camera changes, not approximations:

* the rotation is the camera turning about its own z axis: ``x_cam' = R_z x_cam``, so the new
  pose is ``T_cw' = R_z T_cw`` (``T_wc' = T_wc R_z^T``);
* the zoom is a change of focal length: ``K' = K`` with fx, fy (and skew) multiplied by
  ``scale``; the principal point stays.

The pixel map is then ``p' ~ K' R_z K^-1 p``, which is affine because R_z keeps z, and the
image is warped with ``cv2.warpAffine`` (bilinear, black border; OpenCV pixel-centre
convention as everywhere in dsac_ros). World coordinates do not change, so the stride-8 target
is only resampled: each output cell centre ``(8 j + 4, 8 i + 4)`` is mapped back through the
inverse affine and takes the *nearest* input cell (never blends two surfaces); cells mapping
outside the input grid are NaN. The nearest-cell choice moves a target's reprojection by at
most half a cell diagonal times ``scale`` (about 5.7 px at scale 1) from its cell centre.

Photometric part: contrast ``c`` about the image mean and brightness offset ``b``:
``I' = clip((I - mean) c + mean + 255 b)``, the same for all channels.

Everything is drawn from a ``numpy.random.Generator`` passed in, so a run can be repeated.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentation (uniform draws).

    brightness: offset in [-b, b] as a fraction of 255. contrast: factor in [1 - c, 1 + c].
    max_rotation_deg: in-plane rotation in [-r, r] degrees. max_scale: zoom factor in
    [1 - s, 1 + s]. Zero disables a part.
    """

    brightness: float = 0.1
    contrast: float = 0.1
    max_rotation_deg: float = 5.0
    max_scale: float = 0.1

    def __post_init__(self) -> None:
        if min(self.brightness, self.contrast, self.max_rotation_deg, self.max_scale) < 0:
            raise ValueError(f'augmentation ranges must be >= 0: {self}')
        if self.contrast >= 1 or self.max_scale >= 1:
            raise ValueError('contrast and max_scale must be < 1')


@dataclass(frozen=True)
class AugmentParams:
    """One draw: rotation angle (rad, about the camera's z axis), zoom factor, contrast
    factor, brightness offset (fraction of 255)."""

    angle_rad: float = 0.0
    scale: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0


@dataclass(frozen=True)
class AugmentedSample:
    """image_rgb (H, W, 3) uint8; scene_coords_3hw (3, H/8, W/8) float32 world metres, NaN
    invalid; K (3, 3); T_wc (4, 4) camera-to-world of the augmented camera; affine_23: the
    pixel map input -> output (2, 3)."""

    image_rgb: np.ndarray
    scene_coords_3hw: np.ndarray
    K: np.ndarray
    T_wc: np.ndarray
    affine_23: np.ndarray


def sample_params(rng: np.random.Generator, config: AugmentConfig = AugmentConfig()
                  ) -> AugmentParams:
    """Draw one set of parameters (always four draws, so streams stay aligned)."""
    u = rng.uniform(-1.0, 1.0, 4)
    return AugmentParams(angle_rad=math.radians(config.max_rotation_deg) * float(u[0]),
                         scale=1.0 + config.max_scale * float(u[1]),
                         contrast=1.0 + config.contrast * float(u[2]),
                         brightness=config.brightness * float(u[3]))


def rotation_z(angle_rad: float) -> np.ndarray:
    """(3, 3) rotation about the camera's optical (z) axis."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def adjusted_camera(K: np.ndarray, T_wc: np.ndarray, params: AugmentParams
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K', T_wc', affine_23) of the augmented camera; affine maps input to output pixels."""
    K = np.asarray(K, np.float64)
    K_new = K.copy()
    K_new[:2, :2] *= params.scale
    R_z = rotation_z(params.angle_rad)
    H = K_new @ R_z @ np.linalg.inv(K)  # third row is (0, 0, 1): an affine map
    T_cz = np.eye(4)
    T_cz[:3, :3] = R_z.T  # new camera -> old camera
    return K_new, np.asarray(T_wc, np.float64) @ T_cz, H[:2] / H[2, 2]


def photometric(image_rgb: np.ndarray, contrast: float, brightness: float) -> np.ndarray:
    """Contrast about the mean and brightness offset (fraction of 255) on uint8 RGB."""
    image = image_rgb.astype(np.float32)
    mean = float(image.mean())
    out = (image - mean) * contrast + mean + 255.0 * brightness
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def resample_target(scene_coords_3hw: np.ndarray, affine_23: np.ndarray, stride: int = 8
                    ) -> np.ndarray:
    """Nearest-cell resampling of a stride-``stride`` target under an input->output pixel
    affine; (3, h, w) float32, NaN where the source cell lies outside the grid."""
    _, h, w = scene_coords_3hw.shape
    half = stride // 2
    u = stride * np.arange(w) + half
    v = stride * np.arange(h) + half
    uu, vv = np.meshgrid(u, v)
    inverse = cv2.invertAffineTransform(np.asarray(affine_23, np.float64))
    src_u = inverse[0, 0] * uu + inverse[0, 1] * vv + inverse[0, 2]
    src_v = inverse[1, 0] * uu + inverse[1, 1] * vv + inverse[1, 2]
    j = np.rint((src_u - half) / stride).astype(np.int64)
    i = np.rint((src_v - half) / stride).astype(np.int64)
    inside = (j >= 0) & (j < w) & (i >= 0) & (i < h)
    out = np.full((3, h, w), np.nan, np.float32)
    out[:, inside] = scene_coords_3hw[:, i[inside], j[inside]]
    return out


def apply_augmentation(image_rgb: np.ndarray, scene_coords_3hw: np.ndarray, K: np.ndarray,
                       T_wc: np.ndarray, params: AugmentParams, stride: int = 8
                       ) -> AugmentedSample:
    """Apply one parameter set (deterministic; see the module docstring).

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        scene_coords_3hw: (3, H // stride, W // stride) world coordinates (m), NaN invalid.
        K: (3, 3) intrinsics of ``image_rgb``. T_wc: (4, 4) camera-to-world pose.
    """
    image_rgb = np.asarray(image_rgb)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f'image must be (H, W, 3) uint8, got {image_rgb.dtype} '
                         f'{image_rgb.shape}')
    height, width = image_rgb.shape[:2]
    if scene_coords_3hw.shape != (3, height // stride, width // stride):
        raise ValueError(f'target shape {scene_coords_3hw.shape} does not match image '
                         f'{width}x{height} at stride {stride}')
    K_new, T_wc_new, affine = adjusted_camera(K, T_wc, params)
    warped = cv2.warpAffine(image_rgb, affine, (width, height), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    warped = photometric(warped, params.contrast, params.brightness)
    target = resample_target(np.asarray(scene_coords_3hw, np.float32), affine, stride)
    return AugmentedSample(warped, target, K_new, T_wc_new, affine)


def augment(image_rgb: np.ndarray, scene_coords_3hw: np.ndarray, K: np.ndarray,
            T_wc: np.ndarray, rng: np.random.Generator,
            config: AugmentConfig = AugmentConfig(), stride: int = 8) -> AugmentedSample:
    """Random augmentation of one training sample: :func:`sample_params` then
    :func:`apply_augmentation`."""
    return apply_augmentation(image_rgb, scene_coords_3hw, K, T_wc, sample_params(rng, config),
                              stride)


__all__ = ['AugmentConfig', 'AugmentParams', 'AugmentedSample', 'adjusted_camera',
           'apply_augmentation', 'augment', 'photometric', 'resample_target', 'rotation_z',
           'sample_params']
