"""End-to-end ablation: does e2e SoftAM / DSAC beat the componentwise model it starts from?

    .venv/bin/python benchmarks/e2e_ablation.py --out ablation_runs \
        [--scenes demo revisit_a revisit_b free_a free_noisy] [--scene-cache DIR] \
        [--componentwise NAME=CHECKPOINT ...] [--componentwise-minutes 30] \
        [--e2e-iterations 300 | --e2e-minutes M] [--seeds 0 1] [--selections softam dsac] \
        [--train-args "--e2e-lr 1e-4"] [--eval-args "--max-frames 100"] [--tag NAME] \
        [--table-only]

For each scene (the demo room 'demo', or a benchmark scene of docs/BENCHMARKS.md, rendered
into the scene cache when missing):

1. one componentwise checkpoint: ``--componentwise NAME=PATH``, else for 'demo' the shipped
   model, else ``OUT/componentwise/NAME/model.pt`` trained when missing (``dsac_train --stage
   coords``, ``head`` and ``score`` in turn, sharing ``--componentwise-minutes`` as
   ``dsac_train --minutes`` shares them);
2. for each seed and e2e selection: ``dsac_train --stage e2e --init CHECKPOINT --selection SEL
   --seed S`` (``--train-args`` appended) into ``OUT/TAG/NAME/e2e_SEL_sS``;
3. every model (componentwise and e2e) evaluated with ``dsac_evaluate --selection all`` once
   with soft inlier counts and once with its Score CNN (``--eval-args`` appended; the
   threshold is the checkpoint's); the componentwise model's evaluations are shared by all
   tags with the same ``--eval-args`` (``OUT/componentwise/NAME/eval_*``);
4. tables: % within 5 cm / 5 deg per model x scoring x inference selection, mean over seeds
   with the min-max spread, the change against componentwise and whether it exceeds the
   spread; median errors; and the training diagnostics of each e2e run from its log.csv
   (loss in the first and last logged window, coordinate-gradient norm per mm, share of
   clamped gradient entries). Markdown on stdout and in ``OUT/TAG/summary.md``, everything in
   ``OUT/TAG/summary.json``.

Resumable: finished trainings and evaluations are skipped. A smoke run:
``--scenes demo --e2e-iterations 4 --seeds 0 1 --eval-args "--max-frames 4" --tag smoke``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
from pathlib import Path
import shlex
import statistics
import sys

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite import _call, _mean_spread, write_summary  # noqa: E402  (not a package)

from dsac_ros.data.benchmark_scenes import (  # noqa: E402
    BENCHMARK_SUITE,
    benchmark_config,
    generate_benchmark_scene,
)
from dsac_ros.training.config import STAGE_TIME_SHARE, Stage  # noqa: E402

LOGGER = logging.getLogger('e2e_ablation')
DEMO = 'demo'
MODES = ('ransac', 'softam', 'dsac')
SCORINGS = ('soft_inliers', 'score_net')
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / 'dsac_ros' / 'assets' / 'demo_model.pt'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--out', type=Path, default=Path('ablation_runs'))
    p.add_argument('--scene-cache', type=Path, default=None,
                   help='rendered scenes (default OUT/scenes)')
    p.add_argument('--scenes', nargs='+', default=[DEMO, *BENCHMARK_SUITE],
                   choices=[DEMO, *BENCHMARK_SUITE], metavar='NAME')
    p.add_argument('--componentwise', nargs='*', default=[], metavar='NAME=CHECKPOINT',
                   help='componentwise checkpoint per scene (default: see the module doc)')
    p.add_argument('--componentwise-minutes', type=float, default=30.0,
                   help='budget of a componentwise model trained here when none is given')
    budget = p.add_mutually_exclusive_group()
    budget.add_argument('--e2e-iterations', type=int, default=None,
                        help='end-to-end steps per run (default 300)')
    budget.add_argument('--e2e-minutes', type=float, default=None)
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    p.add_argument('--selections', nargs='+', default=['softam', 'dsac'],
                   choices=['softam', 'dsac'], help='end-to-end training selections')
    p.add_argument('--train-args', default='', help='extra dsac_train arguments (e2e runs)')
    p.add_argument('--eval-args', default='', help='extra dsac_evaluate arguments')
    p.add_argument('--tag', default='default', help='experiment name: OUT/TAG')
    p.add_argument('--table-only', action='store_true')
    args = p.parse_args(argv)
    if args.e2e_iterations is None and args.e2e_minutes is None:
        args.e2e_iterations = 300
    try:
        args.componentwise = dict(item.split('=', 1) for item in args.componentwise)
    except ValueError:
        p.error('--componentwise takes NAME=CHECKPOINT pairs')
    return args


def scene_root(name: str, args: argparse.Namespace) -> Path:
    """The scene folder, rendered when missing (the demo room: dsac_make_scene's defaults)."""
    root = (args.scene_cache or args.out / 'scenes') / name
    if (root / 'TestSplit.txt').exists() or args.table_only:
        return root
    LOGGER.info('rendering %s into %s', name, root)
    if name == DEMO:
        from dsac_ros.data.synthetic import SyntheticSceneConfig, generate_scene
        generate_scene(root, SyntheticSceneConfig())
    else:
        generate_benchmark_scene(root, benchmark_config(name))
    return root


def componentwise(name: str, root: Path, args: argparse.Namespace) -> Path | None:
    """The componentwise checkpoint of a scene, trained here when there is none."""
    if name in args.componentwise:
        return Path(args.componentwise[name])
    if name == DEMO:
        return SHIPPED_MODEL
    folder = args.out / 'componentwise' / name
    model = folder / 'model.pt'
    if (folder / 'score.done').exists() or args.table_only:
        return model if model.exists() else None
    folder.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, '-m', 'dsac_ros.cli.train', '--scene', str(root), '--out',
            str(folder), '--no-progress']
    minutes = args.componentwise_minutes
    stages = (Stage.COORDS, Stage.HEAD, Stage.SCORE)  # dsac_train's shares of the three
    total = sum(STAGE_TIME_SHARE[s] for s in stages)
    for stage in stages:
        share = STAGE_TIME_SHARE[stage] / total
        if _call(base + ['--stage', stage.value, '--minutes', f'{share * minutes:g}'],
                 folder / 'train.log') != 0:
            LOGGER.error('componentwise training of %s failed: see %s', name, folder)
            return None
    (folder / 'score.done').write_text('done\n')
    return model


