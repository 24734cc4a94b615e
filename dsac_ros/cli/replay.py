"""Play a bag's camera and TF topics on ROS 2 with /clock, for relocalize_node under sim time.

    dsac_replay BAG [--rate 1.0] [--topics T ...] [--no-clock] [--clock-rate 50]
        [--tf-exclude-child FRAME ...] [--wait-topic /camera/image_raw] [--wait-subscribers 1]

Then: ``relocalize_node --ros-args -p use_sim_time:=true -p image_topic:=<the bag's>
-p camera_info_topic:=<the bag's>``. The program is `dsac_ros.demo.replay` (an rclpy program, so
it lives with the demo harness); this is its console entry point.
"""

import sys

from dsac_ros.demo.replay import main

if __name__ == '__main__':
    sys.exit(main())
