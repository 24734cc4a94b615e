"""The benchmark suite: train and evaluate every benchmark scene with the README's commands.

    .venv/bin/python benchmarks/suite.py [--out bench_runs] [--scenes revisit_a free_a ...]
        [--minutes 5 10 20 30 | --iterations 500 2000] [--seeds 0 1]
        [--train-args "--threads 2"] [--eval-args "--max-frames 50"] [--tag NAME]
        [--train-frames N --test-frames N] [--scene-cache DIR] [--table-only]

For each scene of ``dsac_ros.data.benchmark_scenes.BENCHMARK_SUITE`` (docs/BENCHMARKS.md):

1. render it into the scene cache (skipped when present; ``--train-frames/--test-frames``
   render smaller variants for smoke runs, cached under their own names);
2. for each budget (``--minutes``: separate runs of ``dsac_train --scene S --out RUN --stage
   all --minutes M``; or ``--iterations N``: ``--iterations N`` instead, which a busy CPU does
   not distort) and seed: train, with ``--train-args`` appended;
3. evaluate: ``dsac_evaluate --checkpoint RUN/model.pt --scene S --selection all
   --inlier-threshold 5 --out RUN/eval`` (``--eval-args`` appended), and the same for
   ``RUN/model_componentwise.pt`` (the model before stage e2e, which dsac_train keeps) into
   ``RUN/eval_componentwise``;
4. tabulate from every ``RUN/eval/results.json``: % within 5 cm / 5 deg, 10 cm / 10 deg,
   2 cm / 2 deg and median errors per scene, with the distances of the test views to the
   training views (coverage) and accuracy near / far from them, accuracy against the
   training budget, and what end-to-end training changed against the componentwise model.
   Markdown on stdout and in ``OUT/<tag>/summary.md``, everything in
   ``OUT/<tag>/summary.json``.

Resumable: a run whose ``eval/results.json`` exists is skipped; an interrupted training
resumes from its checkpoint (dsac_train does that); a run records its command in
``run.json`` and refuses to mix with other trainer arguments (use another ``--tag``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
import json
import logging
import math
from pathlib import Path
import shlex
import statistics
import subprocess
import sys
import time

from dsac_ros.data.benchmark_scenes import (
    BENCHMARK_SUITE,
    benchmark_config,
    generate_benchmark_scene,
)

LOGGER = logging.getLogger('suite')
MODES = ('ransac', 'softam', 'dsac')
KEYS = ('5cm_5deg', '10cm_10deg', '2cm_2deg')


@dataclass(frozen=True)
class Run:
    """One training + evaluation: scene name and folder, budget ('minutes' or 'iterations',
    value), seed and run folder."""

    scene: str
    scene_root: Path
    budget_kind: str
    budget: float
    seed: int
    folder: Path

    @property
    def budget_label(self) -> str:
        unit = 'min' if self.budget_kind == 'minutes' else 'it'
        return f'{self.budget:g} {unit}'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--out', type=Path, default=Path('bench_runs'), help='runs and tables')
    p.add_argument('--scene-cache', type=Path, default=None,
                   help='rendered scenes (default OUT/scenes)')
    p.add_argument('--scenes', nargs='+', default=list(BENCHMARK_SUITE),
                   choices=list(BENCHMARK_SUITE), metavar='NAME', help='scene subset')
    budget = p.add_mutually_exclusive_group()
    budget.add_argument('--minutes', nargs='+', type=float, default=None,
                        help='training budgets in minutes (separate runs); default 30')
    budget.add_argument('--iterations', nargs='+', type=int, default=None,
                        help='training budgets in steps per stage instead of minutes')
    p.add_argument('--seeds', nargs='+', type=int, default=[0], help='training seeds')
    p.add_argument('--train-args', default='', help='extra dsac_train arguments (one string)')
    p.add_argument('--eval-args', default='', help='extra dsac_evaluate arguments (one string)')
    p.add_argument('--tag', default='default',
                   help='experiment name: runs and tables go to OUT/TAG')
    p.add_argument('--train-frames', type=int, default=None, help='smaller scenes (smoke runs)')
    p.add_argument('--test-frames', type=int, default=None, help='smaller scenes (smoke runs)')
    p.add_argument('--table-only', action='store_true',
                   help='only tabulate the runs already finished')
    args = p.parse_args(argv)
    if args.minutes is None and args.iterations is None:
        args.minutes = [30.0]
    return args


def scene_roots(args: argparse.Namespace) -> dict[str, Path]:
    """Render the missing scenes into the cache; name -> scene root."""
    cache = args.scene_cache or args.out / 'scenes'
    overrides = {k: v for k, v in (('train_frames', args.train_frames),
                                   ('test_frames', args.test_frames)) if v is not None}
    suffix = ''.join(f'-{k.split("_")[0]}{v}' for k, v in overrides.items())
    roots = {}
    for name in args.scenes:
        root = cache / f'{name}{suffix}'
        if not (root / 'TestSplit.txt').exists() and not args.table_only:
            LOGGER.info('rendering %s into %s', name, root)
            t0 = time.monotonic()
            generate_benchmark_scene(root, benchmark_config(name, **overrides))
            LOGGER.info('rendered %s in %.0f s', name, time.monotonic() - t0)
        roots[name] = root
    return roots


def plan(args: argparse.Namespace, roots: dict[str, Path]) -> list[Run]:
    kind = 'minutes' if args.minutes is not None else 'iterations'
    budgets = args.minutes if args.minutes is not None else args.iterations
    runs = []
    for name, root in roots.items():
        for budget in budgets:
            for seed in args.seeds:
                label = f'{"m" if kind == "minutes" else "it"}{budget:g}_s{seed}'
                runs.append(Run(name, root, kind, float(budget), seed,
                                args.out / args.tag / name / label))
    return runs


def _call(command: list[str], log_path: Path) -> int:
    LOGGER.info('$ %s', shlex.join(command))
    with open(log_path, 'a') as log:
        log.write(f'$ {shlex.join(command)}\n')
        log.flush()
        return subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)


def execute(run: Run, args: argparse.Namespace) -> bool:
    """Train and evaluate ``run`` unless done; True when its results exist afterwards."""
    results = run.folder / 'eval' / 'results.json'
    if args.table_only:
        return results.exists()
    budget = [f'--{run.budget_kind}', f'{run.budget:g}']
    train = [sys.executable, '-m', 'dsac_ros.cli.train', '--scene', str(run.scene_root),
             '--out', str(run.folder), '--stage', 'all', *budget, '--seed', str(run.seed),
             '--no-progress', *shlex.split(args.train_args)]

    def evaluate(model: str, out: str) -> list[str]:
        return [sys.executable, '-m', 'dsac_ros.cli.evaluate', '--checkpoint',
                str(run.folder / model), '--scene', str(run.scene_root), '--selection', 'all',
                '--inlier-threshold', '5', '--out', str(run.folder / out), '--no-progress',
                *shlex.split(args.eval_args)]

    record = run.folder / 'run.json'
    described = {'train': train[3:], 'evaluate': evaluate('model.pt', 'eval')[3:]}
    if record.exists() and json.loads(record.read_text()) != described:
        raise SystemExit(f'{run.folder} was started with other arguments '
                         f'({record}); use another --tag or remove the folder')
    if results.exists():
        _evaluate_componentwise(run, evaluate('model_componentwise.pt', 'eval_componentwise'))
        return True
    run.folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(described, indent=1) + '\n')
    if not (run.folder / 'train.done').exists():
        t0 = time.monotonic()
        if _call(train, run.folder / 'train.log') != 0:
            LOGGER.error('training failed: see %s', run.folder / 'train.log')
            return False
        (run.folder / 'train.done').write_text(f'{time.monotonic() - t0:.0f} s\n')
    if _call(evaluate('model.pt', 'eval'), run.folder / 'eval.log') != 0:
        LOGGER.error('evaluation failed: see %s', run.folder / 'eval.log')
        return False
    _evaluate_componentwise(run, evaluate('model_componentwise.pt', 'eval_componentwise'))
    return results.exists()


def _evaluate_componentwise(run: Run, command: list[str]) -> None:
    """Evaluate the run's model before stage e2e once (runs from before dsac_train kept it
    have none; a failure is logged, the run's own results stand)."""
    if not (run.folder / 'model_componentwise.pt').exists() or (
            run.folder / 'eval_componentwise' / 'results.json').exists():
        return
    if _call(command, run.folder / 'eval_componentwise.log') != 0:
        LOGGER.error('evaluation of the componentwise model failed: see %s',
                     run.folder / 'eval_componentwise.log')