def evaluate(model: Path, root: Path, folder: Path, args: argparse.Namespace) -> dict:
    """{scoring: results.json of dsac_evaluate} for this model (evaluated when missing)."""
    out = {}
    folder.mkdir(parents=True, exist_ok=True)
    for scoring in SCORINGS:
        results = folder / f'eval_{scoring}' / 'results.json'
        if not results.exists() and not args.table_only:
            command = [sys.executable, '-m', 'dsac_ros.cli.evaluate', '--checkpoint', str(model),
                       '--scene', str(root), '--selection', 'all', '--scoring', scoring,
                       '--out', str(results.parent), '--no-progress',
                       *shlex.split(args.eval_args)]
            if _call(command, folder / 'eval.log') != 0:
                LOGGER.error('evaluation of %s failed: see %s', model, folder / 'eval.log')
        if results.exists():
            scene = json.loads(results.read_text())['scenes'][0]
            if scene.get('scoring', scoring) == scoring:  # no score net: nothing to compare
                out[scoring] = scene
    return out


def train_e2e(init: Path, root: Path, folder: Path, selection: str, seed: int,
              args: argparse.Namespace) -> Path | None:
    model = folder / 'model.pt'
    if (folder / 'train.done').exists() or args.table_only:
        return model if model.exists() else None
    folder.mkdir(parents=True, exist_ok=True)
    budget = (['--iterations', str(args.e2e_iterations)] if args.e2e_iterations is not None
              else ['--minutes', f'{args.e2e_minutes:g}'])
    command = [sys.executable, '-m', 'dsac_ros.cli.train', '--scene', str(root), '--out',
               str(folder), '--stage', 'e2e', '--init', str(init), '--selection', selection,
               '--seed', str(seed), *budget, '--no-progress', *shlex.split(args.train_args)]
    if _call(command, folder / 'train.log') != 0:
        LOGGER.error('e2e training failed: see %s', folder / 'train.log')
        return None
    (folder / 'train.done').write_text('done\n')
    return model


def diagnostics(folder: Path) -> dict:
    """From an e2e run's log.csv: loss of the first and last logged window, mean coordinate
    gradient norm (per mm) and mean share of clamped gradient entries."""
    path = folder / 'log.csv'
    if not path.exists():
        return {}
    with open(path, newline='') as f:
        rows = [r for r in csv.DictReader(f) if r['stage'] == 'e2e']
    if not rows:
        return {}

    def mean(key: str) -> float:
        values = [float(r[key]) for r in rows if r.get(key) not in (None, '', 'nan')]
        return statistics.fmean(values) if values else math.nan

    return {'loss_first': float(rows[0]['loss']), 'loss_last': float(rows[-1]['loss']),
            'grad_norm_mm': mean('grad'), 'clamp_share': mean('aux'),
            'steps': int(rows[-1]['step'])}


