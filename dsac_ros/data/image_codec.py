"""sensor_msgs/Image and sensor_msgs/CompressedImage <-> numpy, without cv_bridge.

Duck-typed: works on rclpy messages, rosbags messages and plain objects with the attributes
``height, width, encoding, is_bigendian, step, data`` (raw) or ``format, data`` (compressed).
``data`` may be ``bytes``, ``bytearray``, ``memoryview``, ``array.array``, a list of ints or a
numpy array (rosbags gives uint8 arrays, rclpy gives ``array.array('B')``).

Raw encodings: rgb8, bgr8, rgba8, bgra8, mono8, mono16, 16UC1, 32FC1 (also 8UC1 = mono8).
Rows may be padded (``step`` > ``width * bytes per pixel``, as cv_bridge and some drivers
produce) and multi-byte pixels may be big-endian (``is_bigendian``); both are honoured, which
``rosbags-image`` and the PyPI ``cv_bridge`` do not do.

Compressed: whatever ``cv2.imdecode`` reads (JPEG, PNG including 16-bit PNG). ``format`` is
parsed for the original encoding as image_transport writes it (``'jpeg'``, ``'png'``,
``'rgb8; jpeg compressed bgr8'``, ``'16UC1; png compressed'``); the ``compressedDepth``
variant (a 12-byte header before the PNG) is also read.
"""

from __future__ import annotations

import array
import logging
import re
import struct
from typing import Any

import cv2
import numpy as np

LOGGER = logging.getLogger(__name__)

# encoding (lower case) -> (canonical name, dtype, channels)
_LAYOUTS: dict[str, tuple[str, np.dtype, int]] = {
    'rgb8': ('rgb8', np.dtype(np.uint8), 3),
    'bgr8': ('bgr8', np.dtype(np.uint8), 3),
    'rgba8': ('rgba8', np.dtype(np.uint8), 4),
    'bgra8': ('bgra8', np.dtype(np.uint8), 4),
    'mono8': ('mono8', np.dtype(np.uint8), 1),
    '8uc1': ('8UC1', np.dtype(np.uint8), 1),
    'mono16': ('mono16', np.dtype(np.uint16), 1),
    '16uc1': ('16UC1', np.dtype(np.uint16), 1),
    '32fc1': ('32FC1', np.dtype(np.float32), 1),
}
SUPPORTED_ENCODINGS = tuple(layout[0] for layout in _LAYOUTS.values())
_COLOUR_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', '8uc1', 'mono16')


def _layout(encoding: str) -> tuple[str, np.dtype, int]:
    layout = _LAYOUTS.get(str(encoding).strip().lower())
    if layout is None:
        raise ValueError(f'unsupported image encoding {encoding!r}; supported: '
                         f'{", ".join(SUPPORTED_ENCODINGS)}')
    return layout


