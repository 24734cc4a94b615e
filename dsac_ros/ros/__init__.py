"""The ROS 2 node a robot runs (the only rclpy code besides the demo harness): node, parameters,
per-frame pipeline, message conversions, /tf broadcaster."""
