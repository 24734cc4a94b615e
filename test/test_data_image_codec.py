"""Image / CompressedImage <-> numpy: every encoding, padded rows, big-endian, compressed
formats, errors; rosbags-image as the independent reference where it applies (packed rows)."""

from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from rosbags.image import compressed_image_to_cvimage, image_to_cvimage
from rosbags.typesys import Stores, get_typestore

from dsac_ros.data import image_codec as codec

RNG = np.random.default_rng(3)
H, W = 5, 7
STORE = get_typestore(Stores.ROS2_KILTED)
T = STORE.types


def _pixels(encoding: str) -> np.ndarray:
    _, dtype, channels = codec._layout(encoding)
    shape = (H, W, channels) if channels > 1 else (H, W)
    if dtype == np.float32:
        values = RNG.uniform(0.1, 9.0, shape).astype(np.float32)
        values[0, 0] = np.nan
        return values
    return RNG.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def _rosbags_image(fields: dict) -> object:
    header = T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=1, nanosec=2),
                                      frame_id='cam')
    return T['sensor_msgs/msg/Image'](
        header=header, height=fields['height'], width=fields['width'],
        encoding=fields['encoding'], is_bigendian=fields['is_bigendian'], step=fields['step'],
        data=np.frombuffer(fields['data'], np.uint8))


ENCODINGS = ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16', '16UC1', '32FC1']


@pytest.mark.parametrize('encoding', ENCODINGS)
def test_packed_round_trip_matches_rosbags_image(encoding: str) -> None:
    pixels = _pixels(encoding)
    fields = codec.numpy_to_image_fields(pixels, encoding)
    msg = _rosbags_image(fields)
    ours = codec.image_to_numpy(msg)
    np.testing.assert_array_equal(ours, pixels)
    reference = np.asarray(image_to_cvimage(msg))  # rosbags-image, packed rows only
    np.testing.assert_array_equal(ours, reference.reshape(ours.shape))


@pytest.mark.parametrize('encoding', ENCODINGS)
@pytest.mark.parametrize('container', [bytes, bytearray, list, 'array', 'numpy'])
def test_padded_big_endian_any_container(encoding: str, container) -> None:
    pixels = _pixels(encoding)
    _, dtype, channels = codec._layout(encoding)
    row = W * channels * dtype.itemsize
    step = row + 5
    # Independent construction of the wire bytes: big-endian values, 5 junk bytes per row.
    wire = np.full((H, step), 0xAB, np.uint8)
    wire[:, :row] = pixels.astype(dtype.newbyteorder('>')).reshape(H, -1).view(np.uint8)
    data = wire.tobytes()
    data = {'array': lambda d: array.array('B', d), 'numpy':
            lambda d: np.frombuffer(d, np.uint8)}.get(container, container)(data)
    msg = SimpleNamespace(height=H, width=W, encoding=encoding, is_bigendian=1, step=step,
                          data=data)
    np.testing.assert_array_equal(codec.image_to_numpy(msg), pixels)
    # Our encoder produces the same payload (padding zeroed).
    fields = codec.numpy_to_image_fields(pixels, encoding, step=step, is_bigendian=True)
    got = np.frombuffer(fields['data'], np.uint8).reshape(H, step)
    np.testing.assert_array_equal(got[:, :row], wire[:, :row])
    assert fields['step'] == step and fields['is_bigendian'] == 1


@pytest.mark.parametrize('encoding,expected', [
    ('rgb8', lambda p: p), ('bgr8', lambda p: p[:, :, ::-1]), ('rgba8', lambda p: p[:, :, :3]),
    ('bgra8', lambda p: p[:, :, [2, 1, 0]]),
    ('mono8', lambda p: np.repeat(p[:, :, None], 3, 2)),
    ('mono16', lambda p: np.repeat((p >> 8).astype(np.uint8)[:, :, None], 3, 2))])
def test_image_to_rgb(encoding, expected) -> None:
    pixels = _pixels(encoding)
    msg = SimpleNamespace(**codec.numpy_to_image_fields(pixels, encoding, step=W * 8))
    rgb = codec.image_to_rgb(msg)
    assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3)
    np.testing.assert_array_equal(rgb, expected(pixels))


