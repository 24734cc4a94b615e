"""StampSynchronizer: pairing by stamp (exact, nearest within tolerance), either arrival
order, optional streams, bounded queues and the counts of unmatched messages."""

from __future__ import annotations

import random

import pytest

from dsac_ros.ros.sync import StampSynchronizer

MS = 1_000_000


def _pairs(matches):
    return [(m.stamp_ns, m.items['camera_info']) for m in matches]


def test_exact_stamps_pair_whatever_the_arrival_order():
    """A calibration change lands on its own frame, also when the info comes after the image
    (arrival pairing applied each change to the next image)."""
    sync = StampSynchronizer('image', ['camera_info'])
    out = []
    rng = random.Random(3)
    for k in range(20):
        first, second = (('image', f'img{k}'), ('camera_info', f'K{k}'))
        if rng.random() < 0.5:
            first, second = second, first
        out += sync.add(first[0], k * 33 * MS, first[1])
        out += sync.add(second[0], k * 33 * MS, second[1])
    assert [(m.items['image'], m.items['camera_info']) for m in out] == [
        (f'img{k}', f'K{k}') for k in range(20)]
    assert all(m.offsets_ns == {'camera_info': 0} for m in out)
    counts = sync.counts()
    assert counts.matched == 20 and counts.unmatched == {'image': 0, 'camera_info': 0}
    assert counts.received == {'image': 20, 'camera_info': 20}


def test_nearest_within_tolerance_waits_until_the_stream_passes_the_stamp():
    sync = StampSynchronizer('image', ['camera_info'], tolerance_ns=10 * MS)
    assert sync.add('camera_info', 95 * MS, 'early') == []
    assert sync.add('image', 100 * MS, 'img') == []  # a nearer info could still come
    (match,) = sync.add('camera_info', 103 * MS, 'late')
    assert match.items == {'image': 'img', 'camera_info': 'late'}
    assert match.offsets_ns == {'camera_info': 3 * MS}
    # Nothing within the tolerance: the image is dropped and counted once the info passed it.
    assert sync.add('image', 200 * MS, 'lonely') == []
    assert sync.add('camera_info', 230 * MS, 'far') == []
    counts = sync.counts()
    assert counts.unmatched['image'] == 1 and counts.matched == 1
    assert counts.pending['image'] == 0


def test_a_low_rate_secondary_serves_several_primaries():
    sync = StampSynchronizer('image', ['camera_info'], tolerance_ns=50 * MS)
    sync.add('camera_info', 0, 'K')
    assert _pairs(sync.add('image', 0, 'a')) == [(0, 'K')]
    sync.add('camera_info', 100 * MS, 'K2')
    assert _pairs(sync.add('image', 30 * MS, 'b')) == [(30 * MS, 'K')]
    assert _pairs(sync.add('image', 90 * MS, 'c')) == [(90 * MS, 'K2')]


def test_optional_stream_until_it_delivers_then_required():
    sync = StampSynchronizer('image', ['camera_info'], optional=['camera_info'])
    assert sync.add('image', 1, 'a') == []  # held until the next image ...
    (first,) = sync.add('image', 2, 'b')  # ... then out without camera_info
    assert first.items == {'image': 'a', 'camera_info': None} and first.offsets_ns == {}
    (second,) = sync.add('camera_info', 2, 'K')  # 'b' still waited: its own info arrived
    assert second.items == {'image': 'b', 'camera_info': 'K'}
    assert sync.add('image', 3, 'c') == []  # seen once: required from now on
    assert _pairs(sync.add('camera_info', 3, 'K3')) == [(3, 'K3')]


def test_bounded_queues_count_what_they_drop():
    sync = StampSynchronizer('image', ['depth', 'camera_info'], queue_size=3)
    sync.add('depth', 0, 'd0')  # both streams seen: images wait for both
    sync.add('camera_info', 0, 'k0')
    out = []
    for k in range(1, 11):  # depth stopped: images wait, the oldest overflow unmatched
        sync.add('camera_info', k, f'k{k}')
        out += sync.add('image', k, f'i{k}')
    counts = sync.counts()
    assert out == [] and counts.pending['image'] == 3
    assert counts.unmatched['image'] == 7
    assert counts.pending['camera_info'] <= 3 + 1
    # Depth comes back: the waiting images that it matches go out, in order; older dropped.
    out = sync.add('depth', 9, 'd9')
    assert [m.items['image'] for m in out] == ['i9']
    assert sync.counts().unmatched['image'] == 8  # i8 dropped behind the newer match
    assert [m.items['image'] for m in sync.add('depth', 10, 'd10')] == ['i10']
    # Secondaries that were never used are counted when they leave the queue.
    assert sync.counts().unmatched['camera_info'] >= 1
    assert sync.counts().unmatched['depth'] == 1  # d0


