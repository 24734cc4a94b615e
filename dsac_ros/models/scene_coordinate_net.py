"""Coordinate CNN: a fully convolutional scene coordinate regressor with output stride 8.

The paper used a 33 M parameter VGG net on 42x42 patches. We use a compact residual FCN sized
for CPU training (about 1.4 M parameters, receptive field ~150 px at 320x240): three strided 3x3
stages take the image to 1/8 resolution, a few residual blocks (the later ones dilated, which
widens the receptive field at no cost in resolution) mix context, and a 1x1 MLP head predicts
an offset that is added to the scene mean (a buffer saved with the checkpoint). Predicting
offsets around the mean keeps the initial output in the right place and speeds convergence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import enum
from typing import Any

import torch
from torch import Tensor, nn

OUTPUT_STRIDE = 8


class Norm(str, enum.Enum):
    """Normalisation layer: BatchNorm is fastest on CPU; GroupNorm is batch-size independent."""

    BATCH = 'batch'
    GROUP = 'group'


@dataclass(frozen=True)
class SceneCoordinateNetConfig:
    """Architecture of :class:`SceneCoordinateNet` (saved in checkpoints as a plain dict).

    stem_widths: channels of the three stride-2 stages (1/2, 1/4, 1/8 resolution).
    num_blocks: residual blocks at 1/8 resolution; dilations cycle through ``dilations``.
    head_width: hidden width of the 1x1 regression head.
    """

    stem_widths: tuple[int, int, int] = (32, 64, 128)
    num_blocks: int = 4
    dilations: tuple[int, ...] = (1, 2, 4, 1)
    head_width: int = 256
    norm: Norm = Norm.BATCH

    @classmethod
    def small(cls) -> SceneCoordinateNetConfig:
        """A ~50 k parameter variant for tests and quick experiments."""
        return cls(stem_widths=(8, 16, 32), num_blocks=2, dilations=(1, 2), head_width=64)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d['stem_widths'] = list(self.stem_widths)
        d['dilations'] = list(self.dilations)
        d['norm'] = self.norm.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneCoordinateNetConfig:
        try:
            return cls(
                stem_widths=tuple(int(w) for w in d['stem_widths']),
                num_blocks=int(d['num_blocks']),
                dilations=tuple(int(x) for x in d['dilations']),
                head_width=int(d['head_width']),
                norm=Norm(d['norm']),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f'bad SceneCoordinateNetConfig dict {d!r}: {exc}') from exc


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind is Norm.BATCH:
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(min(8, channels), channels)


def _conv_block(cin: int, cout: int, stride: int, norm: Norm) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        _norm(norm, cout),
        nn.ReLU(inplace=True),
    )


class _ResBlock(nn.Module):
    def __init__(self, channels: int, dilation: int, norm: Norm) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation,
                               bias=False)
        self.norm1 = _norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, channels)
        # Zero-init the last norm so each block starts as the identity (faster, stabler start).
        nn.init.zeros_(self.norm2.weight)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return torch.relu(x + y)


class SceneCoordinateNet(nn.Module):
    """Image (B, 3, H, W) float in [0, 1] -> scene coordinates (B, 3, H/8, W/8) in metres,
    world frame. H and W must be multiples of 8. Cell (i, j) is the coordinate seen at pixel
    (u, v) = (8 j + 4, 8 i + 4) (see ``dsac_ros.geometry.camera.cell_centers``).

    ``scene_mean`` (3,) is a buffer (world frame, metres) that the head's offsets are added to;
    set it from the training targets before training (``set_scene_mean``).
    """

    stride = OUTPUT_STRIDE

    def __init__(self, config: SceneCoordinateNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or SceneCoordinateNetConfig()
        c = self.config
        if c.num_blocks < 0 or not c.dilations:
            raise ValueError(f'bad SceneCoordinateNetConfig: {c}')
        w1, w2, w3 = c.stem_widths
        self.encoder = nn.Sequential(
            _conv_block(3, w1, 2, c.norm),
            _conv_block(w1, w2, 2, c.norm),
            _conv_block(w2, w2, 1, c.norm),
            _conv_block(w2, w3, 2, c.norm),
            *[_ResBlock(w3, c.dilations[i % len(c.dilations)], c.norm)
              for i in range(c.num_blocks)],
        )
        self.head = nn.Sequential(
            nn.Conv2d(w3, c.head_width, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c.head_width, c.head_width, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c.head_width, 3, 1),
        )
        # Small initial offsets: the net starts by predicting the scene mean everywhere.
        nn.init.normal_(self.head[-1].weight, std=1e-3)
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer('scene_mean', torch.zeros(3))
        # ImageNet-like normalisation constants, fixed (not learned).
        self.register_buffer('pixel_mean', torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer('pixel_std', torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1),
                             persistent=False)

    def stem(self) -> nn.Sequential:
        """The encoder's strided convolutions up to 1/8 resolution (before the residual
        blocks): the generic low-level part, which `CoordStageConfig.freeze_stem` keeps."""
        first_block = next((i for i, m in enumerate(self.encoder) if isinstance(m, _ResBlock)),
                           len(self.encoder))
        return self.encoder[:first_block]

    def set_scene_mean(self, mean_3: Tensor) -> None:
        """Set the world-frame mean (metres) that predictions are offsets from."""
        mean_3 = torch.as_tensor(mean_3, dtype=torch.float32).reshape(3)
        if not torch.isfinite(mean_3).all():
            raise ValueError(f'scene mean must be finite, got {mean_3.tolist()}')
        self.scene_mean.copy_(mean_3.to(self.scene_mean.device))

    def forward(self, image_b3hw: Tensor) -> Tensor:
        """image_b3hw: (B, 3, H, W) float in [0, 1] -> (B, 3, H/8, W/8) float32 metres."""
        return self.regress(self.features(image_b3hw))

    def features(self, image_b3hw: Tensor) -> Tensor:
        """image_b3hw: (B, 3, H, W) float in [0, 1] -> encoder features (B, C, H/8, W/8), C =
        ``config.stem_widths[-1]`` (the dtype of the forward: bf16 / fp16 under autocast)."""
        if image_b3hw.dim() != 4 or image_b3hw.shape[1] != 3:
            raise ValueError(f'expected image (B, 3, H, W), got {tuple(image_b3hw.shape)}')
        h, w = image_b3hw.shape[-2:]
        if h % self.stride or w % self.stride or h == 0 or w == 0:
            raise ValueError(f'image size {w}x{h} must be a positive multiple of {self.stride}')
        return self.encoder((image_b3hw - self.pixel_mean) / self.pixel_std)

    def regress(self, features_bchw: Tensor) -> Tensor:
        """Encoder features (B, C, h, w) -> scene coordinates (B, 3, h, w) float32 metres.

        The head is 1x1 convolutions, a per-cell MLP (`regress_cells` runs it on a list of
        cells)."""
        # The head (and the output) stays in float32 even under CUDA autocast: the offsets need
        # millimetre resolution over metres.
        with torch.autocast(device_type=features_bchw.device.type, enabled=False):
            offsets = self.head(features_bchw.float())
        return offsets + self.scene_mean.view(1, 3, 1, 1)

    def regress_cells(self, features_nc: Tensor) -> Tensor:
        """Encoder features of N cells (N, C) -> their scene coordinates (N, 3) float32 metres:
        `regress` cell by cell, as matrix products (15 % faster than a 1x1 convolution over
        an N x 1 image on a CPU; `training.stages.train_head` runs it on buffered cells)."""
        x = features_nc.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            for layer in self.head:
                if isinstance(layer, nn.Conv2d):
                    x = nn.functional.linear(x, layer.weight.flatten(1), layer.bias)
                else:
                    x = layer(x)
        return x + self.scene_mean