def test_fill_message_and_depth() -> None:
    msg = T['sensor_msgs/msg/Image'](header=None, height=0, width=0, encoding='', is_bigendian=0,
                                     step=0, data=np.zeros(0, np.uint8))
    depth_mm = np.array([[0, 1000, 65535], [2500, 1, 40000]], np.uint16)
    codec.numpy_to_image(depth_mm, '16UC1', msg)
    assert isinstance(msg.data, np.ndarray) and msg.step == 6
    np.testing.assert_allclose(codec.image_to_depth_m(msg),
                               [[np.nan, 1.0, np.nan], [2.5, 0.001, 40.0]], rtol=1e-6)
    metres = np.array([[np.nan, 1.5, -1.0]], np.float32)
    msg32 = SimpleNamespace(**codec.numpy_to_image_fields(metres, '32FC1', is_bigendian=True))
    np.testing.assert_array_equal(codec.image_to_depth_m(msg32), [[np.nan, 1.5, np.nan]])


def test_errors_name_the_problem() -> None:
    pixels = _pixels('rgb8')
    fields = codec.numpy_to_image_fields(pixels, 'rgb8')
    with pytest.raises(ValueError, match='yuv422'):
        codec.image_to_numpy(SimpleNamespace(**{**fields, 'encoding': 'yuv422'}))
    with pytest.raises(ValueError, match='step 20 is smaller'):
        codec.image_to_numpy(SimpleNamespace(**{**fields, 'step': 20}))
    with pytest.raises(ValueError, match='data holds'):
        codec.image_to_numpy(SimpleNamespace(**{**fields, 'data': fields['data'][:-1]}))
    with pytest.raises(ValueError, match='16UC1'):
        codec.image_to_rgb(SimpleNamespace(**codec.numpy_to_image_fields(
            _pixels('16UC1'), '16UC1')))
    with pytest.raises(ValueError, match='dtype'):
        codec.numpy_to_image_fields(pixels.astype(np.uint16), 'rgb8')
    with pytest.raises(ValueError, match='could not be decoded'):
        codec.image_to_rgb(SimpleNamespace(format='jpeg', data=b'not a jpeg'))


def _compressed_msg(fields: dict) -> object:
    header = T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=1, nanosec=2),
                                      frame_id='cam')
    return T['sensor_msgs/msg/CompressedImage'](header=header, format=fields['format'],
                                                data=np.frombuffer(fields['data'], np.uint8))


def test_compressed_png_exact_and_jpeg_close() -> None:
    rgb = cv2.GaussianBlur(_pixels('rgb8'), (3, 3), 0)
    png = _compressed_msg(codec.numpy_to_compressed_fields(rgb, 'rgb8', 'png'))
    assert png.format == 'rgb8; png compressed bgr8'
    np.testing.assert_array_equal(codec.image_to_rgb(png), rgb)
    # rosbags-image decodes to BGR by default: the same pixels.
    np.testing.assert_array_equal(np.asarray(compressed_image_to_cvimage(png))[:, :, ::-1], rgb)
    big = cv2.resize(rgb, (64, 48), interpolation=cv2.INTER_CUBIC)
    jpeg = _compressed_msg(codec.numpy_to_compressed_fields(big, 'rgb8', 'jpeg', 98))
    assert 'jpeg' in jpeg.format
    assert np.abs(codec.image_to_rgb(jpeg).astype(int) - big).mean() < 4.0
    bgr_fields = codec.numpy_to_compressed_fields(rgb[:, :, ::-1].copy(), 'bgr8', 'png')
    np.testing.assert_array_equal(codec.image_to_rgb(SimpleNamespace(**bgr_fields)), rgb)
    mono = _pixels('mono8')
    plain = SimpleNamespace(format='png', data=cv2.imencode('.png', mono)[1].tobytes())
    np.testing.assert_array_equal(codec.image_to_rgb(plain), np.repeat(mono[:, :, None], 3, 2))


def test_compressed_png16_depth() -> None:
    depth_mm = _pixels('16UC1')
    fields = codec.numpy_to_compressed_fields(depth_mm, '16UC1', 'png')
    assert fields['format'] == '16UC1; png compressed'
    pixels, encoding = codec.compressed_to_numpy(_compressed_msg(fields))
    assert encoding == '16UC1' and pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels, depth_mm)
    # compressedDepth: 12-byte header (format, quantisation A, B) before the PNG.
    header = np.array([0], '<i4').tobytes() + np.array([0.0, 0.0], '<f4').tobytes()
    packed = SimpleNamespace(format='16UC1; compressedDepth png', data=header + fields['data'])
    np.testing.assert_array_equal(codec.compressed_to_numpy(packed)[0], depth_mm)
    with pytest.raises(ValueError, match='depth'):
        codec.image_to_rgb(_compressed_msg(fields))
    with pytest.raises(ValueError, match='png'):
        codec.numpy_to_compressed_fields(depth_mm, '16UC1', 'jpeg')
