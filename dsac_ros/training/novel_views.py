"""Novel training views from RGB-D frames: the same scene seen from cameras the recording never
took, with exact scene-coordinate targets.

A relocalizer is asked for poses near, not on, the mapping path (a revisit lies ~15 cm / 10 deg
from the nearest training view). Camera roll and zoom (`augmentation`) change the image by a
homography and cannot show parallax; moving the camera needs depth. Per view:

1. every source pixel with depth is lifted to the world (source pose, K) and projected into the
   new camera; a z-buffer keeps the nearest point per pixel, splatted onto those of the 4
   pixels around its projection that lie within 0.75 px of it on both axes (no cracks up to
   1.5x magnification, no foreground grown by a whole pixel);
2. each new pixel with a depth is lifted with the new camera and its colour sampled from the
   source image (bilinear): the colour is resampled once, from where the point really was seen.
   A pixel whose point does not lie on the source's surface (its source depth differs from
   the nearest source pixel's by more than 3 %: the splat's edge, seen past an occluder) is
   a hole;
3. pixels nothing landed on (disocclusions, and parts of the new view outside the source
   frame) are holes: their colour is filled from their surroundings (a push-pull pyramid) so
   the image has no artificial edges, and their cells get no target (NaN);
4. the cell targets are the lifted new-pixel points at the cell centres, so they reproject onto
   their centres exactly under the new pose (to float precision), and lie on the surface up to
   the splat's rounding (a pixel, along the surface).

The new poses are drawn around the source pose like the Score CNN's perturbed poses
(`geometry.transforms.perturb_poses`: a magnitude m, the camera turns m * U(0.3, 1) degrees
and moves m * U(0.3, 1) centimetres). Views with too large a hole share are drawn again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
import torch.nn.functional as F

from dsac_ros.geometry.transforms import invert_se3, perturb_poses

_SPLAT_RADIUS_PX = 0.75
_SURFACE_TOLERANCE = 0.03


@dataclass(frozen=True)
class NovelViewConfig:
    """copies: novel views made of every training frame (0: none). min_magnitude /
    max_magnitude: the pose change's range (degrees and centimetres,
    `geometry.transforms.perturb_poses`).
    max_hole_share: a view with more of its pixels unseen by the source is drawn again, up to
    ``attempts`` times, then left out."""

    copies: int = 0
    min_magnitude: float = 5.0
    max_magnitude: float = 25.0
    max_hole_share: float = 0.25
    attempts: int = 4

    def __post_init__(self) -> None:
        if self.copies < 0 or self.attempts < 1:
            raise ValueError(f'copies must be >= 0 and attempts >= 1: {self}')
        if not 0.0 < self.min_magnitude <= self.max_magnitude:
            raise ValueError(f'need 0 < min_magnitude <= max_magnitude: {self}')
        if not 0.0 <= self.max_hole_share <= 1.0:
            raise ValueError(f'max_hole_share must be in [0, 1]: {self}')


@dataclass(frozen=True)
class RenderedViews:
    """images_b3hw: (B, 3, H, W) uint8 RGB. depth_bhw: (B, H, W) float32 metres, NaN in holes:
    the z of the new camera with the colour intrinsics (where a scene's depth intrinsics differ
    from its colour ones, as in raw 7-Scenes, the views' depth is not in the scene's depth
    convention; their targets are exact either way). coords_b3hw: (B, 3, H/s, W/s) float32
    world metres at the cell centres, NaN in holes.
    hole_share_b: (B,) share of the pixels nothing was seen at."""

    images_b3hw: Tensor
    depth_bhw: Tensor
    coords_b3hw: Tensor
    hole_share_b: Tensor


def _fill_holes(image_b3hw: Tensor, valid_b1hw: Tensor) -> Tensor:
    """Hole pixels (valid 0) take the colour of their surroundings: averaged down a pyramid of
    valid pixels until nothing is missing, then brought back up (bilinear). float (B, 3, H, W)."""
    if bool(valid_b1hw.all()) or not bool(valid_b1hw.any()):
        return image_b3hw
    h, w = image_b3hw.shape[-2:]
    weighted = F.avg_pool2d(image_b3hw * valid_b1hw, 2, ceil_mode=True)
    weight = F.avg_pool2d(valid_b1hw, 2, ceil_mode=True)
    coarse_valid = (weight > 0).float()
    coarse = _fill_holes(weighted / weight.clamp_min(1e-6), coarse_valid)
    up = F.interpolate(coarse, size=(h, w), mode='bilinear', align_corners=False)
    return torch.where(valid_b1hw > 0, image_b3hw, up)


def render_views(images_b3hw: Tensor, depth_bhw: Tensor, T_cw_b44: Tensor, K_33: Tensor,
                 T_cw_new_b44: Tensor, stride: int = 8,
                 K_depth_33: Tensor | None = None) -> RenderedViews:
    """Each source frame b (uint8 RGB image, depth in metres on the colour pixel grid with NaN
    or <= 0 invalid, world-to-camera pose T_cw_b44[b]) seen from the camera T_cw_new_b44[b].
    K_33: the colour intrinsics, also the new views'. K_depth_33: what depth pixels are lifted
    with (`data.TrainingSet.K_depth_33`; default K_33). See the module docstring."""
    B, _, H, W = images_b3hw.shape
    K = K_33.to(torch.float64)
    K_src = K if K_depth_33 is None else K_depth_33.to(torch.float64)
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64),
                          torch.arange(W, dtype=torch.float64), indexing='ij')
    pixels_3p = torch.stack([u, v, torch.ones_like(u)]).reshape(3, H * W)
    T_src, T_new = T_cw_b44.to(torch.float64), T_cw_new_b44.to(torch.float64)

    def to_world(T_cw: Tensor, K_c: Tensor, depth_bp: Tensor) -> Tensor:
        """(B, 3, P) world points of the pixels at depth_bp along their rays."""
        T_wc = invert_se3(T_cw)
        rays = torch.linalg.inv(K_c) @ pixels_3p  # z = 1
        return T_wc[:, :3, :3] @ (rays * depth_bp[:, None]) + T_wc[:, :3, 3:]

    def to_camera(T_cw: Tensor, K_c: Tensor, X_b3p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(u, v, z) (B, P) each of world points in camera T_cw."""
        c = T_cw[:, :3, :3] @ X_b3p + T_cw[:, :3, 3:]
        z = c[:, 2]
        safe = torch.where(z.abs() > 1e-9, z, torch.ones_like(z))
        return (K_c[0, 0] * c[:, 0] / safe + K_c[0, 1] * c[:, 1] / safe + K_c[0, 2],
                K_c[1, 1] * c[:, 1] / safe + K_c[1, 2], z)

    depth = depth_bhw.to(torch.float64).reshape(B, H * W)
    seen = torch.isfinite(depth) & (depth > 0)
    X = to_world(T_src, K_src, torch.where(seen, depth, torch.ones_like(depth)))
    u_new, v_new, z_new = to_camera(T_new, K, X)
    seen &= z_new > 0.05
    # z-buffer over the B images at once: flat index b * H * W + pixel.
    zbuf = torch.full((B * H * W,), torch.inf, dtype=torch.float64)
    frame_offset = (torch.arange(B) * H * W)[:, None]
    for du in (0, 1):
        for dv in (0, 1):
            iu = torch.floor(u_new).long() + du
            iv = torch.floor(v_new).long() + dv
            near = (((u_new - iu).abs() < _SPLAT_RADIUS_PX)
                    & ((v_new - iv).abs() < _SPLAT_RADIUS_PX))
            hit = seen & near & (iu >= 0) & (iu < W) & (iv >= 0) & (iv < H)
            zbuf.scatter_reduce_(0, (frame_offset + iv * W + iu)[hit], z_new[hit], reduce='amin')
    zbuf = zbuf.reshape(B, H * W)
    have = torch.isfinite(zbuf)
    X_new = to_world(T_new, K, torch.where(have, zbuf, torch.ones_like(zbuf)))
    u_src, v_src, z_src = to_camera(T_src, K_src, X_new)
    iu, iv = torch.round(u_src).long(), torch.round(v_src).long()
    inside = (iu >= 0) & (iu < W) & (iv >= 0) & (iv < H)
    surface = depth.gather(1, (iv.clamp(0, H - 1) * W + iu.clamp(0, W - 1)))
    have &= inside & (torch.abs(z_src - surface) < _SURFACE_TOLERANCE * surface)
    # grid_sample's normalised coordinates (align_corners False: pixel centres at k + 0.5).
    grid = torch.stack([(u_src + 0.5) / W * 2 - 1, (v_src + 0.5) / H * 2 - 1], dim=-1)
    colour = F.grid_sample(images_b3hw.float(), grid.reshape(B, H, W, 2).float(),
                           mode='bilinear', padding_mode='border', align_corners=False)
    valid = have.reshape(B, 1, H, W).float()
    colour = _fill_holes(colour, valid)
    X_new = torch.where(have[:, None], X_new, torch.nan).reshape(B, 3, H, W)
    half = stride // 2
    return RenderedViews(
        images_b3hw=colour.round().clamp(0, 255).to(torch.uint8),
        depth_bhw=torch.where(have, zbuf, torch.nan).reshape(B, H, W).float(),
        coords_b3hw=X_new[:, :, half::stride, half::stride].float().contiguous(),
        hole_share_b=1.0 - valid.mean(dim=(1, 2, 3)))