def _scene_results(results_json: Path) -> dict:
    """The (only) scene entry of an evaluation's results.json."""
    return json.loads(results_json.read_text())['scenes'][0]


def _mode_numbers(scene: dict) -> dict:
    """Per selection mode of a scene's evaluation: the % within each threshold and the
    medians."""
    return {m: {'within_pct': s['summary']['within_pct'],
                'median_translation_m': s['summary']['median_translation_m'],
                'median_rotation_deg': s['summary']['median_rotation_deg']}
            for m, s in scene['selections'].items()}


def run_row(run: Run) -> dict:
    """Numbers of one finished run: per mode the % within each threshold and the medians,
    the best mode (by 5 cm / 5 deg), coverage and the best mode's accuracy per bin."""
    scene = _scene_results(run.folder / 'eval' / 'results.json')
    modes = _mode_numbers(scene)
    best = max(modes, key=lambda m: modes[m]['within_pct']['5cm_5deg'])
    componentwise = run.folder / 'eval_componentwise' / 'results.json'
    coverage = scene.get('coverage') or {}
    by_bin = (coverage.get('accuracy_by_bin') or {}).get(best, {})
    return {
        'scene': run.scene, 'kind': BENCHMARK_SUITE[run.scene].kind.value,
        'budget_kind': run.budget_kind, 'budget': run.budget, 'seed': run.seed,
        'folder': str(run.folder), 'frames': scene['frames'],
        'modes': modes,
        'componentwise_modes': (_mode_numbers(_scene_results(componentwise))
                                if componentwise.exists() else None),
        'best_mode': best,
        'coverage': {k: coverage[k] for k in ('nearest_distance_m', 'nearest_angle_deg',
                                              'min_distance_m', 'angle_at_min_distance_deg',
                                              'bins', 'train_frames', 'overlap')
                     if k in coverage},
        'best_by_bin': {b: {'frames': s['frames'], 'within_pct': s['within_pct']}
                        for b, s in by_bin.items()},
    }


