"""Launch and configuration: config/relocalize.yaml, the command line launch_ros builds, and
launch/relocalize.launch.py itself (run only where launch_ros is installed)."""

from __future__ import annotations

import ast
from dataclasses import asdict
from pathlib import Path
import threading

import pytest
from rclpy.parameter_client import AsyncParameterClient
from test_ros_node import RosClient, model_path, own_domain  # noqa: F401
import yaml

from dsac_ros.demo.processes import RosProcesses, node_command, wait_for
from dsac_ros.ros.parameters import PARAMETER_SPECS, NodeSettings

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / 'config' / 'relocalize.yaml'
LAUNCH_FILE = REPO / 'launch' / 'relocalize.launch.py'


def test_yaml_holds_every_parameter_with_its_default():
    params = yaml.safe_load(PARAMS_FILE.read_text())['relocalize_node']['ros__parameters']
    defaults = asdict(NodeSettings())
    assert set(params) == set(defaults) == set(PARAMETER_SPECS)
    for name, value in params.items():
        assert value == defaults[name] and type(value) is type(defaults[name]), name


def test_node_with_params_file_overrides_and_remaps(ros_env, model_path, tmp_path):  # noqa: F811
    """The command line launch_ros builds: --params-file, -p overrides, -r remappings."""
    command = node_command(PARAMS_FILE, {'model_path': str(model_path), 'num_hypotheses': 77,
                                         'num_threads': 1, 'diagnostics_period_s': 0.2})
    command += ['-r', '/camera/image_raw:=/cam/image', '-r', '/camera/camera_info:=/cam/info']
    env = own_domain(ros_env)
    with RosProcesses(env, tmp_path) as procs:
        node = procs.start('node', command)
        client = RosClient(env)
        try:
            assert wait_for(lambda: bool(client.last_diag()), 60.0, children=[node]), node.log()
            assert wait_for(lambda: client.node.count_publishers('/cam/image') == 0
                            and client.node.count_subscribers('/cam/image') == 1
                            and client.node.count_subscribers('/cam/info') == 1, 10.0)
            assert client.node.count_subscribers('/camera/image_raw') == 0
            params = AsyncParameterClient(client.node, 'relocalize_node')
            assert params.wait_for_services(10.0)
            future = params.get_parameters(['num_hypotheses', 'map_frame', 'model_path'])
            assert wait_for(future.done, 10.0)
            values = future.result().values
            assert values[0].integer_value == 77  # -p beats the file
            assert values[1].string_value == 'map'  # from the file
            assert values[2].string_value == str(model_path)
        finally:
            client.close()
        assert procs.stop(node) == 0, node.log()


def test_launch_file_declares_the_standard_arguments():
    tree = ast.parse(LAUNCH_FILE.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]

    def name(call):
        return getattr(call.func, 'id', getattr(call.func, 'attr', ''))

    declared = {c.args[0].value for c in calls if name(c) == 'DeclareLaunchArgument'}
    assert declared == {'params_file', 'model_path', 'image_topic', 'camera_info_topic',
                        'depth_topic', 'tf_mode', 'base_frame', 'odom_frame', 'use_sim_time',
                        'lifecycle'}
    nodes = [c for c in calls if name(c) == 'Node']
    keywords = {k.arg: k.value for k in nodes[0].keywords}
    assert keywords['package'].value == 'dsac_ros'
    executable = keywords['executable']  # relocalize_lifecycle_node with lifecycle:=true
    assert {executable.body.value, executable.orelse.value} == {'relocalize_node',
                                                                 'relocalize_lifecycle_node'}
    assert keywords['name'].value == 'relocalize_node'
    # Topic arguments set the node's parameters (a remap of one fixed name would silently do
    # nothing once the YAML or compressed_input changes the topic).
    assert 'parameters' in keywords and 'remappings' not in keywords
    overrides = next(n for n in ast.walk(tree) if isinstance(n, ast.Assign)
                     and getattr(n.targets[0], 'id', '') == 'OVERRIDES')
    assert {e.value for e in overrides.value.elts} == {
        'model_path', 'image_topic', 'camera_info_topic', 'depth_topic', 'tf_mode', 'base_frame',
        'odom_frame'}
    from dsac_ros.ros.parameters import PARAMETER_SPECS
    assert {e.value for e in overrides.value.elts} <= set(PARAMETER_SPECS)
    assert "get_package_share_directory('dsac_ros')" in LAUNCH_FILE.read_text()


def test_launch_file_starts_the_node(ros_env, model_path, monkeypatch):  # noqa: F811
    """Runs the launch file with launch_ros (skipped where launch_ros is not installed)."""
    pytest.importorskip('launch_ros')
    from launch import LaunchDescription, LaunchService
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    env = own_domain(ros_env)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    service = LaunchService()
    service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
        launch_arguments={'model_path': str(model_path), 'params_file': str(PARAMS_FILE),
                          'image_topic': '/launch/image'}.items())]))
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    client = RosClient(env)
    try:
        assert wait_for(lambda: client.node.count_subscribers('/launch/image') == 1, 60.0)
    finally:
        client.close()
        service.shutdown()
        runner.join(30.0)
    assert not runner.is_alive()
