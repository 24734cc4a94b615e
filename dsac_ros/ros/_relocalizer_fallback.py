"""TODO(ros-edge): remove once dsac_ros.relocalizer lands. Minimal stand-in with the contract's
API (RelocalizerConfig, Relocalizer.from_checkpoint, localize) so the ROS edge runs meanwhile."""

from __future__ import annotations

from dataclasses import dataclass, field
import time
from types import SimpleNamespace

import cv2
import numpy as np
import torch

from dsac_ros.dsac import DsacEstimator, EstimatorConfig
from dsac_ros.models.checkpoint import load_checkpoint


@dataclass(frozen=True)
class RelocalizerConfig:
    device: str = 'auto'
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    seed: int = 0


class Relocalizer:
    def __init__(self, checkpoint, config: RelocalizerConfig) -> None:
        self.ckpt = checkpoint
        self.config = config
        self.device = torch.device('cpu' if config.device == 'auto' else config.device)
        self.estimator = DsacEstimator(config.estimator, None)
        self.generator = torch.Generator().manual_seed(config.seed)

    @classmethod
    def from_checkpoint(cls, path, config: RelocalizerConfig) -> Relocalizer:
        device = 'cpu' if config.device == 'auto' else config.device
        return cls(load_checkpoint(path, device), config)

    def set_estimator_config(self, config: EstimatorConfig) -> None:
        self.estimator = DsacEstimator(config, None)

    @torch.no_grad()
    def localize(self, image_rgb_hw3: np.ndarray, K_33=None):
        h, w = self.ckpt.image_size
        H, W = image_rgb_hw3.shape[:2]
        K = self.ckpt.K.numpy() if K_33 is None else np.asarray(K_33, np.float64).copy()
        if (H, W) != (h, w):
            image_rgb_hw3 = cv2.resize(image_rgb_hw3, (w, h), interpolation=cv2.INTER_AREA)
            if K_33 is not None:
                K[0] *= w / W
                K[1] *= h / H
        t0 = time.perf_counter()
        x = torch.from_numpy(image_rgb_hw3).permute(2, 0, 1)[None].float() / 255.0
        coords = self.ckpt.coord_net(x.to(self.device)).double()
        t1 = time.perf_counter()
        est = self.estimator.estimate(coords, torch.from_numpy(K)[None], 8, self.generator)
        t2 = time.perf_counter()
        return SimpleNamespace(
            T_wc=est.T_wc_b44[0].numpy(), T_cw=est.T_cw_b44[0].numpy(),
            valid=bool(est.valid_b[0]), inlier_count=int(est.inlier_count_b[0]),
            inlier_ratio=float(est.inlier_ratio_b[0]),
            score_entropy=float(est.score_entropy_b[0]),
            covariance=est.covariance_b66[0].numpy(),
            timings={'network': 1e3 * (t1 - t0), 'estimator': 1e3 * (t2 - t1)})