def _data_bytes(data: Any) -> np.ndarray:
    """Message ``data`` of any supported container -> 1-D uint8 array (no copy when possible)."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8).reshape(-1)


def is_compressed(msg: Any) -> bool:
    """True for a CompressedImage-like message (has ``format``, no ``encoding``)."""
    return hasattr(msg, 'format') and not hasattr(msg, 'encoding')


def image_to_numpy(msg: Any) -> np.ndarray:
    """Raw sensor_msgs/Image -> numpy in the message's own channel order and type.

    Returns (H, W, C) for multi-channel encodings, (H, W) for single-channel ones; dtype uint8
    (8-bit), uint16 (mono16, 16UC1; raw units, e.g. millimetres) or float32 (32FC1; NaN is
    kept). Always a new, writable, native-endian array.
    Raises ValueError for an unsupported encoding, a bad size, ``step`` smaller than a row or
    ``data`` too short.
    """
    name, dtype, channels = _layout(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ValueError(f'{name} image has size {width}x{height}')
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ValueError(f'{name} image {width}x{height}: step {step} is smaller than a row '
                         f'({row_bytes} bytes)')
    buffer = _data_bytes(msg.data)
    needed = step * (height - 1) + row_bytes  # the last row's padding may be absent
    if buffer.size < needed:
        raise ValueError(f'{name} image {width}x{height} step {step}: data holds {buffer.size} '
                         f'bytes, needs {needed}')
    if buffer.size < step * height:
        buffer = np.concatenate([buffer, np.zeros(step * height - buffer.size, np.uint8)])
    rows = buffer[:step * height].reshape(height, step)[:, :row_bytes]
    order = '>' if bool(msg.is_bigendian) else '<'
    pixels = np.ascontiguousarray(rows).view(dtype.newbyteorder(order))
    pixels = pixels.astype(dtype, copy=True)  # native byte order, own memory
    return pixels.reshape(height, width, channels) if channels > 1 else pixels.reshape(height,
                                                                                       width)


def _to_rgb(array_: np.ndarray, encoding: str) -> np.ndarray:
    """Decoded pixels in ``encoding`` order -> (H, W, 3) uint8 RGB."""
    encoding = encoding.lower()
    if encoding == 'rgb8':
        return np.ascontiguousarray(array_)
    if encoding == 'bgr8':
        return np.ascontiguousarray(array_[:, :, ::-1])
    if encoding == 'rgba8':
        return np.ascontiguousarray(array_[:, :, :3])
    if encoding == 'bgra8':
        return np.ascontiguousarray(array_[:, :, 2::-1])
    if encoding in ('mono8', '8uc1'):
        return np.repeat(array_[:, :, None], 3, axis=2)
    if encoding == 'mono16':
        # 16-bit grey cameras: keep the 8 most significant bits.
        return np.repeat((array_ >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    raise ValueError(f'encoding {encoding!r} is not a colour or mono image; colour input must '
                     f'be one of {", ".join(_COLOUR_ENCODINGS)}')


def image_to_rgb(msg: Any) -> np.ndarray:
    """Image or CompressedImage -> (H, W, 3) uint8 RGB.

    Colour encodings are reordered to RGB (alpha dropped); mono8 is replicated to 3 channels,
    mono16 keeps its high byte. Depth encodings (16UC1, 32FC1) raise ValueError.
    """
    if is_compressed(msg):
        array_, encoding = compressed_to_numpy(msg)
        if encoding in ('16UC1', '32FC1'):
            raise ValueError(f'compressed image with format {msg.format!r} holds depth, '
                             'not colour')
        return _to_rgb(array_, encoding)
    name, _, _ = _layout(msg.encoding)
    if name.lower() not in _COLOUR_ENCODINGS:
        raise ValueError(f'encoding {msg.encoding!r} is not a colour or mono image; colour '
                         f'input must be one of {", ".join(_COLOUR_ENCODINGS)}')
    return _to_rgb(image_to_numpy(msg), name)


decode_rgb = image_to_rgb  # name used by dsac_ros.ros.messages


def image_to_depth_m(msg: Any) -> np.ndarray:
    """Depth Image / CompressedImage -> (H, W) float32 metres, NaN where invalid.

    16UC1 / mono16 are millimetres (0 and 65535 invalid); 32FC1 is metres (NaN, inf and <= 0
    invalid).
    """
    if is_compressed(msg):
        array_, encoding = compressed_to_numpy(msg)
    else:
        array_, encoding = image_to_numpy(msg), _layout(msg.encoding)[0]
    if array_.ndim != 2:
        raise ValueError(f'depth image must have one channel, found {encoding} with shape '
                         f'{array_.shape}')
    if array_.dtype == np.uint16:
        depth = array_.astype(np.float32) / 1000.0
        depth[(array_ == 0) | (array_ == 65535)] = np.nan
        return depth
    if array_.dtype == np.float32:
        depth = array_.copy()
        depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
        return depth
    raise ValueError(f'depth must be 16UC1 (mm) or 32FC1 (m), found {encoding}')


def numpy_to_image_fields(image: np.ndarray, encoding: str, step: int | None = None,
                          is_bigendian: bool = False) -> dict[str, Any]:
    """numpy -> the fields of a sensor_msgs/Image.

    Args:
        image: (H, W, C) or (H, W) array already in ``encoding``'s channel order; its dtype
            must match the encoding (uint8, uint16 or float32).
        encoding: one of ``SUPPORTED_ENCODINGS``.
        step: row length in bytes, >= W * bytes per pixel (padding is zero); None = packed.
        is_bigendian: write multi-byte pixels big-endian.
    Returns:
        dict(height, width, encoding, is_bigendian (0/1), step, data (bytes)).
    """
    name, dtype, channels = _layout(encoding)
    image = np.asarray(image)
    if image.ndim == 2 and channels == 1:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] != channels:
        raise ValueError(f'{name} needs {channels} channel(s), got an array of shape '
                         f'{image.shape}')
    if image.dtype != dtype:
        raise ValueError(f'{name} needs dtype {dtype}, got {image.dtype}')
    height, width = image.shape[:2]
    row_bytes = width * channels * dtype.itemsize
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise ValueError(f'step {step} is smaller than a {name} row of width {width} '
                         f'({row_bytes} bytes)')
    order = '>' if is_bigendian else '<'
    pixels = image.astype(dtype.newbyteorder(order), copy=False).reshape(height, -1)
    rows = np.zeros((height, step), np.uint8)
    rows[:, :row_bytes] = np.ascontiguousarray(pixels).view(np.uint8)
    return {'height': int(height), 'width': int(width), 'encoding': name,
            'is_bigendian': int(bool(is_bigendian)), 'step': int(step), 'data': rows.tobytes()}


def numpy_to_image(image: np.ndarray, encoding: str, msg: Any = None, step: int | None = None,
                   is_bigendian: bool = False) -> Any:
    """Fill ``msg`` (an rclpy Image, or anything with those attributes) from numpy and return
    it; without ``msg`` return the fields dict of :func:`numpy_to_image_fields`.

    ``data`` is assigned as bytes, or as a uint8 array when the message already holds a numpy
    array (rosbags messages).
    """
    fields = numpy_to_image_fields(image, encoding, step=step, is_bigendian=is_bigendian)
    if msg is None:
        return fields
    if isinstance(getattr(msg, 'data', None), np.ndarray):
        fields['data'] = np.frombuffer(fields['data'], np.uint8).copy()
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


_FORMAT_PREFIX = re.compile(r'^\s*([A-Za-z0-9]+)\s*;')


def _format_encoding(fmt: str) -> str | None:
    """Original encoding named at the start of an image_transport ``format``, if any."""
    match = _FORMAT_PREFIX.match(fmt)
    if match is None:
        return None
    layout = _LAYOUTS.get(match.group(1).lower())
    return None if layout is None else layout[0]


def compressed_to_numpy(msg: Any) -> tuple[np.ndarray, str]:
    """CompressedImage -> (pixels, encoding).

    Colour images come back as (H, W, 3) uint8 RGB with encoding 'rgb8' (4-channel PNGs lose
    alpha); grey 8-bit as (H, W) uint8 'mono8'; 16-bit PNG as (H, W) uint16 with the encoding
    named in ``format`` ('16UC1' or 'mono16', default '16UC1'). ``compressedDepth`` 32FC1 is
    turned back into float32 metres ('32FC1') with its inverse-depth quantisation.
    Raises ValueError when the bytes do not decode.
    """
    fmt = str(msg.format)
    buffer = _data_bytes(msg.data)
    original = _format_encoding(fmt)
    depth_header = None
    if 'compresseddepth' in fmt.lower():
        if buffer.size < 12:
            raise ValueError(f'compressedDepth image (format {fmt!r}) is shorter than its header')
        # image_transport compressedDepth: int32 format, float32 depthQuantA, depthQuantB.
        depth_header = struct.unpack('<iff', buffer[:12].tobytes())
        buffer = buffer[12:]
    decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    if decoded is None:
        raise ValueError(f'compressed image (format {fmt!r}, {buffer.size} bytes) could not be '
                         'decoded')
    if decoded.ndim == 3:
        code = cv2.COLOR_BGRA2RGB if decoded.shape[2] == 4 else cv2.COLOR_BGR2RGB
        rgb = cv2.cvtColor(decoded, code)
        if rgb.dtype == np.uint16:  # 16-bit colour PNG: keep the high byte
            rgb = (rgb >> 8).astype(np.uint8)
        return rgb, 'rgb8'
    if decoded.dtype == np.uint8:
        return decoded, 'mono8'
    if decoded.dtype == np.uint16:
        if depth_header is not None and original == '32FC1':
            _, quant_a, quant_b = depth_header
            with np.errstate(divide='ignore'):
                depth = quant_a / (decoded.astype(np.float32) - quant_b)
            depth[decoded == 0] = np.nan
            return depth.astype(np.float32), '32FC1'
        return decoded, original if original in ('16UC1', 'mono16') else '16UC1'
    raise ValueError(f'compressed image (format {fmt!r}) decoded to unsupported dtype '
                     f'{decoded.dtype}')


def numpy_to_compressed_fields(image: np.ndarray, encoding: str, fmt: str = 'jpeg',
                               jpeg_quality: int = 95) -> dict[str, Any]:
    """numpy -> CompressedImage fields dict(format, data) as image_transport writes them.

    Args:
        image: pixels in ``encoding`` order: rgb8/bgr8 (H, W, 3) uint8, mono8 (H, W) uint8,
            16UC1/mono16 (H, W) uint16 (PNG only).
        encoding: the original encoding recorded in ``format``.
        fmt: 'jpeg' or 'png'.
    """
    name, dtype, channels = _layout(encoding)
    fmt = fmt.lower()
    if fmt not in ('jpeg', 'png'):
        raise ValueError(f"compression format must be 'jpeg' or 'png', not {fmt!r}")
    image = np.asarray(image)
    if image.dtype != dtype:
        raise ValueError(f'{name} needs dtype {dtype}, got {image.dtype}')
    if name in ('rgb8', 'rgba8'):
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if channels == 3 else cv2.COLOR_RGBA2BGR)
    elif name == 'bgra8':
        bgr = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif name in ('bgr8', 'mono8', '8UC1'):
        bgr = image
    elif name in ('16UC1', 'mono16'):
        if fmt != 'png':
            raise ValueError(f'{name} can only be compressed as png, not {fmt}')
        bgr = image
    else:
        raise ValueError(f'{name} cannot be compressed as {fmt}')
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == 'jpeg' else []
    ok, encoded = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', bgr, params)
    if not ok:
        raise ValueError(f'cv2.imencode failed for {name} as {fmt}')
    target = ' bgr8' if channels >= 3 else ''
    return {'format': f'{name}; {fmt} compressed{target}', 'data': encoded.tobytes()}


__all__ = ['SUPPORTED_ENCODINGS', 'compressed_to_numpy', 'decode_rgb', 'image_to_depth_m',
           'image_to_numpy', 'image_to_rgb', 'is_compressed', 'numpy_to_compressed_fields',
           'numpy_to_image', 'numpy_to_image_fields']
