"""Score CNN: reprojection-error image of one pose hypothesis -> scalar score (higher = better).

The paper scored 40x40 error images with a 13-layer VGG net (6 M parameters). Our error images
are the scene-coordinate grid (H/8 x W/8, e.g. 30x40 at 320x240) and the score mostly needs
"how many cells are close to zero error, and how spatially coherent", so a small net is enough
and keeps scoring 256 hypotheses per frame cheap on a CPU: errors are clamped at
``clamp_px`` and divided by it (so they lie in [0, 1] and large outliers do not dominate), then
four 3x3 convs (two strided), global average pooling and a linear layer give the score. About
25 k parameters. The soft-inlier fraction of the image (the estimator's soft inlier count at its
threshold and beta, over the cells) is fed to the linear layer as an extra feature so that the
net starts close to inlier counting. Both the clamp and that feature follow the estimator's
inlier threshold (`ScoreNetConfig.for_threshold`), so a net trained at 320x240 (5 px) sees the
same angles as one at 640x480 (10 px).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ScoreNetConfig:
    """Architecture and input scaling of :class:`ScoreNet`.

    clamp_px: reprojection errors are clamped to [0, clamp_px] pixels and divided by it.
    inlier_threshold_px / soft_inlier_beta: threshold (px) and sharpness (1/px) of the
        soft-inlier-fraction feature; the estimator's tau and beta (`for_threshold`).
    width: channels of the first conv (doubled once).
    output_scale: fixed factor on the linear layer's output. Score targets are
        -beta * pose_loss (paper Sec. 4.1, beta = 10, pose loss in deg / cm), i.e. tens to
        hundreds; the scale lets a small learning rate reach them. Old files without it load
        with 1.0 (without soft_inlier_beta: 0.5).
    """

    clamp_px: float = 50.0
    inlier_threshold_px: float = 10.0
    soft_inlier_beta: float = 0.5
    width: int = 16
    output_scale: float = 1.0

    # clamp_px = this many inlier thresholds (50 px at the 5 px of 320x240 images)
    CLAMP_THRESHOLDS = 10.0

    def __post_init__(self) -> None:
        if (self.clamp_px <= 0 or self.width < 1 or not self.output_scale > 0
                or not self.inlier_threshold_px > 0 or not self.soft_inlier_beta > 0):
            raise ValueError(f'bad ScoreNetConfig: {self}')

    @classmethod
    def for_threshold(cls, inlier_threshold_px: float, soft_inlier_beta: float,
                      **kwargs: Any) -> ScoreNetConfig:
        """Input scaling of a new net from the estimator's tau (px) and beta (1/px): errors
        clamped at `CLAMP_THRESHOLDS` tau, the feature at tau and beta."""
        return cls(clamp_px=cls.CLAMP_THRESHOLDS * float(inlier_threshold_px),
                   inlier_threshold_px=float(inlier_threshold_px),
                   soft_inlier_beta=float(soft_inlier_beta), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreNetConfig:
        try:
            return cls(clamp_px=float(d['clamp_px']),
                       inlier_threshold_px=float(d['inlier_threshold_px']),
                       soft_inlier_beta=float(d.get('soft_inlier_beta', 0.5)),
                       width=int(d['width']),
                       output_scale=float(d.get('output_scale', 1.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f'bad ScoreNetConfig dict {d!r}: {exc}') from exc


class ScoreNet(nn.Module):
    """Error images (N, 1, h, w) in pixels -> scores (N,). NaN errors (invalid cells) count
    as the clamp value (outliers)."""

    def __init__(self, config: ScoreNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or ScoreNetConfig()
        w = self.config.width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        )
        self.linear = nn.Linear(2 * w + 1, 1)

    def forward(self, errors_n1hw: Tensor) -> Tensor:
        """errors_n1hw: (N, 1, h, w) reprojection errors in pixels -> (N,) scores."""
        if errors_n1hw.dim() != 4 or errors_n1hw.shape[1] != 1:
            raise ValueError(f'expected error images (N, 1, h, w), got {tuple(errors_n1hw.shape)}')
        c = self.config
        e = errors_n1hw.to(self.linear.weight.dtype)  # the net's dtype (float32 usually)
        e = torch.nan_to_num(e, nan=c.clamp_px, posinf=c.clamp_px)
        e = e.clamp(0.0, c.clamp_px) / c.clamp_px
        # Soft inliers (sigmoid of threshold minus error) keep this feature differentiable.
        soft_inliers = torch.sigmoid(c.soft_inlier_beta * (c.inlier_threshold_px
                                                           - e * c.clamp_px))
        inlier_fraction = soft_inliers.mean(dim=(1, 2, 3))
        pooled = self.features(e).mean(dim=(2, 3))
        x = torch.cat([pooled, inlier_fraction[:, None]], dim=1)
        return self.linear(x).squeeze(1) * c.output_scale

    def score_fn(self, errors_bnhw: Tensor) -> Tensor:
        """ScoreFn wrapper for the estimator: (B, N, H, W) pixels -> (B, N) scores."""
        b, n, h, w = errors_bnhw.shape
        return self(errors_bnhw.reshape(b * n, 1, h, w)).reshape(b, n)
