"""Evaluation reports: a JSON file, PNG plots (error CDFs, top view of camera centres) and a
text table shaped like the paper's Tables 1 and 2 (rows: scenes; columns: RANSAC / SoftAM /
DSAC)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from dsac_ros.data.view_coverage import BINS
from dsac_ros.evaluation.coverage import accuracy_by_coverage
from dsac_ros.evaluation.metrics import THRESHOLDS, summarize, threshold_key
from dsac_ros.evaluation.run import SceneResult

_LABELS = {'ransac': 'RANSAC', 'softam': 'SoftAM', 'dsac': 'DSAC'}
_COLOURS = {'ransac': 'tab:blue', 'softam': 'tab:orange', 'dsac': 'tab:green',
            'ransac_rgbd': 'tab:purple', 'softam_rgbd': 'tab:brown', 'dsac_rgbd': 'tab:olive'}
_AXES = 'xyz'


def _label(key: str) -> str:
    """'ransac' -> 'RANSAC', 'ransac_rgbd' -> 'RANSAC RGB-D' (`run.result_key`)."""
    base, _, mode = key.partition('_')
    label = _LABELS.get(base, base)
    return f'{label} RGB-D' if mode == 'rgbd' else (label if not mode else key)


def _finite_or_none(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy to lists, non-finite floats (no pose) to null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _finite_or_none(obj)
    return obj


def accuracy_by_bin(result: SceneResult) -> dict[str, dict[str, dict[str, Any]]]:
    """Selection mode -> coverage bin ('near', 'mid', 'far') -> ErrorSummary dict of the
    frames in that bin; empty without coverage."""
    if result.coverage is None:
        return {}
    return {key: {name: summary.to_dict() for name, summary in accuracy_by_coverage(
        result.coverage.nearest, sel.rotation_deg_n, sel.translation_m_n, sel.valid_n).items()}
        for key, sel in result.selections.items()}


def scene_to_dict(result: SceneResult) -> dict[str, Any]:
    """JSON-ready dict of one scene: summaries, mean timings, per-frame results and, for a
    test split, the coverage by the training views (``coverage``: median / p90 distances
    and angles to the nearest training view, bins, train/test overlap, accuracy per bin).

    Errors: rotation in degrees, translation (camera centre) in metres, null = no pose.
    Poses: T_wc camera-to-world 4x4, row-major.
    """
    cov = result.coverage
    selections = {}
    for key, sel in result.selections.items():
        selections[key] = {
            'mode': sel.mode.value,
            'depth_fallbacks': sel.depth_fallbacks,
            'summary': sel.summary.to_dict(),
            'covariance_calibration': (sel.calibration.to_dict()
                                       if sel.calibration is not None else None),
            'estimator_ms_mean': float(np.mean(sel.estimator_ms_n)) if sel.valid_n.size else None,
            'frames': [
                {'name': name, 'valid': bool(v), 'rotation_deg': r, 'translation_m': t,
                 'inlier_ratio': q, 'T_wc': T, **({} if cov is None else cov.nearest.per_frame(i))}
                for i, (name, v, r, t, q, T) in enumerate(zip(
                    result.frame_names, sel.valid_n, sel.rotation_deg_n, sel.translation_m_n,
                    sel.inlier_ratio_n, sel.T_wc_n44))],
        }
    coverage = None
    if cov is not None:
        coverage = {**cov.summary(), 'accuracy_by_bin': accuracy_by_bin(result)}
    return _clean({
        'scene': result.scene,
        'scene_root': result.scene_root,
        'checkpoint': result.checkpoint,
        'split': result.split,
        'device': result.device,
        'scoring': result.scoring,
        'inlier_threshold_px': result.inlier_threshold_px,
        'frames': len(result.frame_names),
        'depth_noise': result.depth_noise,
        'timings_ms_mean': {
            'preprocess': float(np.mean(result.preprocess_ms_n)) if result.frame_names else None,
            'network': float(np.mean(result.network_ms_n)) if result.frame_names else None,
        },
        'T_wc_gt': result.T_wc_gt_n44,
        'coverage': coverage,
        'selections': selections,
    })


def combined_summaries(results: Sequence[SceneResult]) -> dict[str, dict[str, Any]]:
    """'Average' (mean over scenes of each scene's numbers) and 'Complete' (all frames pooled),
    per selection mode, as in the paper's Table 1."""
    modes = _modes(results)
    out: dict[str, dict[str, Any]] = {'average': {}, 'complete': {}}
    for mode in modes:
        present = [r.selections[mode] for r in results if mode in r.selections]
        rot = np.concatenate([s.rotation_deg_n for s in present])
        trans = np.concatenate([s.translation_m_n for s in present])
        valid = np.concatenate([s.valid_n for s in present])
        out['complete'][mode] = summarize(rot, trans, valid).to_dict()
        summaries = [s.summary for s in present]
        out['average'][mode] = {
            'within_pct': {k: float(np.mean([s.within_pct[k] for s in summaries]))
                           for k in summaries[0].within_pct},
            'median_rotation_deg': float(np.mean([s.median_rotation_deg for s in summaries])),
            'median_translation_m': float(np.mean([s.median_translation_m for s in summaries])),
        }
    return out


def _modes(results: Sequence[SceneResult]) -> list[str]:
    modes: list[str] = []
    for r in results:
        modes.extend(m for m in r.selections if m not in modes)
    return modes


def ground_plane_axes(T_wc_n44: np.ndarray) -> tuple[int, int, int]:
    """(a, b, up): world axes spanning the ground plane and the vertical axis.

    The vertical is the world axis closest to the mean camera 'up' direction (OpenCV cameras:
    -y of the camera, i.e. -R_wc[:, 1]), since hand-held and robot cameras are held roughly
    upright. Synthetic scenes (z up) give (0, 1, 2): an x-y view; 7-Scenes (y down) gives
    (0, 2, 1): an x-z view.
    """
    T = np.asarray(T_wc_n44, dtype=np.float64).reshape(-1, 4, 4)
    up = -T[:, :3, 1].mean(axis=0) if len(T) else np.array([0.0, 0.0, 1.0])
    vertical = int(np.argmax(np.abs(up)))
    a, b = (i for i in range(3) if i != vertical)
    return a, b, vertical


def plot_error_cdf(result: SceneResult, path: str | Path) -> Path:
    """PNG: cumulative distribution of translation (cm) and rotation (deg) errors per mode."""
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_t, ax_r = fig.subplots(1, 2)
    n = len(result.frame_names)
    x_max = {}
    for ax, attr, scale in ((ax_t, 'translation_m_n', 100.0), (ax_r, 'rotation_deg_n', 1.0)):
        # Show at least 0..10 (the paper's thresholds), at most 1000 (far-off failures).
        finite = np.concatenate([scale * getattr(s, attr) for s in result.selections.values()])
        finite = finite[np.isfinite(finite)]
        top = 1.2 * float(finite.max()) if finite.size else 10.0
        x_max[ax] = float(np.clip(top, 10.0, 1000.0))
        for mode, sel in result.selections.items():
            e = np.sort(scale * np.asarray(getattr(sel, attr)))
            e = e[np.isfinite(e)]
            frac = 100.0 * np.arange(1, len(e) + 1) / max(n, 1)
            ax.step(np.concatenate([[0.0], e, [x_max[ax]]]),
                    np.concatenate([[0.0], frac, frac[-1:] if len(e) else [0.0]]),
                    where='post', color=_COLOURS.get(mode), label=_label(mode))
    for ax, unit, limit in ((ax_t, 'translation error (cm)', 5.0),
                            (ax_r, 'rotation error (deg)', 5.0)):
        ax.set_xlim(0.0, x_max[ax])
        ax.axvline(limit, color='grey', linestyle=':', linewidth=1)
        ax.set_xlabel(unit)
        ax.set_ylabel('% of frames')
        ax.set_ylim(0, 102)  # keep a 100 % line visible above the frame
        ax.set_xscale('symlog', linthresh=1.0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc='lower right')
    fig.suptitle(f'{result.scene} ({result.split}, {n} frames): error CDF')
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def plot_top_view(result: SceneResult, path: str | Path) -> Path:
    """PNG: ground-truth vs estimated camera centres seen from above (one panel per mode)."""
    a, b, up = ground_plane_axes(result.T_wc_gt_n44)
    modes = list(result.selections)
    fig = Figure(figsize=(5 * max(len(modes), 1), 5), dpi=100)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, max(len(modes), 1)))
    gt = result.T_wc_gt_n44[:, :3, 3]
    for ax, mode in zip(axes, modes):
        sel = result.selections[mode]
        est = sel.T_wc_n44[:, :3, 3]
        ok = sel.valid_n
        ax.plot(gt[:, a], gt[:, b], '-', color='black', linewidth=1, label='ground truth')
        if ok.any():
            ax.plot(np.stack([gt[ok, a], est[ok, a]]), np.stack([gt[ok, b], est[ok, b]]), '-',
                    color='red', linewidth=0.5, alpha=0.5)
            ax.scatter(est[ok, a], est[ok, b], s=6, color=_COLOURS.get(mode),
                       label=f'{_label(mode)} estimate')
        ax.set_xlabel(f'{_AXES[a]} (m)')
        ax.set_ylabel(f'{_AXES[b]} (m)')
        ax.set_aspect('equal', adjustable='datalim')
        ax.grid(True, alpha=0.3)
        ax.legend(loc='best', fontsize='small')
        ax.set_title(f'{_label(mode)}: {int(ok.sum())}/{len(ok)} localized')
    fig.suptitle(f'{result.scene}: camera centres, top view ({_AXES[up]} up)')
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def write_report(results: Sequence[SceneResult], out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json`` and, per scene, ``<scene>_error_cdf.png`` and
    ``<scene>_top_view.png`` into out_dir. Returns name -> path of every file written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    used: set[str] = set()
    for r in results:
        stem = r.scene
        i = 1
        while stem in used:  # two scenes with one folder name
            i += 1
            stem = f'{r.scene}_{i}'
        used.add(stem)
        files[f'{stem}_error_cdf'] = plot_error_cdf(r, out / f'{stem}_error_cdf.png')
        files[f'{stem}_top_view'] = plot_top_view(r, out / f'{stem}_top_view.png')
    payload = {'thresholds': [{'key': threshold_key(m, d), 'max_translation_m': m,
                               'max_rotation_deg': d} for m, d in THRESHOLDS],
               'scenes': [scene_to_dict(r) for r in results]}
    if len(results) > 1:
        payload.update(_clean(combined_summaries(results)))
    path = out / 'results.json'
    path.write_text(json.dumps(payload, indent=1, allow_nan=False))
    files['results'] = path
    return files


def _fmt_pct(x: float) -> str:
    return '-' if not math.isfinite(x) else f'{x:.1f}%'


def _fmt_median(m: float, deg: float) -> str:
    cm = '-' if not math.isfinite(m) else f'{100.0 * m:.1f}cm'
    d = '-' if not math.isfinite(deg) else f'{deg:.1f}\u00b0'
    return f'{cm}, {d}'


def format_table(results: Sequence[SceneResult]) -> str:
    """Text tables like the paper's Tables 1 and 2: % within 5cm/5deg, median errors,
    % within 2cm/2deg and 10cm/10deg, and mean per-frame timings; rows are scenes (plus
    Average and Complete for several scenes), columns RANSAC / SoftAM / DSAC (and their RGB-D
    runs beside them when evaluated with depth)."""
    modes = _modes(results)
    width = max([len('Complete')] + [len(r.scene) for r in results]) + 2
    col = 19 if any(m.endswith('_rgbd') for m in modes) else 16  # 'est. SoftAM RGB-D'
    header = 'Scene'.ljust(width) + ''.join(_label(m).rjust(col) for m in modes)
    extra = combined_summaries(results) if len(results) > 1 else None

    def rows(cell) -> list[str]:
        lines = []
        for r in results:
            lines.append(r.scene.ljust(width) + ''.join(
                (cell(r.selections[m].summary.to_dict()) if m in r.selections else '-').rjust(col)
                for m in modes))
        if extra is not None:
            for name in ('average', 'complete'):
                lines.append(name.capitalize().ljust(width) + ''.join(
                    cell(extra[name][m]).rjust(col) for m in modes))
        return lines

    blocks = []
    for i, (m_thr, d_thr) in enumerate(THRESHOLDS):
        key = threshold_key(m_thr, d_thr)
        title = (f'Accuracy: % of {results[0].split if results else "test"} frames with pose '
                 f'error below {100 * m_thr:g}cm and {d_thr:g}\u00b0')
        if i == 0:
            title += ' (paper Table 1)'
        blocks.append([title, header] + rows(lambda s, key=key: _fmt_pct(s['within_pct'][key])))
        if i == 0:
            blocks.append(['Median pose errors (paper Table 2; - = no pose for half the frames or '
                           'more)', header] + rows(
                lambda s: _fmt_median(s['median_translation_m'], s['median_rotation_deg'])))
    blocks.extend(_coverage_blocks(results, width, col, modes))
    blocks.append(['Covariance calibration: median NEES (5.35 when calibrated) / % below the '
                   "chi-square 95% bound / scale to calibrate (the node's covariance_scale)",
                   header] + [r.scene.ljust(width) + ''.join(
                       # ' ' first: these cells can be wider than the column.
                       (' ' + _fmt_calibration(r.selections[m].calibration if m in r.selections
                                               else None)).rjust(col) for m in modes)
                       for r in results])
    timing = ['Mean per-frame timings (ms)',
              'Scene'.ljust(width) + 'network'.rjust(col) + ''.join(
                  f'est. {_label(m)}'.rjust(col) for m in modes) + 'device'.rjust(col)]
    for r in results:
        timing.append(r.scene.ljust(width) + _fmt_ms(r.network_ms_n).rjust(col) + ''.join(
            (_fmt_ms(r.selections[m].estimator_ms_n) if m in r.selections else '-').rjust(col)
            for m in modes) + r.device.rjust(col))
    blocks.append(timing)
    return '\n\n'.join('\n'.join(b) for b in blocks)


def _fmt_calibration(calibration) -> str:
    if calibration is None or not calibration.frames:
        return '-'
    return (f'{calibration.nees_median:.3g} / {calibration.within_95_pct:.0f}% / '
            f'x{calibration.scale:.2g}')


def _fmt_view(summary: dict, distance: str, angle: str) -> str:
    d, a = summary[distance], summary[angle]
    return (f'{100 * d["median"]:.0f}cm {a["median"]:.0f}\u00b0 / '
            f'{100 * d["p90"]:.0f}cm {a["p90"]:.0f}\u00b0')


def _coverage_blocks(results: Sequence[SceneResult], width: int, col: int,
                     modes: list[str]) -> list[list[str]]:
    """Text blocks: distances of the test views to the training views, accuracy by that
    distance, and a warning per scene whose test frames are training frames."""
    covered = [r for r in results if r.coverage is not None]
    if not covered:
        return []
    config = covered[0].coverage.config
    wide = 26
    distance = [
        'Distance of the test views to the training views, median / 90th percentile '
        f'(nearest = the training view minimizing max(d / {100 * config.near_distance_m:g}cm, '
        f'a / {config.near_angle_deg:g}\u00b0); nearest position = the nearest camera centre, '
        'with its angle; min angle = to any training view; d between camera centres, a between '
        'optical axes)',
        'Scene'.ljust(width) + 'nearest view'.rjust(wide) + 'nearest position'.rjust(wide)
        + 'min angle'.rjust(12) + 'near / mid / far'.rjust(22)]
    for r in covered:
        s = r.coverage.summary()
        bins = ' / '.join(f'{s["bins"][name]["pct"]:.0f}%' for name, _ in BINS)
        distance.append(
            r.scene.ljust(width) + _fmt_view(s, 'nearest_distance_m', 'nearest_angle_deg')
            .rjust(wide) + _fmt_view(s, 'min_distance_m', 'angle_at_min_distance_deg').rjust(wide)
            + f'{s["min_angle_deg"]["median"]:.0f}\u00b0 / {s["min_angle_deg"]["p90"]:.0f}\u00b0'
            .rjust(12) + bins.rjust(22))
    bin_names = {'near': f'near (<={100 * config.near_distance_m:g}cm&'
                         f'{config.near_angle_deg:g}\u00b0)',
                 'mid': f'mid (<={200 * config.near_distance_m:g}cm&'
                        f'{2 * config.near_angle_deg:g}\u00b0)', 'far': 'far'}
    key = threshold_key(*THRESHOLDS[0])
    accuracy = [f'Accuracy by distance to the training views: % within '
                f'{100 * THRESHOLDS[0][0]:g}cm and {THRESHOLDS[0][1]:g}\u00b0 (frames)',
                'Scene'.ljust(width) + 'bin'.ljust(24) + ''.join(
                    _label(m).rjust(col) for m in modes)]
    for r in covered:
        by_bin = accuracy_by_bin(r)
        for name, _ in BINS:
            first = by_bin[modes[0]].get(name) if modes[0] in by_bin else None
            if first is None:
                continue
            accuracy.append(r.scene.ljust(width) + f'{bin_names[name]} n={first["frames"]}'
                            .ljust(24) + ''.join(
                                (_fmt_pct(by_bin[m][name]['within_pct'][key])
                                 if m in by_bin else '-').rjust(col) for m in modes))
    blocks = [distance, accuracy]
    warnings = [f'{r.scene}: {r.coverage.overlap.message()}' for r in covered
                if r.coverage.overlap.any]
    if warnings:
        blocks.append(warnings)
    return blocks


def _fmt_ms(values: np.ndarray) -> str:
    values = np.asarray(values)
    return '-' if values.size == 0 else f'{float(values.mean()):.1f}'


__all__ = ['accuracy_by_bin', 'combined_summaries', 'format_table', 'ground_plane_axes',
           'plot_error_cdf', 'plot_top_view', 'scene_to_dict', 'write_report']
