"""Match recorded poses to ground truth by stamp and summarise accuracy and latency.

Works on the JSON files of `dsac_ros.demo.player` (``--gt-out``) and
`dsac_ros.demo.pose_recorder`; no rclpy, so the demo, tests and benchmarks share it.
All poses are camera-to-world T_wc (4x4, metres).
"""

from __future__ import annotations

from dataclasses import dataclass
import json
from pathlib import Path

import numpy as np

from dsac_ros.evaluation.metrics import median, within
from dsac_ros.geometry.transforms import pose_errors_np


@dataclass(frozen=True)
class MatchedPoses:
    """Estimated and ground-truth poses of the same frames.

    Attributes:
        T_wc_est_n44, T_wc_gt_n44: (N, 4, 4) camera-to-world poses.
        stamp_ns_n: (N,) image stamps, nanoseconds.
        latency_ms_n: (N,) image stamp -> pose reception at the recorder, milliseconds.
    """

    T_wc_est_n44: np.ndarray
    T_wc_gt_n44: np.ndarray
    stamp_ns_n: np.ndarray
    latency_ms_n: np.ndarray


def load_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def on_common_frames(recorded_a: dict, recorded_b: dict) -> tuple[dict, dict]:
    """Two recordings restricted to the poses of the image stamps both have (two nodes on the
    same camera: their accuracy on the same frames)."""
    common = ({int(p['stamp_ns']) for p in recorded_a['poses']}
              & {int(p['stamp_ns']) for p in recorded_b['poses']})
    return tuple({**r, 'poses': [p for p in r['poses'] if int(p['stamp_ns']) in common]}
                 for r in (recorded_a, recorded_b))


def match_by_stamp(gt: dict, recorded: dict) -> MatchedPoses:
    """Pairs every recorded pose with the published frame of the same stamp (exact match)."""
    gt_by_stamp = {int(f['stamp_ns']): np.asarray(f['T_wc'], np.float64) for f in gt['frames']}
    est, ref, stamps, latency = [], [], [], []
    for pose in recorded['poses']:
        stamp = int(pose['stamp_ns'])
        if stamp not in gt_by_stamp:
            continue
        est.append(np.asarray(pose['T_wc'], np.float64))
        ref.append(gt_by_stamp[stamp])
        stamps.append(stamp)
        latency.append((int(pose['receive_ns']) - stamp) / 1e6)
    empty = np.zeros((0, 4, 4))
    return MatchedPoses(np.stack(est) if est else empty, np.stack(ref) if ref else empty,
                        np.asarray(stamps, np.int64), np.asarray(latency, np.float64))


@dataclass(frozen=True)
class AccuracySummary:
    """Accuracy over the frames that got a pose, and coverage of the published frames."""

    frames_published: int
    poses_received: int
    poses_matched: int
    within_5cm_5deg_pct: float  # of matched poses
    within_5cm_5deg_of_published_pct: float  # of all published frames (no pose = failure)
    median_rotation_deg: float
    median_translation_m: float
    median_latency_ms: float
    p90_latency_ms: float


def summarize_recording(gt: dict, recorded: dict, cm: float = 5.0, deg: float = 5.0
                        ) -> AccuracySummary:
    """Accuracy of a recorded run against the player's ground truth (errors and thresholds of
    `dsac_ros.evaluation.metrics`; a published frame without a pose counts as a failure in
    ``within_5cm_5deg_of_published_pct``)."""
    matched = match_by_stamp(gt, recorded)
    n = len(matched.stamp_ns_n)
    rot, trans = pose_errors_np(matched.T_wc_est_n44, matched.T_wc_gt_n44, 'T_wc')
    good = int(np.count_nonzero(within(rot, trans, cm / 100.0, deg)))
    nan = float('nan')
    published = len(gt['frames'])
    return AccuracySummary(
        frames_published=published,
        poses_received=len(recorded['poses']),
        poses_matched=n,
        within_5cm_5deg_pct=100.0 * good / n if n else 0.0,
        within_5cm_5deg_of_published_pct=100.0 * good / published if published else 0.0,
        median_rotation_deg=median(rot),
        median_translation_m=median(trans),
        median_latency_ms=median(matched.latency_ms_n),
        p90_latency_ms=float(np.percentile(matched.latency_ms_n, 90)) if n else nan,
    )


def plot_top_view(gt: dict, recorded: dict, out_png: str | Path, title: str = '') -> Path:
    """PNG of the camera centres seen from above (world x-y plane): GT line, estimates dots."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    matched = match_by_stamp(gt, recorded)
    gt_xyz = np.asarray([np.asarray(f['T_wc'])[:3, 3] for f in gt['frames']])
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    if len(gt_xyz):
        ax.plot(gt_xyz[:, 0], gt_xyz[:, 1], '-', color='0.3', lw=1.5, label='ground truth')
    if len(matched.stamp_ns_n):
        est = matched.T_wc_est_n44[:, :3, 3]
        ref = matched.T_wc_gt_n44[:, :3, 3]
        for a, b in zip(est, ref):
            ax.plot([a[0], b[0]], [a[1], b[1]], '-', color='tab:red', lw=0.5, alpha=0.5)
        ax.plot(est[:, 0], est[:, 1], '.', color='tab:blue', ms=4, label='DSAC estimate')
    ax.set_xlabel('x (m)')
    ax.set_ylabel('y (m)')
    ax.set_aspect('equal', adjustable='datalim')
    ax.grid(True, lw=0.3)
    ax.legend(loc='best')
    ax.set_title(title or 'camera positions, top view')
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
