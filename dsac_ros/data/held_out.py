"""Held-out test data: a second recording as the test sequence of a scene.

Training on one recording and testing on another (7-Scenes does this: separate sequences)
is the honest way to measure relocalization. :func:`attach_test_sequence` moves the frames of
a second 7-Scenes-layout scene (e.g. a second bag extracted with ``test_fraction`` 0) into a
scene as its only test sequence; :func:`extract_bag_pair` does that for two bags.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
import shutil
import tempfile
from typing import Callable

import numpy as np

from dsac_ros.data.atomic import atomic_directory
from dsac_ros.data.bag_extraction import BagExtractionConfig, ExtractionSummary, extract_bag
from dsac_ros.data.seven_scenes import load_intrinsics, read_split


def attach_test_sequence(train_root: str | Path, test_root: str | Path, out_dir: str | Path
                         ) -> Path:
    """Build ``out_dir`` from the training sequences of ``train_root`` and every frame of
    ``test_root``'s training split as one new test sequence (``seq-NN`` after the training
    ones). Both scenes must share their intrinsics (one camera); the two folders are consumed
    (their files are moved). ``out_dir`` appears complete or not at all.
    """
    train_root, test_root, out = Path(train_root), Path(test_root), Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f'output folder {out} exists and is not empty')
    a, b = load_intrinsics(train_root), load_intrinsics(test_root)
    if a.size != b.size or not np.allclose(a.K, b.K, rtol=1e-6, atol=1e-6):
        raise ValueError(f'the test recording has other intrinsics ({b.size}, K={b.K.tolist()}) '
                         f'than the training recording ({a.size}, K={a.K.tolist()})')
    train_seqs = read_split(train_root, 'train')
    with atomic_directory(out) as tmp:
        for k, seq in enumerate(train_seqs):
            shutil.move(str(seq), tmp / f'seq-{k + 1:02d}')
        test_dir = tmp / f'seq-{len(train_seqs) + 1:02d}'
        test_dir.mkdir()
        index = 0
        for seq in read_split(test_root, 'train'):
            stems = sorted(p.name[:-len('.pose.txt')] for p in seq.glob('frame-*.pose.txt'))
            for stem in stems:
                for source in seq.glob(f'{stem}.*'):
                    suffix = source.name[len(stem):]
                    source.rename(test_dir / f'frame-{index:06d}{suffix}')
                index += 1
        (tmp / 'TrainSplit.txt').write_text(
            ''.join(f'sequence{k + 1}\n' for k in range(len(train_seqs))))
        (tmp / 'TestSplit.txt').write_text(f'sequence{len(train_seqs) + 1}\n')
        shutil.copy2(train_root / 'intrinsics.json', tmp / 'intrinsics.json')
    return out


def extract_bag_pair(train_bag: str | Path, test_bag: str | Path, out_dir: str | Path,
                     config: BagExtractionConfig,
                     progress: Callable[[int], None] | None = None
                     ) -> tuple[ExtractionSummary, ExtractionSummary]:
    """Extract ``train_bag`` (all frames: TrainSplit) and ``test_bag`` (all frames: the test
    sequence) with the same topics into one scene at ``out_dir``; ``config.test_fraction``
    is ignored. Returns the two extraction summaries."""
    config = replace(config, test_fraction=0.0)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f'.{out.name}.pair-', dir=out.parent) as work:
        train = extract_bag(train_bag, Path(work) / 'train', config, progress)
        test = extract_bag(test_bag, Path(work) / 'test', config, progress)
        attach_test_sequence(Path(work) / 'train', Path(work) / 'test', out)
    return train, test


__all__ = ['attach_test_sequence', 'extract_bag_pair']