def make_novel_views(images_b3hw: Tensor, depth_bhw: Tensor, T_cw_b44: Tensor, K_33: Tensor,
                     config: NovelViewConfig, generator: torch.Generator, stride: int = 8,
                     K_depth_33: Tensor | None = None, chunk: int = 32
                     ) -> tuple[RenderedViews, Tensor, Tensor]:
    """``config.copies`` novel views of each source frame (inputs as `render_views`).

    Returns (the views, their (N, 4, 4) float64 world-to-camera poses, the (N,) long index of
    each view's source frame); a frame whose draws all left too much unseen has fewer views.
    The draws come from ``generator`` alone, so a resumed run makes the same views."""
    parts: list[tuple[RenderedViews, Tensor, Tensor]] = []
    for _ in range(config.copies):
        todo = torch.arange(len(images_b3hw))
        for _attempt in range(config.attempts):
            if len(todo) == 0:
                break
            T_new = perturb_poses(T_cw_b44[todo].to(torch.float64), generator,
                                  config.min_magnitude, config.max_magnitude)
            kept = torch.zeros(len(todo), dtype=torch.bool)
            for start in range(0, len(todo), chunk):
                idx = todo[start:start + chunk]
                views = render_views(images_b3hw[idx], depth_bhw[idx], T_cw_b44[idx], K_33,
                                     T_new[start:start + chunk], stride, K_depth_33)
                good = views.hole_share_b <= config.max_hole_share
                kept[start:start + chunk] = good
                parts.append((RenderedViews(views.images_b3hw[good], views.depth_bhw[good],
                                            views.coords_b3hw[good], views.hole_share_b[good]),
                              T_new[start:start + chunk][good], idx[good]))
            todo = todo[~kept]
    if not parts:
        H, W = images_b3hw.shape[-2:]
        empty = RenderedViews(torch.zeros(0, 3, H, W, dtype=torch.uint8),
                              torch.zeros(0, H, W), torch.zeros(0, 3, H // stride, W // stride),
                              torch.zeros(0))
        return empty, torch.zeros(0, 4, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    views = RenderedViews(*(torch.cat([getattr(p[0], f) for p in parts])
                            for f in ('images_b3hw', 'depth_bhw', 'coords_b3hw', 'hole_share_b')))
    return views, torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])


__all__ = ['NovelViewConfig', 'RenderedViews', 'make_novel_views', 'render_views']
