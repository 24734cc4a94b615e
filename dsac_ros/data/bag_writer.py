"""A 7-Scenes-layout scene -> a bag (rosbag2 mcap / sqlite3, ROS 1), for tests and demos.

:func:`write_scene_bag` writes images, camera info, depth, a pose topic and /tf + /tf_static, the
reverse of :func:`dsac_ros.data.bag_extraction.extract_bag`. The TF tree is a robot's (REP-105):
``map -> odom`` (ground truth of the odometry drift, optional), ``odom -> base_link`` (odometry
that drifts away from the map), static ``base_link -> camera_link -> optical frame``.
"""

from __future__ import annotations

from dataclasses import dataclass
import enum
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from dsac_ros.data import image_codec
from dsac_ros.data.bag_extraction import CAMERA_INFO_TYPE, TF_TYPE
from dsac_ros.data.seven_scenes import SceneDataset
from dsac_ros.geometry.transforms import matrix_to_quaternion_np

LOGGER = logging.getLogger(__name__)


class BagFormat(str, enum.Enum):
    """Bag container written by :func:`write_scene_bag`."""

    MCAP = 'mcap'
    SQLITE3 = 'sqlite3'
    ROS1 = 'ros1'


@dataclass(frozen=True)
class SceneBagTopics:
    """Topic and frame names written by :func:`write_scene_bag`."""

    image: str = '/camera/color/image_raw'
    camera_info: str = '/camera/color/camera_info'
    depth: str = '/camera/depth/image_raw'
    pose: str = '/camera/pose'
    world_frame: str = 'map'
    odom_frame: str = 'odom'
    base_frame: str = 'base_link'
    body_frame: str = 'camera_link'
    camera_frame: str = 'camera_color_optical_frame'


# camera_link (x forward, y left, z up) -> optical frame (x right, y down, z forward).
T_LINK_OPTICAL = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 1.0]])
T_LINK_OPTICAL[:3, 3] = [0.02, -0.015, 0.0]  # a small lever arm so the static part matters


# base_link (x forward, z up) -> camera_link: 0.25 m forward, 0.3 m up, pitched 10 deg down.
_PITCH = math.radians(10.0)
T_BASE_LINK = np.array([[math.cos(_PITCH), 0.0, math.sin(_PITCH), 0.25],
                        [0.0, 1.0, 0.0, -0.04],
                        [-math.sin(_PITCH), 0.0, math.cos(_PITCH), 0.30],
                        [0.0, 0.0, 0.0, 1.0]])
T_BASE_OPTICAL = T_BASE_LINK @ T_LINK_OPTICAL
"""base_link -> camera optical frame (the robot's camera extrinsic), not the identity."""


def map_to_odom(t_s: float) -> np.ndarray:
    """A slowly drifting map -> odom transform (T_map_odom) written by write_scene_bag, so the
    chain map -> odom -> camera_link -> optical is not trivially the pose."""
    yaw = 0.05 * math.sin(0.7 * t_s) + 0.02
    T = np.eye(4)
    T[:3, :3] = [[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0],
                 [0, 0, 1]]
    T[:3, 3] = [0.1 + 0.05 * t_s, -0.2 + 0.03 * math.sin(t_s), 0.01]
    return T