def collect(args: argparse.Namespace) -> list[dict]:
    """Train and evaluate what is missing; one row per scene x model x seed x scoring."""
    rows = []
    for name in args.scenes:
        root = scene_root(name, args)
        base = componentwise(name, root, args)
        if base is None or not base.exists():
            LOGGER.error('%s: no componentwise checkpoint', name)
            continue
        # evaluated once per scene and evaluation arguments, shared by the tags
        slug = hashlib.sha1(f'{base.resolve()} {args.eval_args}'.encode()).hexdigest()[:8]
        runs = [('componentwise', None, base, args.out / 'componentwise' / name / f'eval_{slug}')]
        for selection in args.selections:
            for seed in args.seeds:
                folder = args.out / args.tag / name / f'e2e_{selection}_s{seed}'
                runs.append((f'e2e {selection}', seed,
                             train_e2e(base, root, folder, selection, seed, args), folder))
        for label, seed, model, folder in runs:
            if model is None:
                continue
            for scoring, scene in evaluate(model, root, folder, args).items():
                rows.append({
                    'scene': name, 'model': label, 'seed': seed, 'scoring': scoring,
                    'folder': str(folder), 'inlier_threshold_px': scene.get('inlier_threshold_px'),
                    'modes': {m: s['summary'] for m, s in scene['selections'].items()},
                    'diagnostics': diagnostics(folder) if seed is not None else {}})
    return rows


def _cell(rows: list[dict], mode: str, key: str = '5cm_5deg') -> list[float]:
    return [r['modes'][mode]['within_pct'][key] for r in rows if mode in r['modes']]


def tables(rows: list[dict]) -> str:
    """Markdown: per scene, model and scoring the % within 5 cm / 5 deg per inference
    selection (mean over seeds, min-max), its change against componentwise, medians and the
    e2e runs' diagnostics."""
    if not rows:
        return 'no finished runs\n'
    out = ['### % of test frames within 5 cm / 5 deg (mean over seeds, min-max in brackets; '
           "delta against componentwise, * where it exceeds the seeds' spread (>= 2 seeds))\n",
           '| scene | model | scoring | seeds | RANSAC | SoftAM | DSAC | median (best) | '
           'e2e loss first -> last | grad norm / mm | clamped |',
           '|' + '---|' * 11]
    for scene in dict.fromkeys(r['scene'] for r in rows):
        for scoring in SCORINGS:
            base = [r for r in rows if r['scene'] == scene and r['scoring'] == scoring
                    and r['model'] == 'componentwise']
            for model in dict.fromkeys(r['model'] for r in rows if r['scene'] == scene):
                sel = [r for r in rows if r['scene'] == scene and r['scoring'] == scoring
                       and r['model'] == model]
                if not sel:
                    continue
                cells = []
                for mode in MODES:
                    values = _cell(sel, mode)
                    text = _mean_spread(values, '{:.1f}')
                    reference = _cell(base, mode)
                    if model != 'componentwise' and values and reference:
                        delta = statistics.fmean(values) - statistics.fmean(reference)
                        spread = max(values) - min(values)
                        beyond = len(values) > 1 and abs(delta) > spread
                        text += f' ({delta:+.1f}{"*" if beyond else ""})'
                    cells.append(text)
                best = max(MODES, key=lambda m: statistics.fmean(_cell(sel, m) or [-1.0]))
                median = _mean_spread([100 * r['modes'][best]['median_translation_m']
                                       for r in sel], '{:.1f}')
                deg = _mean_spread([r['modes'][best]['median_rotation_deg'] for r in sel],
                                   '{:.2f}')
                diag = [r['diagnostics'] for r in sel if r['diagnostics']]

                def d(key: str, fmt: str, runs: list[dict] = diag) -> str:
                    return _mean_spread([x.get(key, math.nan) for x in runs], fmt)

                loss = f'{d("loss_first", "{:.2f}")} -> {d("loss_last", "{:.2f}")}' \
                    if diag else '-'
                out.append(f'| {scene} | {model} | {scoring} | {len(sel)} | '
                           + ' | '.join(cells) + f' | {median} cm, {deg}° ({best}) | {loss} | '
                           f'{d("grad_norm_mm", "{:.3g}") if diag else "-"} | '
                           f'{d("clamp_share", "{:.1%}") if diag else "-"} |')
    return '\n'.join(out) + '\n'


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
    args = parse_args(argv)
    rows = collect(args)
    write_summary(args.out / args.tag, tables(rows), {
        'tag': args.tag, 'train_args': args.train_args, 'eval_args': args.eval_args,
        'e2e_iterations': args.e2e_iterations, 'e2e_minutes': args.e2e_minutes, 'rows': rows})
    return 0 if rows else 1


if __name__ == '__main__':
    sys.exit(main())
