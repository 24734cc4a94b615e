"""Publishes 640x480 rgb8 images and TFMessages with a known content until a subscriber leaves.

Usage: python image_tf_publisher.py TIMEOUT_S
Frame k's pixels are `pattern(k)`; its transform's translation is (k, 2k, 3k).
"""

import sys
import time

from geometry_msgs.msg import TransformStamped
import numpy as np
import rclpy
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage

HEIGHT, WIDTH = 480, 640


def pattern(k: int) -> np.ndarray:
    """Deterministic rgb8 content of frame k, (480, 640, 3) uint8."""
    rows = np.arange(HEIGHT, dtype=np.uint32)[:, None, None]
    cols = np.arange(WIDTH, dtype=np.uint32)[None, :, None]
    chan = np.arange(3, dtype=np.uint32)[None, None, :]
    return ((rows * 7 + cols * 13 + chan * 101 + k * 31) % 256).astype(np.uint8)


def main() -> int:
    timeout_s = float(sys.argv[1])
    rclpy.init()
    node = rclpy.create_node('image_tf_publisher')
    reliable = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
    tf_qos = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE,
                        durability=QoSDurabilityPolicy.VOLATILE)
    image_pub = node.create_publisher(Image, 'test_image', reliable)
    tf_pub = node.create_publisher(TFMessage, '/tf', tf_qos)
    deadline = time.monotonic() + timeout_s
    seen_subscriber = False
    k = 0
    try:
        while time.monotonic() < deadline:
            subscribers = image_pub.get_subscription_count() + tf_pub.get_subscription_count()
            if subscribers:
                seen_subscriber = True
            elif seen_subscriber:
                break
            stamp = node.get_clock().now().to_msg()
            image = Image(height=HEIGHT, width=WIDTH, encoding='rgb8', is_bigendian=0,
                          step=WIDTH * 3)
            image.header.stamp = stamp
            image.header.frame_id = f'camera_{k}'
            image.data = pattern(k).tobytes()
            transform = TransformStamped()
            transform.header.stamp = stamp
            transform.header.frame_id = 'map'
            transform.child_frame_id = f'camera_{k}'
            transform.transform.translation.x = float(k)
            transform.transform.translation.y = float(2 * k)
            transform.transform.translation.z = float(3 * k)
            transform.transform.rotation.w = 1.0
            image_pub.publish(image)
            tf_pub.publish(TFMessage(transforms=[transform]))
            k += 1
            time.sleep(0.05)
    finally:
        node.destroy_node()
        rclpy.shutdown()
    return 0 if seen_subscriber else 1


if __name__ == '__main__':
    sys.exit(main())
