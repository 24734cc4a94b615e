"""Launch the DSAC relocalization node with its parameter file.

ros2 launch dsac_ros relocalize.launch.py \
    [params_file:=<yaml>] [model_path:=<.pt>] [image_topic:=...] [camera_info_topic:=...]
    [depth_topic:=/camera/aligned_depth_to_color/image_raw]

model_path, image_topic, camera_info_topic and depth_topic (RGB-D), when given, set the node's
parameters of the same name over params_file (empty: the file's value). The topics are
parameters, not remappings, so they hold whatever the file says and with compressed_input (the
node then reads <image_topic>/compressed).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

# Launch arguments that override the parameter of the same name when not empty.
OVERRIDES = ('model_path', 'image_topic', 'camera_info_topic', 'depth_topic')


def _node(context):
    overrides = {name: LaunchConfiguration(name).perform(context) for name in OVERRIDES}
    return [Node(
        package='dsac_ros',
        executable='relocalize_node',
        name='relocalize_node',
        output='screen',
        parameters=[LaunchConfiguration('params_file'),
                    {name: value for name, value in overrides.items() if value}],
    )]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory('dsac_ros')
    return LaunchDescription([
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'relocalize.yaml'),
            description='YAML with the relocalize_node parameters'),
        DeclareLaunchArgument(
            'model_path', default_value='',
            description='Scene model checkpoint (.pt); empty: model_path from params_file'),
        DeclareLaunchArgument(
            'image_topic', default_value='',
            description='Camera image topic (sensor_msgs/Image); empty: from params_file'),
        DeclareLaunchArgument(
            'camera_info_topic', default_value='',
            description='Camera calibration topic (sensor_msgs/CameraInfo); empty: from '
                        'params_file'),
        DeclareLaunchArgument(
            'depth_topic', default_value='',
            description='Depth registered to colour (RGB-D, e.g. /camera/aligned_depth_to_color/'
                        'image_raw); empty: from params_file (there empty: RGB only)'),
        OpaqueFunction(function=_node),
    ])
