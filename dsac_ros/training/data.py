"""Training data held in memory: images, scene-coordinate targets, poses and intrinsics.

Small scenes (hundreds of 320x240 frames) fit easily in RAM as uint8 images plus float32
(3, H/8, W/8) targets, so the trainer never touches the disk after loading.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from dsac_ros.data.seven_scenes import SceneDataset, scene_coordinates_from_depth
from dsac_ros.geometry.camera import scale_intrinsics_np

_LOG = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    """All frames of one split, as tensors (CPU).

    images_b3hw: (N, 3, H, W) uint8 RGB.
    coords_b3hw: (N, 3, H/8, W/8) float32 world-frame scene coordinates in metres, NaN where
        unknown; None when the scene has no depth (reprojection initialisation then).
    T_cw_b44: (N, 4, 4) float64 world-to-camera poses.
    K_33: (3, 3) float64 colour intrinsics (pixels) of the (H, W) images.
    names: frame names.
    depth_bhw: (N, H, W) float32 depth (metres, NaN invalid) on the colour pixel grid, for
        augmentation with exact targets; None without depth.
    K_depth_33: (3, 3) float64 intrinsics to back-project ``depth_bhw`` with (the colour K when
        depth is registered to colour); None without depth.
    """

    images_b3hw: Tensor
    coords_b3hw: Tensor | None
    T_cw_b44: Tensor
    K_33: Tensor
    names: list[str]
    depth_bhw: Tensor | None = None
    K_depth_33: Tensor | None = None

    def __len__(self) -> int:
        return int(self.images_b3hw.shape[0])

    def cell_depths(self, index: Tensor) -> Tensor:
        """(B, H/8, W/8) float32 depth (metres, NaN = unknown) of the cells of frames
        ``index``: the camera z of their scene-coordinate targets, i.e. the depth they were
        back-projected from (the RGB-D estimator's input). Needs ``coords_b3hw``."""
        if self.coords_b3hw is None:
            raise ValueError('this training set has no depth')
        coords = self.coords_b3hw[index].double()  # (B, 3, h, w) world
        T_cw = self.T_cw_b44[index]
        z = torch.einsum('bk,bkhw->bhw', T_cw[:, 2, :3], coords) + T_cw[:, 2, 3, None, None]
        return z.float()

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.images_b3hw.shape[2]), int(self.images_b3hw.shape[3])

    def subset(self, index: Tensor) -> TrainingSet:
        """The frames ``index`` (a (n,) long tensor) as a training set of their own."""
        pick = index.tolist()
        return TrainingSet(
            images_b3hw=self.images_b3hw[index],
            coords_b3hw=None if self.coords_b3hw is None else self.coords_b3hw[index],
            T_cw_b44=self.T_cw_b44[index], K_33=self.K_33,
            names=[self.names[i] for i in pick],
            depth_bhw=None if self.depth_bhw is None else self.depth_bhw[index],
            K_depth_33=self.K_depth_33)

    def with_frames(self, images_b3hw: Tensor, coords_b3hw: Tensor, T_cw_b44: Tensor,
                    names: list[str], depth_bhw: Tensor) -> TrainingSet:
        """This set followed by more frames of the same camera (e.g. `novel_views`), shaped as
        the fields; needs depth."""
        if self.coords_b3hw is None or self.depth_bhw is None:
            raise ValueError('frames with targets can only be added to a set with depth')
        return TrainingSet(
            images_b3hw=torch.cat([self.images_b3hw, images_b3hw]),
            coords_b3hw=torch.cat([self.coords_b3hw, coords_b3hw]),
            T_cw_b44=torch.cat([self.T_cw_b44, T_cw_b44.to(self.T_cw_b44.dtype)]),
            K_33=self.K_33, names=self.names + list(names),
            depth_bhw=torch.cat([self.depth_bhw, depth_bhw]), K_depth_33=self.K_depth_33)

    def scene_mean(self, index: Tensor | None = None) -> Tensor:
        """(3,) mean of the valid targets (metres, world) of frames ``index`` (default: all);
        camera centres if no depth."""
        if index is None:
            index = torch.arange(len(self))
        if self.coords_b3hw is not None:
            pts = self.coords_b3hw[index].permute(0, 2, 3, 1).reshape(-1, 3)
            pts = pts[torch.isfinite(pts).all(dim=1)]
            if len(pts):
                return pts.double().mean(dim=0).float()
        T_wc = torch.linalg.inv(self.T_cw_b44[index])
        # No depth: a point 2 m in front of each camera is a rough centre of what is seen.
        ahead = T_wc[:, :3, 3] + 2.0 * T_wc[:, :3, 2]
        return ahead.mean(dim=0).float()