def _mean_spread(values: list[float | None], fmt: str) -> str:
    """Mean (min-max) of the values; '-' when there are none or one is None / not finite
    (a median over frames half of which got no pose, a bin without frames)."""
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return '-'
    text = fmt.format(statistics.fmean(values))
    if len(values) > 1:
        text += ' (' + fmt.format(min(values)) + '-' + fmt.format(max(values)) + ')'
    return text


def _times(factor: float, value: float | None) -> float | None:
    return None if value is None else factor * value


def _pct(rows: list[dict], mode: str | None, key: str) -> str:
    return _mean_spread([r['modes'][mode or r['best_mode']]['within_pct'][key] for r in rows
                         if (mode or r['best_mode']) in r['modes']], '{:.1f}')


def _coverage_cell(row: dict) -> str:
    c = row['coverage']
    if 'nearest_distance_m' not in c:
        return '-'
    d, a = c['nearest_distance_m'], c['nearest_angle_deg']
    return (f'{100 * d["median"]:.0f} cm / {a["median"]:.0f}° '
            f'(p90 {100 * d["p90"]:.0f} cm / {a["p90"]:.0f}°)')


def tables(rows: list[dict]) -> str:
    """Markdown: accuracy per scene at the largest budget (mean over seeds, min-max in
    brackets) and best-mode 5 cm / 5 deg against the budget."""
    if not rows:
        return 'no finished runs\n'
    scenes = list(dict.fromkeys(r['scene'] for r in rows))
    budgets = sorted({(r['budget_kind'], r['budget']) for r in rows})
    unit = {'minutes': 'min', 'iterations': 'it'}
    out = []
    for kind, budget in budgets[-1:]:
        out.append(f'### Accuracy after {budget:g} {unit[kind]} of training '
                   '(% of test frames; mean over seeds, min-max in brackets)\n')
        out.append('| scene | kind | seeds | nearest training view, median (p90) | near % | '
                   '5cm/5° RANSAC | SoftAM | DSAC | best: 10cm/10° | 2cm/2° | median | '
                   '5cm/5° near | 5cm/5° far+mid |')
        out.append('|' + '---|' * 13)
        for scene in scenes:
            sel = [r for r in rows if r['scene'] == scene and (r['budget_kind'], r['budget'])
                   == (kind, budget)]
            if not sel:
                continue
            near = sel[0]['coverage'].get('bins', {}).get('near', {}).get('pct', math.nan)
            medians = _mean_spread([_times(100, r['modes'][r['best_mode']]
                                           ['median_translation_m']) for r in sel], '{:.1f}')
            med_deg = _mean_spread([r['modes'][r['best_mode']]['median_rotation_deg']
                                    for r in sel], '{:.1f}')

            def bin_pct(r: dict, names: tuple[str, ...]) -> float:
                frames = sum(r['best_by_bin'].get(b, {}).get('frames', 0) for b in names)
                hits = sum(r['best_by_bin'][b]['frames'] * r['best_by_bin'][b]['within_pct']
                           ['5cm_5deg'] / 100.0 for b in names if b in r['best_by_bin'])
                return 100.0 * hits / frames if frames else math.nan

            out.append(
                f'| {scene} | {sel[0]["kind"]} | {len(sel)} | {_coverage_cell(sel[0])} | '
                f'{near:.0f} | ' + ' | '.join(_pct(sel, m, '5cm_5deg') for m in MODES)
                + f' | {_pct(sel, None, "10cm_10deg")} | {_pct(sel, None, "2cm_2deg")} | '
                f'{medians} cm, {med_deg}° | '
                f'{_mean_spread([bin_pct(r, ("near",)) for r in sel], "{:.1f}")} | '
                f'{_mean_spread([bin_pct(r, ("mid", "far")) for r in sel], "{:.1f}")} |')
    out.append('\n### Best-selection % within 5cm/5° against the training budget '
               '(mean over seeds)\n')
    out.append('| scene | ' + ' | '.join(f'{b:g} {unit[k]}' for k, b in budgets) + ' |')
    out.append('|' + '---|' * (len(budgets) + 1))
    for scene in scenes:
        cells = []
        for kind, budget in budgets:
            sel = [r for r in rows if r['scene'] == scene and (r['budget_kind'], r['budget'])
                   == (kind, budget)]
            cells.append(_pct(sel, None, '5cm_5deg') if sel else '-')
        out.append(f'| {scene} | ' + ' | '.join(cells) + ' |')
    out.extend(e2e_table(rows, budgets[-1]))
    warnings = [f'- {r["scene"]} ({r["folder"]}): {r["coverage"]["overlap"]["warning"]}'
                for r in rows if (r['coverage'].get('overlap') or {}).get('warning')]
    if warnings:
        out.append('\n' + '\n'.join(warnings))
    return '\n'.join(out) + '\n'


