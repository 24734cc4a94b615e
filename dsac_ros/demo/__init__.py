"""The demo and test harness: a camera player, a pose recorder, process and DDS set-up, and the
accuracy of a recorded run, around the node a robot runs (`dsac_ros.ros`).

It starts ROS processes and its player and recorder are rclpy programs
(``python -m dsac_ros.demo.player`` / ``.pose_recorder``), so it may import rclpy; `dds_env`,
`processes` and `trajectory` need no ROS. Nothing in the shipped node imports this package.
"""
