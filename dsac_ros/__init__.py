"""dsac_ros: camera relocalization with DSAC. Everything outside ``dsac_ros.ros`` needs only
torch, numpy and OpenCV; ``dsac_ros.ros`` is the rclpy edge."""

__version__ = '0.1.0'
