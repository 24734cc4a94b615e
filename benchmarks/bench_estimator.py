"""Benchmark: the DSAC estimator (RANSAC / SoftAM / DSAC selection) vs cv2.solvePnPRansac.

Same synthetic inputs for every method in one run: scene-coordinate maps of 60x80 cells
(640x480 camera) and 30x40 cells (320x240), given outlier fraction and pixel noise, several
frames. Prints time per frame, time per hypothesis, accuracy (median errors, % of frames within
5 cm / 5 deg) and the ratio ours / OpenCV.

    .venv/bin/python benchmarks/bench_estimator.py [--frames 30] [--device auto] [--threads 1]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
import statistics
import time

import cv2
import numpy as np
import torch

from dsac_ros.dsac import DsacEstimator, EstimatorConfig, Selection
from dsac_ros.dsac.testing import (
    CorrespondenceCase,
    CorrespondenceCaseConfig,
    make_correspondence_case,
)
from dsac_ros.geometry.transforms import pose_errors


@dataclass(frozen=True)
class BenchConfig:
    frames: int = 30
    hypotheses: int = 256
    refinement_steps: int = 8
    outlier_fraction: float = 0.5
    noise_px: float = 1.0
    threshold_px: float = 10.0
    device: str = 'auto'
    threads: int = 1
    seed: int = 0
    warmup: int = 3


@dataclass(frozen=True)
class Result:
    name: str
    ms_per_frame: list[float]
    deg: np.ndarray
    cm: np.ndarray

    def summary(self, hypotheses: int, reference: Result | None) -> str:
        ms = statistics.median(self.ms_per_frame)
        ok = float(np.mean((self.deg < 5.0) & (self.cm < 5.0)) * 100)
        fine = float(np.mean((self.deg < 0.5) & (self.cm < 1.0)) * 100)
        line = (f'  {self.name:34s} {ms:8.2f} ms/frame {ms / hypotheses * 1000:8.1f} us/hyp  '
                f'median {np.median(self.deg):6.3f} deg {np.median(self.cm):6.3f} cm  '
                f'5cm5deg {ok:5.1f}%  1cm0.5deg {fine:5.1f}%')
        if reference is not None:
            ratio = ms / statistics.median(reference.ms_per_frame)
            line += f'  time ratio ours/OpenCV {ratio:5.2f}'
        return line


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class OursMethod:
    """The estimator on one frame at a time (as in deployment)."""

    def __init__(self, case: CorrespondenceCase, config: BenchConfig, selection: Selection,
                 device: torch.device) -> None:
        self.name = f'ours {selection.value}'
        self.estimator = DsacEstimator(EstimatorConfig(
            num_hypotheses=config.hypotheses, inlier_threshold_px=config.threshold_px,
            refinement_steps=config.refinement_steps, selection=selection, seed=config.seed))
        self.coords = case.scene_coords_b3hw.float().to(device)
        self.K = case.K_b33.float().to(device)
        self.device = device

    def __call__(self, i: int) -> tuple[float, torch.Tensor]:
        _sync(self.device)
        start = time.perf_counter()
        out = self.estimator.estimate(self.coords[i:i + 1], self.K[i:i + 1])
        _sync(self.device)
        ms = (time.perf_counter() - start) * 1000
        return ms, out.T_cw_b44[0].double().cpu()


class OpenCvMethod:
    """solvePnPRansac (P3P minimal sets, same iterations and threshold) + SOLVEPNP_ITERATIVE
    refinement on its inliers; both timed."""

    name = 'opencv solvePnPRansac+iterative'

    def __init__(self, case: CorrespondenceCase, config: BenchConfig) -> None:
        pixels = case.pixels_2hw.reshape(2, -1).T.numpy().astype(np.float64)
        self.inputs = []
        for i in range(case.scene_coords_b3hw.shape[0]):
            obj = case.scene_coords_b3hw[i].reshape(3, -1).T.numpy().astype(np.float64)
            keep = np.isfinite(obj).all(axis=1)
            self.inputs.append((np.ascontiguousarray(obj[keep]),
                                np.ascontiguousarray(pixels[keep]), case.K_b33[i].numpy()))
        self.config = config

    def __call__(self, i: int) -> tuple[float, torch.Tensor]:
        obj, img, K = self.inputs[i]
        start = time.perf_counter()
        # confidence just below 1: OpenCV caps the iterations adaptively, this keeps all 256
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            obj, img, K, None, iterationsCount=self.config.hypotheses,
            reprojectionError=self.config.threshold_px, confidence=1.0 - 1e-9,
            flags=cv2.SOLVEPNP_P3P)
        if ok and inliers is not None and len(inliers) >= 6:
            idx = inliers[:, 0]
            ok, rvec, tvec = cv2.solvePnP(obj[idx], img[idx], K, None, rvec, tvec,
                                          useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        ms = (time.perf_counter() - start) * 1000
        T = np.eye(4)
        if ok:
            T[:3, :3] = cv2.Rodrigues(rvec)[0]
            T[:3, 3] = tvec[:, 0]
        return ms, torch.from_numpy(T)


def run_interleaved(case: CorrespondenceCase, config: BenchConfig,
                    methods: list) -> list[Result]:
    """Each frame through every method in turn, so load changes on a shared machine hit all
    methods alike; the first `warmup` frames are run once untimed."""
    for i in range(min(config.warmup, case.scene_coords_b3hw.shape[0])):
        for method in methods:
            method(i)
    times: list[list[float]] = [[] for _ in methods]
    poses: list[list[torch.Tensor]] = [[] for _ in methods]
    cv2.setRNGSeed(config.seed)
    for i in range(case.scene_coords_b3hw.shape[0]):
        for k, method in enumerate(methods):
            ms, T = method(i)
            times[k].append(ms)
            poses[k].append(T)
    results = []
    for k, method in enumerate(methods):
        deg, m = pose_errors(torch.stack(poses[k]), case.T_cw_b44)
        results.append(Result(method.name, times[k], deg.numpy(), m.numpy() * 100))
    return results


def run_ours_batched(case: CorrespondenceCase, config: BenchConfig,
                     device: torch.device) -> Result:
    """All frames in one call (B = frames): throughput of the batched path."""
    estimator = DsacEstimator(EstimatorConfig(num_hypotheses=config.hypotheses,
                                              inlier_threshold_px=config.threshold_px,
                                              refinement_steps=config.refinement_steps,
                                              seed=config.seed))
    coords = case.scene_coords_b3hw.float().to(device)
    K = case.K_b33.float().to(device)
    estimator.estimate(coords[:2], K[:2])
    _sync(device)
    start = time.perf_counter()
    out = estimator.estimate(coords, K)
    _sync(device)
    per_frame = (time.perf_counter() - start) * 1000 / coords.shape[0]
    deg, m = pose_errors(out.T_cw_b44.double().cpu(), case.T_cw_b44)
    return Result('ours ransac, all frames batched', [per_frame], deg.numpy(), m.numpy() * 100)


def run(config: BenchConfig) -> None:
    torch.set_num_threads(config.threads)
    cv2.setNumThreads(config.threads)
    if config.device == 'auto':
        device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    else:
        device = torch.device(config.device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    print(f'device: {device} ({name}); torch threads {torch.get_num_threads()}, '
          f'OpenCV threads {cv2.getNumThreads()}, torch {torch.__version__}, '
          f'OpenCV {cv2.__version__}')
    print(f'{config.frames} frames, {config.hypotheses} hypotheses, '
          f'{config.refinement_steps} refinement steps, {config.outlier_fraction:.0%} outliers, '
          f'{config.noise_px} px noise, threshold {config.threshold_px} px')
    for (h, w) in ((60, 80), (30, 40)):
        case_cfg = CorrespondenceCaseConfig(
            height=h, width=w, stride=8, focal_px=525.0 * (w * 8) / 640.0,
            noise_px=config.noise_px, outlier_fraction=config.outlier_fraction)
        case = make_correspondence_case(case_cfg, batch=config.frames, seed=config.seed)
        print(f'map {h}x{w} cells ({w * 8}x{h * 8} image, {h * w} correspondences):')
        methods = [OpenCvMethod(case, config)]
        methods += [OursMethod(case, config, selection, device) for selection in Selection]
        reference, *ours = run_interleaved(case, config, methods)
        print(reference.summary(config.hypotheses, None))
        for result in ours:
            print(result.summary(config.hypotheses, reference))
        print(run_ours_batched(case, config, device).summary(config.hypotheses, reference))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    defaults = BenchConfig()
    parser.add_argument('--frames', type=int, default=defaults.frames)
    parser.add_argument('--hypotheses', type=int, default=defaults.hypotheses)
    parser.add_argument('--refinement-steps', type=int, default=defaults.refinement_steps)
    parser.add_argument('--outliers', type=float, default=defaults.outlier_fraction)
    parser.add_argument('--noise', type=float, default=defaults.noise_px)
    parser.add_argument('--device', default=defaults.device, choices=['auto', 'cpu', 'cuda'])
    parser.add_argument('--threads', type=int, default=defaults.threads)
    parser.add_argument('--seed', type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    run(BenchConfig(frames=args.frames, hypotheses=args.hypotheses,
                    refinement_steps=args.refinement_steps, outlier_fraction=args.outliers,
                    noise_px=args.noise, device=args.device, threads=args.threads,
                    seed=args.seed))


if __name__ == '__main__':
    main()
