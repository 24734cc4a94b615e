"""Launch the DSAC relocalization node with its parameter file.

ros2 launch dsac_ros relocalize.launch.py \
    [params_file:=<yaml>] [model_path:=<.pt>] [image_topic:=...] [camera_info_topic:=...]

The node subscribes to the ``image`` and ``camera_info`` names given in the YAML; the
image_topic / camera_info_topic arguments remap them to the camera's topics.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory('dsac_ros')
    params_file = LaunchConfiguration('params_file')
    model_path = LaunchConfiguration('model_path')
    remappings = [
        ('/camera/image_raw', LaunchConfiguration('image_topic')),
        ('/camera/camera_info', LaunchConfiguration('camera_info_topic')),
    ]
    has_model = PythonExpression(["'", model_path, "' != ''"])

    def node(condition, overrides):
        return Node(
            package='dsac_ros',
            executable='relocalize_node',
            name='relocalize_node',
            output='screen',
            parameters=[params_file, overrides],
            remappings=remappings,
            condition=condition,
        )

    return LaunchDescription([
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'relocalize.yaml'),
            description='YAML with the relocalize_node parameters'),
        DeclareLaunchArgument(
            'model_path', default_value='',
            description='Scene model checkpoint (.pt); empty: model_path from params_file'),
        DeclareLaunchArgument(
            'image_topic', default_value='/camera/image_raw',
            description='Camera image topic (sensor_msgs/Image)'),
        DeclareLaunchArgument(
            'camera_info_topic', default_value='/camera/camera_info',
            description='Camera calibration topic (sensor_msgs/CameraInfo)'),
        # A model_path given on the command line overrides the file; an empty one keeps it.
        node(IfCondition(has_model), {'model_path': model_path}),
        node(UnlessCondition(has_model), {}),
    ])
