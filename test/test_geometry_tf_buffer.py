"""TfBuffer: the TF frame tree shared by bag extraction and the node (interpolation, static
edges, composition across branches, extrapolation and connectivity errors, bounded history)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from dsac_ros.geometry.tf_buffer import (
    ConnectivityError,
    ExtrapolationError,
    TfBuffer,
    TransformHistory,
    TransformLookupError,
)


def _T(euler_deg, t) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = Rotation.from_euler('zyx', euler_deg, degrees=True).as_matrix()
    out[:3, 3] = t
    return out


def _set(tree: TfBuffer, parent: str, child: str, t_s: float, T: np.ndarray,
         static: bool = False) -> None:
    q = Rotation.from_matrix(T[:3, :3]).as_quat()
    tree.set_transform(parent, child, int(round(t_s * 1e9)), T[:3, 3], q, static=static)


def test_tf_tree_interpolates_and_composes_across_branches() -> None:
    odom_0, odom_1 = _T([0, 0, 0], [0, 0, 0]), _T([40, 0, 0], [2, 0, 0])
    base_cam = _T([-90, 0, -90], [0.1, 0, 0.3])
    marker = _T([10, 20, 5], [1, 2, 3])
    tree = TfBuffer()
    _set(tree, '/map', 'odom', 10.0, odom_0)
    _set(tree, 'map', 'odom', 11.0, odom_1)
    _set(tree, 'odom', 'cam', 0.0, base_cam, static=True)
    _set(tree, 'map', 'marker', 0.0, marker, static=True)
    ns = int(10.25e9)
    got = tree.lookup('map', 'cam', ns, tolerance_ns=int(1e9))
    odom = _T([10, 0, 0], [0.5, 0, 0])  # slerp + linear at a quarter
    np.testing.assert_allclose(got, odom @ base_cam, atol=1e-12)
    # Across branches: marker <- map -> odom -> cam.
    np.testing.assert_allclose(tree.lookup('marker', 'cam', ns, int(1e9)),
                               np.linalg.inv(marker) @ odom @ base_cam, atol=1e-12)
    with pytest.raises(ExtrapolationError, match='map -> odom'):  # gap of 1 s
        tree.lookup('map', 'cam', ns, tolerance_ns=int(0.2e9))
    assert not tree.can_transform('map', 'cam', ns, int(0.2e9))
    np.testing.assert_allclose(tree.lookup('map', 'cam', int(11.1e9), int(0.2e9)),
                               odom_1 @ base_cam, atol=1e-12)  # nearest within tolerance
    np.testing.assert_allclose(tree.lookup('odom', 'cam', 0), base_cam)  # static: any stamp
    _set(tree, 'world', 'other', 0.0, np.eye(4), static=True)
    with pytest.raises(ConnectivityError, match='not connected'):
        tree.check_connected('world', 'cam')
    with pytest.raises(ConnectivityError, match="frame 'base' is not in the TF tree"):
        tree.lookup('map', 'base', ns, int(1e9))
    assert tree.frames == {'map', 'odom', 'cam', 'marker', 'world', 'other'}


def test_extrapolation_is_an_error_that_names_the_edge_and_its_samples() -> None:
    tree = TfBuffer()
    for t_s in (1.0, 2.0):
        _set(tree, 'map', 'odom', t_s, _T([10 * t_s, 0, 0], [t_s, 0, 0]))
    for stamp_s, where in ((0.5, 'before the first'), (2.5, 'after the last'),
                           (1.5, 'between samples')):
        with pytest.raises(ExtrapolationError, match=where) as error:
            tree.lookup('map', 'odom', int(stamp_s * 1e9), int(0.1e9))
        assert 'map -> odom' in str(error.value) and '1.000000000 s' in str(error.value)
        assert isinstance(error.value, TransformLookupError)


def test_static_replaces_dynamic_and_history_is_bounded() -> None:
    tree = TfBuffer(cache_time_s=1.0)
    for k in range(30):  # 10 Hz for 3 s, out of order at the end
        _set(tree, 'map', 'odom', 0.1 * k, _T([0, 0, 0], [0.1 * k, 0, 0]))
    _set(tree, 'map', 'odom', 2.85, _T([0, 0, 0], [2.85, 0, 0]))
    history = tree._dynamic['odom']
    assert history.span_ns == (int(round(1.9e9)), int(round(2.9e9)))
    np.testing.assert_allclose(tree.lookup('map', 'odom', int(2.875e9), int(0.1e9))[:3, 3],
                               [2.875, 0, 0])
    with pytest.raises(ExtrapolationError, match='before the first'):
        tree.lookup('map', 'odom', int(1.0e9), int(0.2e9))
    _set(tree, 'map', 'odom', 0.0, _T([0, 0, 0], [7, 0, 0]), static=True)
    _set(tree, 'map', 'odom', 3.0, _T([0, 0, 0], [9, 0, 0]))  # ignored: the edge is static
    np.testing.assert_allclose(tree.lookup('map', 'odom', 0)[:3, 3], [7, 0, 0])


def test_history_and_buffer_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match='max_age_ns'):
        TransformHistory(max_age_ns=-1)
    with pytest.raises(ValueError, match='cache_time_s'):
        TfBuffer(cache_time_s=float('nan'))
    with pytest.raises(ValueError, match='two different frame names'):
        TfBuffer().set_transform('map', '/map', 0, np.zeros(3), [0, 0, 0, 1])
    with pytest.raises(ExtrapolationError, match='no samples'):
        TransformHistory(name='pose').at(0)
    tree = TfBuffer()
    _set(tree, 'a', 'b', 0.0, np.eye(4), static=True)
    _set(tree, 'b', 'a', 0.0, np.eye(4), static=True)  # re-parenting makes a cycle
    with pytest.raises(ConnectivityError, match='cycle'):
        tree.lookup('a', 'b', 0)


def test_no_extrapolation_inside_the_tolerance_when_asked() -> None:
    """The node's rule (tf2's): interpolate between any bracketing samples, never hold the
    last sample past its stamp; static edges hold at all times."""
    tree = TfBuffer()
    for t_s in (1.0, 2.0):
        _set(tree, 'odom', 'base', t_s, _T([10 * t_s, 0, 0], [t_s, 0, 0]))
    _set(tree, 'base', 'cam', 0.0, _T([0, 0, 0], [0, 0, 1]), static=True)
    big = int(10e9)
    np.testing.assert_allclose(tree.lookup('odom', 'cam', int(1.5e9), big, extrapolate=False),
                               _T([15, 0, 0], [1.5, 0, 0]) @ _T([0, 0, 0], [0, 0, 1]),
                               atol=1e-12)
    assert tree.can_transform('odom', 'base', int(2.1e9), big)
    assert not tree.can_transform('odom', 'base', int(2.1e9), big, extrapolate=False)
    with pytest.raises(ExtrapolationError, match='after the last'):
        tree.lookup('odom', 'base', int(2.1e9), big, extrapolate=False)
