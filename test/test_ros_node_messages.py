"""Message <-> numpy conversions of the ROS edge, checked against OpenCV and sampling."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from dsac_ros.geometry.distortion import DistortionModel, Undistorter
from dsac_ros.ros import messages
from dsac_ros.ros.pipeline import LatestSlot


def _random_pose(rng: np.random.Generator) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rng.normal(size=3)).as_matrix()
    T[:3, 3] = rng.normal(size=3) * 2.0
    return T


def _image(array: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    msg = Image()
    msg.height, msg.width = array.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = int(bigendian)
    row = array.reshape(array.shape[0], -1)
    if bigendian:
        row = row.astype(row.dtype.newbyteorder('>'))
    raw = row.view(np.uint8).reshape(array.shape[0], -1)
    padded = np.concatenate([raw, np.full((array.shape[0], pad), 7, np.uint8)], axis=1)
    msg.step = padded.shape[1]
    msg.data = padded.tobytes()
    return msg


def test_pose_quaternion_matches_opencv_rodrigues():
    rng = np.random.default_rng(0)
    for _ in range(20):
        T_wc = _random_pose(rng)
        msg = messages.pose_stamped(T_wc, messages.PoseStamped().header.stamp, 'map')
        q = msg.pose.orientation
        # Independent reference: OpenCV's axis-angle of the same rotation.
        rvec, _ = cv2.Rodrigues(T_wc[:3, :3])
        angle = np.linalg.norm(rvec)
        axis = rvec.ravel() / angle
        expected = np.concatenate([axis * np.sin(angle / 2), [np.cos(angle / 2)]])
        expected = expected if expected[3] >= 0 else -expected
        np.testing.assert_allclose([q.x, q.y, q.z, q.w], expected, atol=1e-9)
        np.testing.assert_allclose(
            [msg.pose.position.x, msg.pose.position.y, msg.pose.position.z], T_wc[:3, 3])
        assert msg.header.frame_id == 'map'
        np.testing.assert_allclose(messages.pose_msg_to_matrix(msg.pose), T_wc, atol=1e-12)


def test_transform_stamped_round_trip():
    T = _random_pose(np.random.default_rng(1))
    msg = messages.transform_stamped(T, messages.PoseStamped().header.stamp, 'map', 'camera')
    assert (msg.header.frame_id, msg.child_frame_id) == ('map', 'camera')
    np.testing.assert_allclose(messages.transform_msg_to_matrix(msg.transform), T, atol=1e-12)


def _se3_exp(xi_n6: np.ndarray) -> np.ndarray:
    """First principles exp of twists (rho, phi) (N, 6) via the 4x4 matrix exponential
    (N, 4, 4), batched."""
    from scipy.linalg import expm
    xi = np.atleast_2d(xi_n6)
    A = np.zeros((len(xi), 4, 4))
    p0, p1, p2 = xi[:, 3:].T
    A[:, 0, 1], A[:, 0, 2], A[:, 1, 2] = -p2, p1, -p0
    A[:, 1, 0], A[:, 2, 0], A[:, 2, 1] = p2, -p1, p0
    A[:, :3, 3] = xi[:, :3]
    return expm(A)


def test_covariance_to_ros_matches_sampled_poses():
    """Sample camera-frame twists with the estimator's convention, measure the spread of
    position and fixed-axis rotation in the map frame, compare with the mapped covariance."""
    rng = np.random.default_rng(2)
    T_wc = _random_pose(rng)
    L = rng.normal(size=(6, 6)) * np.array([0.02, 0.02, 0.02, 0.01, 0.01, 0.01])[:, None]
    cov = L @ L.T + np.eye(6) * 1e-6
    samples = rng.multivariate_normal(np.zeros(6), cov, size=20000)
    T = T_wc @ _se3_exp(samples)  # estimator: T_wc_true = T_wc_est @ exp(xi^)
    pos = T[:, :3, 3] - T_wc[:3, 3]
    # fixed-axis (left) perturbation in the map frame: R = exp([dtheta]x) R_wc
    rot = Rotation.from_matrix(T[:, :3, :3] @ T_wc[:3, :3].T).as_rotvec()
    empirical = np.cov(np.concatenate([pos, rot], axis=1).T)
    mapped = messages.covariance_to_ros(cov, T_wc)
    scale = np.sqrt(np.outer(np.diag(mapped), np.diag(mapped)))
    np.testing.assert_allclose(empirical / scale, mapped / scale, atol=0.05)
    np.testing.assert_allclose(mapped, mapped.T)
    bad = messages.covariance_to_ros(np.full((6, 6), np.nan), T_wc)
    assert bad[0, 0] == -1.0


@pytest.mark.parametrize('encoding,channels,order', [
    ('rgb8', 3, [0, 1, 2]), ('bgr8', 3, [2, 1, 0]), ('rgba8', 4, [0, 1, 2]),
    ('bgra8', 4, [2, 1, 0])])
def test_colour_images_decode_with_padded_rows(encoding, channels, order):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, size=(5, 7, channels), dtype=np.uint8)
    rgb = messages.image_msg_to_rgb(_image(raw, encoding, pad=3))
    np.testing.assert_array_equal(rgb, raw[:, :, order])


def test_mono8_is_replicated_and_compressed_decodes():
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7)
    rgb = messages.image_msg_to_rgb(_image(gray, 'mono8'))
    assert rgb.shape == (5, 7, 3) and (rgb == gray[:, :, None]).all()
    colour = np.random.default_rng(4).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    ok, png = cv2.imencode('.png', cv2.cvtColor(colour, cv2.COLOR_RGB2BGR))
    msg = CompressedImage(format='rgb8; png compressed bgr8', data=png.tobytes())
    np.testing.assert_array_equal(messages.image_msg_to_rgb(msg), colour)


@pytest.mark.parametrize('make,match', [
    (lambda: _image(np.full((4, 4), np.nan, np.float32), '32FC1'), '32FC1|colour|NaN'),
    (lambda: _image(np.zeros((4, 4), np.uint16), '16UC1'), '16UC1|colour'),
    (lambda: Image(height=4, width=4, encoding='rgb8', step=12), 'empty'),
    (lambda: Image(height=4, width=4, encoding='yuv422', step=8, data=bytes(32)), 'yuv422'),
    (lambda: Image(height=4, width=4, encoding='rgb8', step=12, data=bytes(20)), 'step|data'),
    (lambda: CompressedImage(format='jpeg', data=b'not a jpeg'), 'decod'),
])
def test_bad_images_raise_value_error_naming_the_problem(make, match):
    with pytest.raises(ValueError, match=match):
        messages.image_msg_to_rgb(make())


def test_camera_info_parsing_and_undistortion_against_opencv():
    K = np.array([[300.0, 0, 161.0], [0, 310.0, 119.0], [0, 0, 1]])
    D = np.array([-0.2, 0.05, 0.001, -0.001, 0.0])
    info = messages.intrinsics_to_camera_info(K, 320, 240, 'cam')
    info.d = D.tolist()
    intr = messages.camera_info_to_intrinsics(info)
    assert intr.distorted and intr.model is DistortionModel.PLUMB_BOB
    np.testing.assert_allclose(intr.K, K)
    # A dot at a known undistorted position, drawn where the distorted camera sees it.
    target = np.array([[250.0, 60.0]])
    normalized = (np.linalg.inv(K) @ np.array([*target[0], 1.0]))[:2]
    distorted, _ = cv2.projectPoints(np.array([[*normalized, 1.0]]), np.zeros(3), np.zeros(3),
                                     K, D)
    image = np.zeros((240, 320, 3), np.uint8)
    cv2.circle(image, tuple(int(round(x)) for x in distorted.ravel()), 3, (255, 255, 255), -1)
    out = Undistorter()(image, intr)
    ys, xs = np.nonzero(out[:, :, 0] > 127)
    assert abs(xs.mean() - target[0, 0]) < 1.0 and abs(ys.mean() - target[0, 1]) < 1.0
    # Zero distortion passes the image through untouched.
    info.d = [0.0] * 5
    assert Undistorter()(image, messages.camera_info_to_intrinsics(info)) is image


def test_fisheye_and_bad_camera_info():
    K = np.array([[200.0, 0, 160.0], [0, 200.0, 120.0], [0, 0, 1]])
    info = messages.intrinsics_to_camera_info(K, 320, 240)
    info.distortion_model = 'equidistant'
    info.d = [0.1, -0.02, 0.0, 0.0]
    intr = messages.camera_info_to_intrinsics(info)
    out = Undistorter()(np.full((240, 320, 3), 200, np.uint8), intr)
    assert out.shape == (240, 320, 3) and out[120, 160, 0] == 200
    with pytest.raises(ValueError, match='pinhole'):
        messages.camera_info_to_intrinsics(CameraInfo(width=320, height=240))
    info.distortion_model = 'weird_model'
    with pytest.raises(ValueError, match='weird_model'):
        messages.camera_info_to_intrinsics(info)


def test_latest_slot_drops_old_items_and_wakes_taker():
    slot: LatestSlot[int] = LatestSlot()
    for i in range(5):
        slot.put(i)
    assert slot.take(0.0) == 4
    assert (slot.received, slot.dropped) == (5, 4)
    assert slot.take(0.01) is None
    got = []
    taker = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    taker.start()
    time.sleep(0.05)
    slot.put(42)
    taker.join(2.0)
    assert got == [42]
    slot.close()
    assert slot.take(1.0) is None


class _RecordingRelocalizer:
    """Stands in for Relocalizer to see what the pipeline hands it."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray | None]] = []

    def localize(self, image, K):
        self.calls.append((image, K))
        return type('Loc', (), {'timings': {'network': 1.0, 'estimator': 2.0}})()