def validation_split(names: list[str], fraction: float) -> tuple[Tensor, Tensor]:
    """Split the training frames into (train, validation) index tensors (long, ascending).

    The validation frames are the last ``fraction`` of every sequence (names ``seq/frame``, in
    recording order; a name without ``/`` is one sequence), rounded down: a sequence of fewer
    than 1 / ``fraction`` frames keeps them all for training (fraction 0: no validation
    frames). A tail block rather than every n-th frame: a frame between two training frames
    would measure interpolation, and model selection must not see the test split (the
    evaluator reports on it).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f'validation fraction must be in [0, 1), got {fraction}')
    sequences: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        sequences.setdefault(name.rsplit('/', 1)[0] if '/' in name else '', []).append(i)
    validation: list[int] = []
    for frames in sequences.values():
        count = min(int(np.floor(fraction * len(frames) + 1e-9)), len(frames) - 1)
        if count > 0:
            validation.extend(frames[-count:])
    held = set(validation)
    train = [i for i in range(len(names)) if i not in held]
    return torch.tensor(train, dtype=torch.long), torch.tensor(sorted(validation),
                                                                 dtype=torch.long)


def load_training_set(root: str | Path, split: str = 'train', stride: int = 8,
                      use_depth: bool = True, max_frames: int | None = None) -> TrainingSet:
    """Read a 7-Scenes-layout scene split into memory.

    Images must all have one size (a multiple of ``stride``). With ``use_depth`` False (or no
    depth in the scene) ``coords_b3hw`` is None.
    """
    dataset = SceneDataset(root, split=split, load_depth=use_depth)
    n = len(dataset)
    if n == 0:
        raise ValueError(f'scene {root} has no {split} frames')
    if max_frames is not None and max_frames < n:
        # Evenly spaced subset, so a small budget still covers the whole trajectory.
        indices = np.linspace(0, n - 1, max_frames).round().astype(int).tolist()
    else:
        indices = list(range(n))
    images, coords, depths, poses, names = [], [], [], [], []
    K = K_depth = None
    have_depth = use_depth
    for i in indices:
        frame = dataset[i]
        if K is None:
            K = np.asarray(frame.K, np.float64)
            size = frame.image_rgb.shape[:2]
            if size[0] % stride or size[1] % stride:
                raise ValueError(f'image size {size[1]}x{size[0]} of {root} is not a multiple '
                                 f'of the network stride {stride}')
        elif frame.image_rgb.shape[:2] != size or not np.allclose(frame.K, K):
            raise ValueError(f'frame {frame.name} differs in image size or intrinsics from the '
                             'first frame; the trainer needs one camera per scene')
        images.append(torch.from_numpy(np.ascontiguousarray(frame.image_rgb)).permute(2, 0, 1))
        T_wc = np.asarray(frame.T_wc, np.float64)
        poses.append(torch.from_numpy(np.linalg.inv(T_wc)))
        names.append(frame.name)
        if have_depth and frame.depth_m is not None:  # depth registered to colour
            depth_m, K_depth = _on_colour_grid(frame.depth_m, frame.K_depth, frame.K, size)
            coords_3hw = scene_coordinates_from_depth(depth_m, K_depth, T_wc, stride)
            coords.append(torch.from_numpy(coords_3hw))
            depths.append(torch.from_numpy(np.asarray(depth_m, np.float32)))
        else:
            have_depth = False
    if not have_depth and use_depth:
        _LOG.warning('scene %s has no depth for every frame: training from poses only', root)
    return TrainingSet(
        images_b3hw=torch.stack(images),
        coords_b3hw=torch.stack(coords).float() if have_depth else None,
        T_cw_b44=torch.stack(poses),
        K_33=torch.from_numpy(K),
        names=names,
        depth_bhw=torch.stack(depths) if have_depth else None,
        K_depth_33=torch.from_numpy(np.asarray(K_depth, np.float64)) if have_depth else None,
    )


def _on_colour_grid(depth_m: np.ndarray, K_depth: np.ndarray | None, K: np.ndarray,
                    size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Depth (H, W) on the colour image's pixel grid (nearest-neighbour resize when the depth
    image has another size, K_depth scaled to match) and its intrinsics."""
    K_depth = np.asarray(K if K_depth is None else K_depth, np.float64)
    height, width = size_hw
    if depth_m.shape == (height, width):
        return depth_m, K_depth
    sx, sy = width / depth_m.shape[1], height / depth_m.shape[0]
    resized = cv2.resize(np.asarray(depth_m, np.float32), (width, height),
                         interpolation=cv2.INTER_NEAREST)
    return resized, scale_intrinsics_np(K_depth, sx, sy)
