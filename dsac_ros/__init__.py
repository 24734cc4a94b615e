"""dsac_ros: camera relocalization with DSAC. Everything outside ``dsac_ros.ros`` and
``dsac_ros.demo`` needs only torch, numpy and OpenCV (and rosbags for bags); ``dsac_ros.ros`` is
the rclpy edge a robot runs, ``dsac_ros.demo`` the harness that drives it in demos and tests."""

__version__ = '0.1.0'