def test_output_stays_in_stamp_order():
    sync = StampSynchronizer('image', ['camera_info'], tolerance_ns=5)
    sync.add('camera_info', 0, 'k0')
    assert sync.add('image', 10, 'old') == []  # waits for an info past 10
    (match,) = sync.add('image', 20, 'new') + sync.add('camera_info', 20, 'k20')
    assert match.items['image'] == 'new'  # 'old' (no info within 5) is dropped, not sent after
    assert sync.counts().unmatched['image'] == 1
    assert sync.counts().pending['image'] == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match='secondary'):
        StampSynchronizer('image', [])
    with pytest.raises(ValueError, match='differ'):
        StampSynchronizer('image', ['image'])
    with pytest.raises(ValueError, match='optional'):
        StampSynchronizer('image', ['camera_info'], optional=['depth'])
    with pytest.raises(ValueError, match='tolerance'):
        StampSynchronizer('image', ['camera_info'], tolerance_ns=-1)
    with pytest.raises(ValueError, match='not secondaries'):
        StampSynchronizer('image', ['camera_info'], tolerance_ns={'depth': 1})
    with pytest.raises(ValueError, match='fallback'):
        StampSynchronizer('image', ['camera_info'], fallback=['depth'])
    with pytest.raises(ValueError, match='queue_size'):
        StampSynchronizer('image', ['camera_info'], queue_size=0)
    with pytest.raises(KeyError):
        StampSynchronizer('image', ['camera_info']).add('depth', 0, None)


def test_release_lets_a_lone_primary_go_without_the_unseen_stream():
    sync = StampSynchronizer('image', ['camera_info'], optional=['camera_info'])
    assert sync.add('image', 1, 'a') == []
    assert sync.release(lambda item: False) == []
    (match,) = sync.release(lambda item: item == 'a')
    assert match.items == {'image': 'a', 'camera_info': None}
    sync.add('camera_info', 2, 'K')
    assert sync.add('image', 3, 'b') == []
    assert sync.release() == []  # the stream has delivered: required now


def test_fallback_stream_depth_exact_nearest_late_or_none():
    """RGB-D: depth pairs by stamp within its own tolerance; a frame without depth of its
    stamp goes out with None (localized with RGB) once depth passed it or the caller's wait
    is over, and never holds camera_info's exact pairing back."""
    sync = StampSynchronizer('image', ['camera_info', 'depth'],
                             tolerance_ns={'camera_info': 0, 'depth': 20 * MS},
                             optional=['camera_info'], fallback=['depth'])
    sync.add('camera_info', 0, 'K0')
    sync.add('depth', -5 * MS, 'D0')  # 5 ms early: within the depth tolerance
    assert sync.add('image', 0, 'i0') == []  # a nearer depth could still come
    (m,) = sync.add('depth', 100 * MS, 'D1')
    assert m.items == {'image': 'i0', 'camera_info': 'K0', 'depth': 'D0'}
    assert m.offsets_ns == {'camera_info': 0, 'depth': -5 * MS}
    # Depth of another frame only (50 ms off): decided at once, without depth.
    sync.add('camera_info', 150 * MS, 'K1')
    (m,) = sync.add('image', 150 * MS, 'i1') + sync.add('depth', 200 * MS, 'D2')
    assert m.items['depth'] is None and m.items['camera_info'] == 'K1'
    # No depth at all: held until the caller's wait is over, then without it.
    sync.add('camera_info', 300 * MS, 'K2')
    assert sync.add('image', 300 * MS, 'i2') == []
    assert sync.release(lambda item: False) == []
    (m,) = sync.release(lambda item: item == 'i2')
    assert m.items == {'image': 'i2', 'camera_info': 'K2', 'depth': None}
    # A late depth within the wait still pairs.
    sync.add('camera_info', 400 * MS, 'K3')
    assert sync.add('image', 400 * MS, 'i3') == []
    (m,) = sync.add('depth', 403 * MS, 'D3')
    assert m.items['depth'] == 'D3'
    counts = sync.counts()
    assert counts.missing == {'camera_info': 0, 'depth': 2}
    assert counts.unmatched['image'] == 0 and counts.matched == 4
    # Release never lets a frame go without its required camera_info.
    assert sync.add('image', 500 * MS, 'i4') == []
    assert sync.release() == []


def test_the_synchronizer_needs_no_ros():
    """Importable without rclpy (the RGB-D depth stream and tests reuse it anywhere)."""
    import ast
    from pathlib import Path

    import dsac_ros.ros.sync as sync

    tree = ast.parse(Path(sync.__file__).read_text())
    imported = {a.name.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split('.')[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {'__future__', 'bisect', 'collections', 'dataclasses', 'threading',
                        'typing'}, imported