def test_pipeline_undistorts_and_passes_camera_k():
    from dsac_ros.ros.pipeline import FramePipeline

    K = np.array([[300.0, 0, 160.0], [0, 300.0, 120.0], [0, 0, 1]])
    rgb = np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    info = messages.intrinsics_to_camera_info(K, 320, 240)
    info.d = [-0.25, 0.07, 0.0, 0.0, 0.0]
    reloc = _RecordingRelocalizer()
    pipeline = FramePipeline(reloc)
    result = pipeline.process(messages.rgb_to_image_msg(rgb), info)
    assert result.error is None and result.used_camera_info
    image, K_used = reloc.calls[-1]
    np.testing.assert_allclose(K_used, K)
    expected = cv2.undistort(rgb, K, np.asarray(info.d), None, K)
    # Same geometry as OpenCV's undistort (interior; borders differ in interpolation only).
    diff = np.abs(image.astype(int) - expected.astype(int))[20:-20, 20:-20]
    assert np.median(diff) <= 1 and set(result.timings_ms) >= {'decode', 'network', 'estimator'}
    # No camera_info: K None (the relocalizer uses the model's intrinsics), image untouched.
    pipeline.process(messages.rgb_to_image_msg(rgb), None)
    assert reloc.calls[-1][1] is None and (reloc.calls[-1][0] == rgb).all()
    # Size mismatch with camera_info: rejected, relocalizer not called.
    n = len(reloc.calls)
    bad = pipeline.process(messages.rgb_to_image_msg(rgb[:120, :160].copy()), info)
    assert bad.localization is None and '160x120' in bad.error and len(reloc.calls) == n