def write_scene_bag(scene_root: str | Path, bag_path: str | Path,
                    fmt: BagFormat | str = BagFormat.MCAP, split: str = 'train',
                    topics: SceneBagTopics = SceneBagTopics(), rate_hz: float = 10.0,
                    start_time_s: float = 1_700_000_000.0, compressed: str | None = None,
                    write_depth: bool = True, depth_encoding: str = '16UC1',
                    max_frames: int | None = None, write_map_to_odom: bool = True) -> int:
    """Write a 7-Scenes-layout scene (one split) as a bag; returns the number of frames.

    Per frame i at stamp ``start_time_s + i / rate_hz`` (header and log time): Image rgb8 (or
    CompressedImage when ``compressed`` is 'jpeg' / 'png'), CameraInfo (K, no distortion),
    depth (when the scene has depth and ``write_depth``) as ``depth_encoding`` '16UC1'
    (millimetres, 0 invalid) or '32FC1' (metres, NaN invalid), PoseStamped T_wc in
    ``world_frame``, and /tf with map -> odom (:func:`map_to_odom`, the drift) and odom ->
    base_link (odometry) such that map -> odom -> base_link -> camera_link -> optical equals
    T_wc; /tf_static holds base_link -> camera_link (:data:`T_BASE_LINK`) and camera_link ->
    optical (:data:`T_LINK_OPTICAL`) once, first.

    Args:
        fmt: 'mcap' or 'sqlite3' (rosbag2, a folder) or 'ros1' (a .bag file).
        write_map_to_odom: False leaves map -> odom out (a robot's recording, for a localizer
            that publishes it itself: replay it with dsac_replay).
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    fmt = BagFormat(fmt)
    if depth_encoding not in ('16UC1', '32FC1'):
        raise ValueError(f"depth_encoding must be '16UC1' or '32FC1', not {depth_encoding!r}")
    dataset = SceneDataset(scene_root, split, load_depth=write_depth)
    n = len(dataset) if max_frames is None else min(max_frames, len(dataset))
    ros1 = fmt is BagFormat.ROS1
    store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_KILTED)
    if TF_TYPE not in store.types:
        store.register(get_types_from_msg('geometry_msgs/TransformStamped[] transforms',
                                          TF_TYPE))
    types = store.types
    bag_path = Path(bag_path)
    if bag_path.exists():
        raise ValueError(f'{bag_path} exists already')

    def stamp(t_s: float) -> Any:
        ns = int(round(t_s * 1e9))
        return types['builtin_interfaces/msg/Time'](sec=ns // 1_000_000_000,
                                                    nanosec=ns % 1_000_000_000)

    def header(t_s: float, frame_id: str) -> Any:
        extra = {'seq': 0} if ros1 else {}
        return types['std_msgs/msg/Header'](stamp=stamp(t_s), frame_id=frame_id, **extra)

    def transform_stamped(t_s: float, parent: str, child: str, T: np.ndarray) -> Any:
        q = matrix_to_quaternion_np(T[:3, :3])
        return types['geometry_msgs/msg/TransformStamped'](
            header=header(t_s, parent), child_frame_id=child,
            transform=types['geometry_msgs/msg/Transform'](
                translation=types['geometry_msgs/msg/Vector3'](*T[:3, 3].tolist()),
                rotation=types['geometry_msgs/msg/Quaternion'](*q.tolist())))

    serialize = store.serialize_ros1 if ros1 else store.serialize_cdr
    if ros1:
        from rosbags.rosbag1 import Writer as Ros1Writer
        writer = Ros1Writer(bag_path)
    else:
        from rosbags.rosbag2 import StoragePlugin, Writer
        plugin = StoragePlugin.MCAP if fmt is BagFormat.MCAP else StoragePlugin.SQLITE3
        writer = Writer(bag_path, version=9, storage_plugin=plugin)
    image_type = 'sensor_msgs/msg/CompressedImage' if compressed else 'sensor_msgs/msg/Image'
    with writer:
        conns = {
            'image': writer.add_connection(topics.image, image_type, typestore=store),
            'info': writer.add_connection(topics.camera_info, CAMERA_INFO_TYPE, typestore=store),
            'depth': writer.add_connection(topics.depth, 'sensor_msgs/msg/Image',
                                           typestore=store),
            'pose': writer.add_connection(topics.pose, 'geometry_msgs/msg/PoseStamped',
                                          typestore=store),
            'tf': writer.add_connection('/tf', TF_TYPE, typestore=store),
            'tf_static': writer.add_connection('/tf_static', TF_TYPE, typestore=store),
        }

        def write(key: str, t_s: float, msg: Any, msgtype: str) -> None:
            writer.write(conns[key], int(round(t_s * 1e9)), serialize(msg, msgtype))

        t0 = start_time_s
        static = types[TF_TYPE](transforms=[
            transform_stamped(t0, topics.base_frame, topics.body_frame, T_BASE_LINK),
            transform_stamped(t0, topics.body_frame, topics.camera_frame, T_LINK_OPTICAL)])
        write('tf_static', t0, static, TF_TYPE)
        for i in range(n):
            frame = dataset[i]
            t_s = t0 + i / rate_hz
            height, width = frame.image_rgb.shape[:2]
            cam = topics.camera_frame
            if compressed:
                fields = image_codec.numpy_to_compressed_fields(frame.image_rgb, 'rgb8',
                                                                compressed)
                msg = types['sensor_msgs/msg/CompressedImage'](
                    header=header(t_s, cam), format=fields['format'],
                    data=np.frombuffer(fields['data'], np.uint8))
            else:
                msg = _image_msg(types, header(t_s, cam), frame.image_rgb, 'rgb8')
            write('image', t_s, msg, image_type)
            K = frame.K
            k_name, d_name, r_name, p_name = ('K', 'D', 'R', 'P') if ros1 else 'kdrp'
            P = np.hstack([K, np.zeros((3, 1))])
            info = types[CAMERA_INFO_TYPE](**{
                'header': header(t_s, cam), 'height': height, 'width': width,
                'distortion_model': 'plumb_bob', d_name: np.zeros(5),
                k_name: K.ravel().astype(np.float64), r_name: np.eye(3).ravel(),
                p_name: P.ravel(), 'binning_x': 0, 'binning_y': 0,
                'roi': types['sensor_msgs/msg/RegionOfInterest'](0, 0, 0, 0, False)})
            write('info', t_s, info, CAMERA_INFO_TYPE)
            if frame.depth_m is not None:
                if depth_encoding == '32FC1':
                    depth = frame.depth_m.astype(np.float32)
                else:
                    depth = np.nan_to_num(frame.depth_m.astype(np.float64) * 1000.0, nan=0.0)
                    depth = np.round(np.clip(depth, 0, 65534)).astype(np.uint16)
                write('depth', t_s, _image_msg(types, header(t_s, cam), depth, depth_encoding),
                      'sensor_msgs/msg/Image')
            q = matrix_to_quaternion_np(frame.T_wc[:3, :3])
            pose = types['geometry_msgs/msg/PoseStamped'](
                header=header(t_s, topics.world_frame),
                pose=types['geometry_msgs/msg/Pose'](
                    position=types['geometry_msgs/msg/Point'](*frame.T_wc[:3, 3].tolist()),
                    orientation=types['geometry_msgs/msg/Quaternion'](*q.tolist())))
            write('pose', t_s, pose, 'geometry_msgs/msg/PoseStamped')
            T_map_odom = map_to_odom(t_s - t0)
            T_odom_base = (np.linalg.inv(T_map_odom) @ frame.T_wc
                           @ np.linalg.inv(T_BASE_OPTICAL))
            transforms = [transform_stamped(t_s, topics.odom_frame, topics.base_frame,
                                            T_odom_base)]
            if write_map_to_odom:
                transforms.insert(0, transform_stamped(t_s, topics.world_frame,
                                                       topics.odom_frame, T_map_odom))
            tf = types[TF_TYPE](transforms=transforms)
            write('tf', t_s, tf, TF_TYPE)
    LOGGER.info('wrote %d frames of %s to %s (%s)', n, scene_root, bag_path, fmt.value)
    return n


def _image_msg(types: Any, header: Any, pixels: np.ndarray, encoding: str) -> Any:
    fields = image_codec.numpy_to_image_fields(pixels, encoding)
    fields['data'] = np.frombuffer(fields['data'], np.uint8)
    fields['is_bigendian'] = int(fields['is_bigendian'])
    return types['sensor_msgs/msg/Image'](header=header, **fields)


__all__ = ['BagFormat', 'SceneBagTopics', 'T_BASE_LINK', 'T_BASE_OPTICAL', 'T_LINK_OPTICAL',
           'map_to_odom', 'write_scene_bag']