def _shares(rows: list[dict], key: str) -> list[list[float]]:
    """Per selection mode, the % within 5 cm / 5 deg of each row's ``key`` evaluation."""
    return [[r[key][m]['within_pct']['5cm_5deg'] for r in rows] for m in MODES]


def _ransac_median_cm(rows: list[dict], key: str) -> str:
    """The RANSAC median translation (cm) of each row's ``key`` evaluation, mean (min-max)."""
    cm = _mean_spread([_times(100, r[key]['ransac']['median_translation_m']) for r in rows],
                      '{:.1f}')
    return f'{cm} cm (RANSAC)'


def e2e_table(rows: list[dict], budget: tuple[str, float]) -> list[str]:
    """Markdown lines: per scene at ``budget``, % within 5 cm / 5 deg per selection mode of
    the componentwise model (before stage e2e) and of the final one, and the medians (mean
    over seeds, min-max in brackets); none when no run kept its componentwise model."""
    pairs = [r for r in rows if r.get('componentwise_modes')
             and (r['budget_kind'], r['budget']) == budget]
    if not pairs:
        return []
    out = ['\n### End-to-end training against the componentwise model it started from '
           '(5cm/5° %, RANSAC / SoftAM / DSAC; mean over seeds)\n',
           '| scene | seeds | componentwise | end-to-end | change | median componentwise | '
           'median end-to-end |', '|' + '---|' * 7]
    for scene in dict.fromkeys(r['scene'] for r in pairs):
        sel = [r for r in pairs if r['scene'] == scene]
        before, after = _shares(sel, 'componentwise_modes'), _shares(sel, 'modes')
        change = [statistics.fmean(a) - statistics.fmean(b) for a, b in zip(after, before)]
        out.append(f'| {scene} | {len(sel)} | '
                   + ' / '.join(_mean_spread(v, '{:.1f}') for v in before) + ' | '
                   + ' / '.join(_mean_spread(v, '{:.1f}') for v in after) + ' | '
                   + ' / '.join(f'{c:+.1f}' for c in change) + ' | '
                   + f'{_ransac_median_cm(sel, "componentwise_modes")} | '
                   + f'{_ransac_median_cm(sel, "modes")} |')
    return out


def write_summary(report: Path, markdown: str, payload: dict) -> Path:
    """summary.md and summary.json into ``report`` (created), the markdown also on stdout."""
    report.mkdir(parents=True, exist_ok=True)
    (report / 'summary.md').write_text(markdown)
    (report / 'summary.json').write_text(json.dumps(payload, indent=1) + '\n')
    print(markdown)
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
    args = parse_args(argv)
    runs = plan(args, scene_roots(args))
    done = [run for run in runs if execute(run, args)]
    rows = [run_row(run) for run in done]
    report = write_summary(args.out / args.tag, tables(rows), {
        'tag': args.tag, 'train_args': args.train_args, 'eval_args': args.eval_args,
        'runs': rows})
    LOGGER.info('%d of %d runs finished; tables in %s', len(done), len(runs), report)
    return 0 if len(done) == len(runs) else 1


if __name__ == '__main__':
    sys.exit(main())