# -- RGB-D: depth messages, stamp pairing, the pipeline's depth path --------------------------


@pytest.mark.parametrize('encoding', ['16UC1', '32FC1'])
def test_depth_message_round_trip(encoding):
    depth = np.random.default_rng(3).uniform(0.3, 8.0, (6, 9)).astype(np.float32)
    depth[0, 0], depth[1, 1], depth[2, 2] = np.nan, 0.0, -1.0
    msg = messages.depth_to_image_msg(depth, encoding, 'cam')
    assert msg.encoding == encoding and msg.header.frame_id == 'cam'
    back = messages.depth_msg_to_m(msg)
    valid = np.isfinite(depth) & (depth > 0)
    np.testing.assert_allclose(back[valid], depth[valid], atol=5e-4 if encoding == '16UC1' else 0)
    assert np.isnan(back[~valid]).all()
    with pytest.raises(ValueError, match='one channel'):
        messages.depth_msg_to_m(messages.rgb_to_image_msg(np.zeros((4, 4, 3), np.uint8)))


class _DepthRelocalizer:
    """Records what the pipeline hands over; reports too little depth like Relocalizer when
    the depth has fewer than 10 valid pixels."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def localize(self, image, K, depth_m=None):
        from dsac_ros.dsac import PoseMode

        self.calls.append((image, K, depth_m))
        few = depth_m is not None and int(np.isfinite(depth_m).sum()) < 10
        mode = PoseMode.RGBD if depth_m is not None and not few else PoseMode.RGB
        return type('Loc', (), {'timings': {}, 'mode': mode,
                                'depth_fallback': 'too few' if few else ''})()


def test_pipeline_depth_paths_and_undistorted_depth():
    from dsac_ros.dsac import PoseMode
    from dsac_ros.ros.pipeline import DepthFallback, FramePipeline

    K = np.array([[300.0, 0, 160.0], [0, 300.0, 120.0], [0, 0, 1]])
    rgb = np.zeros((240, 320, 3), np.uint8)
    image = messages.rgb_to_image_msg(rgb)
    info = messages.intrinsics_to_camera_info(K, 320, 240)
    depth = np.random.default_rng(1).uniform(1.0, 4.0, (240, 320)).astype(np.float32)
    reloc = _DepthRelocalizer()
    pipeline = FramePipeline(reloc, expects_depth=True)
    ok = pipeline.process(image, info, messages.depth_to_image_msg(depth, '32FC1'))
    assert ok.mode is PoseMode.RGBD and ok.depth_fallback is None
    np.testing.assert_array_equal(reloc.calls[-1][2], depth)
    missing = pipeline.process(image, info, None)
    assert missing.depth_fallback is DepthFallback.NO_DEPTH and len(reloc.calls[-1]) == 3
    assert reloc.calls[-1][2] is None and missing.mode is PoseMode.RGB
    wrong = pipeline.process(image, info, messages.depth_to_image_msg(depth[:, :100]))
    assert wrong.depth_fallback is DepthFallback.BAD_DEPTH and 'registered' in wrong.depth_error
    assert wrong.localization is not None and wrong.error is None  # the frame still localizes
    empty = pipeline.process(image, info, messages.depth_to_image_msg(0 * depth))
    assert empty.depth_fallback is DepthFallback.INVALID_DEPTH and empty.depth_error == 'too few'
    # With lens distortion the depth (here at half resolution) is undistorted like the image,
    # nearest-neighbour: a step edge stays a step (no depth invented between the surfaces).
    info.d = [-0.25, 0.07, 0.0, 0.0, 0.0]
    step = np.where(np.arange(160)[None, :] < 80, 1.0, 3.0).repeat(120, 0).astype(np.float32)
    pipeline.process(image, info, messages.depth_to_image_msg(step, '32FC1'))
    out = reloc.calls[-1][2]
    K_half = np.array([[150.0, 0, 79.75], [0, 150.0, 59.75], [0, 0, 1]])
    expected = cv2.undistort(step, K_half, np.asarray(info.d), None, K_half)
    assert out.shape == (120, 160)
    assert set(np.unique(out[np.isfinite(out)])) <= {0.0, 1.0, 3.0}
    inner = (slice(20, -20), slice(20, -20))
    agree = np.abs(out[inner] - expected[inner]) < 0.5
    assert agree.mean() > 0.97
    # an RGB-only pipeline ignores depth entirely
    rgb_only = FramePipeline(reloc).process(image, info, None)
    assert rgb_only.depth_fallback is None and len(reloc.calls[-1]) == 3
