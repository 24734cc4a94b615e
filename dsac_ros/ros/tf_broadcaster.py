"""Publishes transforms on /tf the way tf2_ros.TransformBroadcaster does, without tf2_ros.

tf2_ros is not installable from pip; its broadcaster is a thin publisher of tf2_msgs/TFMessage on
``/tf`` with QoS reliable, volatile, depth 100. Listeners of a real ROS 2 install (tf2_ros
Buffer/TransformListener, RViz) accept these messages unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

from geometry_msgs.msg import TransformStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from tf2_msgs.msg import TFMessage

TF_TOPIC = '/tf'

TF_QOS = QoSProfile(
    depth=100,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
"""QoS of tf2_ros's dynamic broadcaster and listener (/tf)."""

TF_STATIC_QOS = QoSProfile(
    depth=100,
    history=HistoryPolicy.KEEP_LAST,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
"""QoS of tf2_ros's static listener (/tf_static: reliable, transient local, so transforms sent
before a listener started reach it)."""


class TransformBroadcaster:
    """Sends dynamic transforms on /tf for a node (the node owns the publisher's lifetime).

    Args:
        node: the node to create the publisher on.
        qos: QoS of the /tf publisher; tf2_ros's default when None.
        topic: normally '/tf'.
    """

    def __init__(self, node: Node, qos: QoSProfile | None = None, topic: str = TF_TOPIC) -> None:
        self.publisher = node.create_publisher(TFMessage, topic, qos or TF_QOS)

    def send_transform(self, transform: TransformStamped | Iterable[TransformStamped]) -> None:
        """Publishes one transform or several in one TFMessage."""
        transforms = [transform] if isinstance(transform, TransformStamped) else list(transform)
        self.publisher.publish(TFMessage(transforms=transforms))
