"""dsac_pretrain: pretrain the coordinate net's encoder on procedurally generated rooms.

The package ships the result as ``dsac_ros/assets/encoder.pt``; ``dsac_train`` starts every new
scene from it. The shipped one was made on a 2-core CPU in three runs, 4 rooms, then 8 from
that encoder, then 16 from that one (many rooms from random weights learn slowly;
docs/BENCHMARKS.md)::

    dsac_pretrain --out runs/pretrain4 --minutes 50 --threads 2
    dsac_pretrain --out runs/pretrain8 --rooms 8 --minutes 50 --threads 2 \
        --init-encoder runs/pretrain4/encoder.pt
    dsac_pretrain --out runs/pretrain16 --rooms 16 --minutes 60 --threads 2 \
        --init-encoder runs/pretrain8/encoder.pt
    cp runs/pretrain16/encoder.pt dsac_ros/assets/encoder.pt

(Seeds 10000-10015, 500 mapping-walk frames and 100 random views per room; 15723 + 14606 +
20792 steps.)
A longer run or more rooms on a faster machine gives a better start; the file's metadata says
what made it.

Rerunning with the same --out resumes (rendered rooms are cached in <out>/rooms). Exit codes:
0 done, 2 bad input, 130 interrupted (state saved at most ``--save-seconds`` before).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
import sys

from dsac_ros.models.checkpoint import CheckpointError
from dsac_ros.training.config import Precision

_LOG = logging.getLogger('dsac_pretrain')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog='dsac_pretrain',
                                description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=Path, required=True, help='output folder (resumes if present)')
    p.add_argument('--minutes', type=float,
                   help='training time budget (default 50 without --iterations)')
    p.add_argument('--iterations', type=int, help='step budget (with or instead of minutes)')
    p.add_argument('--rooms', type=int, default=4, help='rooms (seeds 10000, 10001, ...)')
    p.add_argument('--walk-frames', type=int, default=500,
                   help='frames per room along its mapping walks')
    p.add_argument('--random-views', type=int, default=100,
                   help='views per room drawn at random through it')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--init-encoder', type=Path,
                   help='start from this encoder file with fresh room heads (a curriculum: '
                        'an earlier run on fewer rooms); ignored when --out resumes')
    p.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument('--precision', choices=[x.value for x in Precision], default='auto')
    p.add_argument('--threads', type=int, help='torch CPU threads')
    p.add_argument('--save-seconds', type=float, default=120.0,
                   help='seconds between resumable saves')
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    from dsac_ros.training.pretrain import PretrainConfig, PretrainViews, pretrain
    try:
        config = PretrainConfig(out_dir=args.out, rooms=args.rooms,
                                views=PretrainViews(walk_frames=args.walk_frames,
                                                   random_views=args.random_views),
                                minutes=(args.minutes if args.minutes is not None or
                                         args.iterations is not None else 50.0),
                                iterations=args.iterations, batch_size=args.batch_size,
                                seed=args.seed, init_encoder=args.init_encoder,
                                device=args.device,
                                precision=Precision(args.precision), threads=args.threads,
                                save_seconds=args.save_seconds)
        path = pretrain(config)
    except KeyboardInterrupt:
        _LOG.warning('interrupted; rerun with the same --out to resume')
        return 130
    except (ValueError, CheckpointError) as exc:
        _LOG.error('%s', exc)
        return 2
    _LOG.info('done: %s', path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
