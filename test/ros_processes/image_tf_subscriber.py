"""Receives N images and N TFMessages, checks them against the publisher's pattern, prints JSON.

Usage: python image_tf_subscriber.py COUNT TIMEOUT_S
"""

import json
from pathlib import Path
import sys
import time

import numpy as np
import rclpy
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from image_tf_publisher import HEIGHT, WIDTH, pattern  # noqa: E402


def main() -> int:
    count, timeout_s = int(sys.argv[1]), float(sys.argv[2])
    rclpy.init()
    node = rclpy.create_node('image_tf_subscriber')
    images: list[dict] = []
    transforms: list[dict] = []

    def on_image(msg: Image) -> None:
        k = int(msg.header.frame_id.split('_')[1])
        pixels = np.frombuffer(bytes(msg.data), np.uint8)
        intact = (msg.height == HEIGHT and msg.width == WIDTH and msg.encoding == 'rgb8'
                  and msg.step == WIDTH * 3 and pixels.size == HEIGHT * WIDTH * 3
                  and np.array_equal(pixels.reshape(HEIGHT, WIDTH, 3), pattern(k)))
        images.append({'k': k, 'intact': bool(intact)})

    def on_tf(msg: TFMessage) -> None:
        for t in msg.transforms:
            k = int(t.child_frame_id.split('_')[1])
            v = t.transform.translation
            transforms.append({'k': k, 'parent': t.header.frame_id,
                               'intact': [v.x, v.y, v.z] == [k, 2.0 * k, 3.0 * k]
                               and t.transform.rotation.w == 1.0})

    reliable = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
    tf_qos = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE,
                        durability=QoSDurabilityPolicy.VOLATILE)
    node.create_subscription(Image, 'test_image', on_image, reliable)
    node.create_subscription(TFMessage, '/tf', on_tf, tf_qos)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and (len(images) < count or len(transforms) < count):
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        node.destroy_node()
        rclpy.shutdown()
    print(json.dumps({'images': images, 'transforms': transforms}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
