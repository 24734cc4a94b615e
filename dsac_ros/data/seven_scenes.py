"""Reader and writer of scenes in the 7-Scenes layout, and ground-truth scene coordinates from
depth.

Layout of a scene root::

    seq-01/frame-000000.color.png   8-bit colour
    seq-01/frame-000000.depth.png   uint16 depth in millimetres (0 and 65535 are invalid)
    seq-01/frame-000000.pose.txt    4x4 camera-to-world pose (T_wc), metres
    TrainSplit.txt / TestSplit.txt  lines ``sequence1`` naming the folders ``seq-01`` ...
    intrinsics.json                 optional (written by our synthetic scenes and bag
                                    extraction): colour and depth intrinsics, see
                                    :func:`load_intrinsics`

Without ``intrinsics.json`` the documented 7-Scenes (Kinect v1) values apply: colour camera
fx = fy = 525, cx = 320, cy = 240 at 640x480; depth camera fx = fy = 585 at 640x480. The two are
different cameras and 7-Scenes depth is *not* registered to colour; like DSAC, we back-project
depth with the depth camera's intrinsics and use the result as the target for the colour image's
cells, an approximation of a few pixels that the papers accept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import json
from pathlib import Path
import re

import cv2
import numpy as np

from dsac_ros.geometry.camera import scale_intrinsics_np

SEVEN_SCENES_COLOR = {'fx': 525.0, 'fy': 525.0, 'cx': 320.0, 'cy': 240.0,
                      'width': 640, 'height': 480}
SEVEN_SCENES_DEPTH = {'fx': 585.0, 'fy': 585.0, 'cx': 320.0, 'cy': 240.0,
                      'width': 640, 'height': 480}
_INVALID_DEPTH_MM = (0, 65535)


def _K(camera: dict) -> np.ndarray:
    return np.array([[camera['fx'], 0.0, camera['cx']],
                     [0.0, camera['fy'], camera['cy']],
                     [0.0, 0.0, 1.0]], np.float64)


@dataclass(frozen=True)
class SceneIntrinsics:
    """Colour and depth pinhole intrinsics (pixels) of a scene and their image sizes."""

    K: np.ndarray
    K_depth: np.ndarray
    size: tuple[int, int]        # colour (width, height)
    depth_size: tuple[int, int]  # depth (width, height)
    depth_registered: bool


def load_intrinsics(root: str | Path) -> SceneIntrinsics:
    """Intrinsics from ``root/intrinsics.json`` or the 7-Scenes defaults.

    ``intrinsics.json``: {"color": {fx, fy, cx, cy, width, height}, "depth": {...},
    "depth_registered": bool}; "depth" defaults to "color".
    """
    path = Path(root) / 'intrinsics.json'
    if not path.exists():
        return SceneIntrinsics(_K(SEVEN_SCENES_COLOR), _K(SEVEN_SCENES_DEPTH), (640, 480),
                               (640, 480), depth_registered=False)
    try:
        data = json.loads(path.read_text())
        color = data['color']
        depth = data.get('depth', color)
        return SceneIntrinsics(
            _K(color), _K(depth), (int(color['width']), int(color['height'])),
            (int(depth['width']), int(depth['height'])),
            depth_registered=bool(data.get('depth_registered', 'depth' not in data)))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f'{path}: malformed intrinsics ({error!r})') from error


@dataclass(frozen=True)
class Frame:
    """One frame of a scene.

    image_rgb: (H, W, 3) uint8 RGB.
    depth_m: (H', W') float32 depth in metres, NaN where invalid; None without depth.
    T_wc: (4, 4) float64 camera-to-world pose.
    K: (3, 3) float64 colour intrinsics; K_depth: depth intrinsics (None without depth).
    name: ``seq-01/frame-000000``.
    """

    image_rgb: np.ndarray
    depth_m: np.ndarray | None
    T_wc: np.ndarray
    K: np.ndarray
    K_depth: np.ndarray | None
    name: str


def read_split(root: str | Path, split: str) -> list[Path]:
    """Sequence folders listed in ``TrainSplit.txt`` or ``TestSplit.txt`` (``sequence3`` ->
    ``seq-03``), in file order."""
    if split not in ('train', 'test'):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = Path(root)
    path = root / ('TrainSplit.txt' if split == 'train' else 'TestSplit.txt')
    if not path.is_file():
        raise FileNotFoundError(f'{path} not found: is {root} a scene in the 7-Scenes layout?')
    folders = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        match = re.fullmatch(r'sequence(\d+)', line)
        if match is None:
            raise ValueError(f'{path}:{line_no}: expected "sequenceN", found {line!r}')
        folder = root / f'seq-{int(match.group(1)):02d}'
        if not folder.is_dir():
            raise FileNotFoundError(f'{path}:{line_no} names {folder}, which does not exist')
        folders.append(folder)
    return folders


def _read_pose(path: Path) -> np.ndarray:
    try:
        T_wc = np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError) as error:
        raise ValueError(f'{path}: unreadable pose ({error})') from error
    if T_wc.shape != (4, 4) or not np.isfinite(T_wc).all():
        raise ValueError(f'{path}: expected a finite 4x4 matrix, found shape {T_wc.shape}')
    return T_wc


def read_depth_m(path: Path) -> np.ndarray:
    """uint16 millimetre depth PNG -> (H, W) float32 metres with NaN where invalid."""
    depth_mm = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if depth_mm is None:
        raise ValueError(f'{path}: unreadable depth image')
    if depth_mm.dtype != np.uint16 or depth_mm.ndim != 2:
        raise ValueError(f'{path}: depth must be single-channel uint16 millimetres, found '
                         f'{depth_mm.dtype} with shape {depth_mm.shape}')
    depth_m = depth_mm.astype(np.float32) / 1000.0
    depth_m[np.isin(depth_mm, _INVALID_DEPTH_MM)] = np.nan
    return depth_m


def _intrinsics_for(K: np.ndarray, size: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    """K of a camera calibrated at ``size`` (width, height) for an image of ``shape`` (H, W)."""
    width, height = size
    if tuple(shape[:2]) == (height, width):
        return K.copy()
    return scale_intrinsics_np(K, shape[1] / width, shape[0] / height)


class SceneDataset(Sequence):
    """Frames of one split of a 7-Scenes-layout scene, read lazily and in sorted order."""

    def __init__(self, root: str | Path, split: str = 'train', load_depth: bool = True) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f'scene folder {self.root} does not exist')
        self.intrinsics = load_intrinsics(self.root)
        self.load_depth = load_depth
        self._stems: list[Path] = []
        for folder in read_split(self.root, split):
            stems = sorted(p.with_name(p.name[:-len('.color.png')])
                           for p in folder.glob('frame-*.color.png'))
            poses = sorted(folder.glob('frame-*.pose.txt'))
            if len(stems) != len(poses):
                raise ValueError(f'{folder}: {len(stems)} colour images but {len(poses)} poses')
            self._stems.extend(stems)
        if not self._stems:
            raise ValueError(f'{self.root}: the {split} split has no frames')

    def __len__(self) -> int:
        return len(self._stems)

    def color_paths(self) -> list[Path]:
        """Colour image file of every frame, in frame order."""
        return [Path(f'{stem}.color.png') for stem in self._stems]

    def poses(self) -> np.ndarray:
        """(N, 4, 4) float64 camera-to-world poses of every frame (reads no images)."""
        if not self._stems:
            return np.zeros((0, 4, 4))
        return np.stack([_read_pose(Path(f'{stem}.pose.txt')) for stem in self._stems])

    def __getitem__(self, index: int) -> Frame:  # type: ignore[override]
        stem = self._stems[index]
        bgr = cv2.imread(f'{stem}.color.png', cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f'{stem}.color.png: unreadable colour image')
        # A scene without intrinsics.json may hold images of another size: scale K to them.
        K = _intrinsics_for(self.intrinsics.K, self.intrinsics.size, bgr.shape[:2])
        depth_m, K_depth = None, None
        depth_path = Path(f'{stem}.depth.png')
        if self.load_depth and depth_path.exists():
            depth_m = read_depth_m(depth_path)
            K_depth = _intrinsics_for(self.intrinsics.K_depth, self.intrinsics.depth_size,
                                      depth_m.shape)
        return Frame(image_rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), depth_m=depth_m,
                     T_wc=_read_pose(Path(f'{stem}.pose.txt')), K=K, K_depth=K_depth,
                     name=f'{stem.parent.name}/{stem.name}')


def scene_coordinates_from_depth(depth_m: np.ndarray, K_depth: np.ndarray, T_wc: np.ndarray,
                                 stride: int = 8) -> np.ndarray:
    """Ground-truth scene coordinates at the cell centres of a stride-``stride`` map.

    Cell (i, j) is the depth pixel (u, v) = (stride j + stride // 2, stride i + stride // 2)
    (``dsac_ros.geometry.camera.cell_centers``) back-projected with ``K_depth`` and moved to
    the world by ``T_wc``.

    Args:
        depth_m: (H, W) depth in metres, NaN or <= 0 where invalid.
        K_depth: (3, 3) intrinsics of the depth image (pixels).
        T_wc: (4, 4) camera-to-world pose.
    Returns:
        (3, H // stride, W // stride) float32 world coordinates (metres), NaN where invalid.
    """
    depth_m = np.asarray(depth_m)
    if depth_m.ndim != 2:
        raise ValueError(f'depth must be (H, W), found shape {depth_m.shape}')
    h, w = depth_m.shape[0] // stride, depth_m.shape[1] // stride
    u = stride * np.arange(w) + stride // 2
    v = stride * np.arange(h) + stride // 2
    d = depth_m[v[:, None], u[None, :]].astype(np.float64)
    valid = np.isfinite(d) & (d > 0)
    d = np.where(valid, d, np.nan)
    x = (u[None, :] - K_depth[0, 2]) / K_depth[0, 0] * d
    y = (v[:, None] - K_depth[1, 2]) / K_depth[1, 1] * d
    camera = np.stack([x, y, d]).reshape(3, -1)
    world = T_wc[:3, :3] @ camera + T_wc[:3, 3:4]
    return world.reshape(3, h, w).astype(np.float32)


# ----------------------------------------------------------------------------- writing


def write_intrinsics_json(path: Path, K_color: np.ndarray, width: int, height: int,
                          K_depth: np.ndarray | None = None, depth_size: tuple[int, int] | None
                          = None, depth_registered: bool = True) -> None:
    """Write ``intrinsics.json``: colour/depth pinhole parameters (pixels) and image sizes.

    Layout: {"color": {"fx","fy","cx","cy","width","height"}, "depth": {...},
    "depth_registered": bool} (see ``seven_scenes.load_intrinsics``).
    """
    def cam(K: np.ndarray, w: int, h: int) -> dict:
        return {'fx': float(K[0, 0]), 'fy': float(K[1, 1]), 'cx': float(K[0, 2]),
                'cy': float(K[1, 2]), 'width': int(w), 'height': int(h)}
    K_depth = K_color if K_depth is None else K_depth
    dw, dh = (width, height) if depth_size is None else depth_size
    data = {'color': cam(K_color, width, height), 'depth': cam(K_depth, dw, dh),
            'depth_registered': bool(depth_registered)}
    Path(path).write_text(json.dumps(data, indent=2) + '\n')


def write_frame(seq_dir: Path, index: int, rgb: np.ndarray, depth_m: np.ndarray | None,
                T_wc: np.ndarray) -> None:
    """Write one frame in the 7-Scenes layout: colour PNG, uint16 millimetre depth PNG
    (0 = invalid; NaN, <= 0 and > 65.534 m map to 0) and the 4x4 camera-to-world pose."""
    stem = seq_dir / f'frame-{index:06d}'
    if not cv2.imwrite(f'{stem}.color.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f'could not write {stem}.color.png')
    if depth_m is not None:
        mm = np.nan_to_num(np.asarray(depth_m, np.float64) * 1000.0, nan=0.0)
        mm = np.where((mm > 0) & (mm < 65534.5), np.round(mm), 0).astype(np.uint16)
        if not cv2.imwrite(f'{stem}.depth.png', mm):
            raise OSError(f'could not write {stem}.depth.png')
    np.savetxt(f'{stem}.pose.txt', np.asarray(T_wc, np.float64), fmt='%.9f', delimiter='\t')


__all__ = ['Frame', 'SceneDataset', 'SceneIntrinsics', 'load_intrinsics', 'read_depth_m',
           'read_split', 'scene_coordinates_from_depth', 'write_frame', 'write_intrinsics_json']
