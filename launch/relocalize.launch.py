"""Launch the DSAC relocalization node with its parameter file.

ros2 launch dsac_ros relocalize.launch.py \
    [params_file:=<yaml>] [model_path:=<.pt>] [image_topic:=...] [camera_info_topic:=...] \
    [depth_topic:=/camera/aligned_depth_to_color/image_raw] \
    [tf_mode:=map_to_odom|map_to_camera|none] [base_frame:=base_link] [odom_frame:=odom] \
    [use_sim_time:=false] [lifecycle:=false]

model_path, image_topic, camera_info_topic, depth_topic (RGB-D), tf_mode, base_frame and
odom_frame, when given, set the node's parameters of the same name over params_file (empty: the
file's value). The topics are parameters, not remappings, so they hold whatever the file says
and with compressed_input (the node then reads <image_topic>/compressed). use_sim_time:=true
for a simulator or ``dsac_replay`` (/clock). lifecycle:=true starts relocalize_lifecycle_node
(managed: configure and activate it, e.g. with nav2's lifecycle_manager) instead of
relocalize_node.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

# Launch arguments that override the parameter of the same name when not empty.
OVERRIDES = ('model_path', 'image_topic', 'camera_info_topic', 'depth_topic', 'tf_mode',
             'base_frame', 'odom_frame')


def _true(text: str) -> bool:
    return text.strip().lower() in ('true', '1', 'yes')


def _node(context):
    overrides = {name: LaunchConfiguration(name).perform(context) for name in OVERRIDES}
    parameters = {name: value for name, value in overrides.items() if value}
    parameters['use_sim_time'] = _true(LaunchConfiguration('use_sim_time').perform(context))
    lifecycle = _true(LaunchConfiguration('lifecycle').perform(context))
    return [Node(
        package='dsac_ros',
        executable='relocalize_lifecycle_node' if lifecycle else 'relocalize_node',
        name='relocalize_node',
        output='screen',
        parameters=[LaunchConfiguration('params_file'), parameters],
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
        DeclareLaunchArgument(
            'tf_mode', default_value='',
            description='map_to_odom (REP-105, for nav2 / AMCL), map_to_camera or none; '
                        'empty: from params_file'),
        DeclareLaunchArgument(
            'base_frame', default_value='',
            description='Robot base frame; empty: from params_file'),
        DeclareLaunchArgument(
            'odom_frame', default_value='',
            description='Odometry frame; empty: from params_file'),
        DeclareLaunchArgument(
            'use_sim_time', default_value='false',
            description='Use /clock (simulator, dsac_replay of a bag)'),
        DeclareLaunchArgument(
            'lifecycle', default_value='false',
            description='Start the managed (lifecycle) node instead'),
        OpaqueFunction(function=_node),
    ])
