"""The package installs the way colcon installs an ament_python package, and the pip
environment exposes the same layout to ament_index."""

from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

REPO = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPTS = ('relocalize_node', 'relocalize_lifecycle_node', 'dsac_train',
                   'dsac_evaluate', 'dsac_extract_bag', 'dsac_make_scene', 'dsac_demo',
                   'dsac_replay', 'dsac_pretrain')


def test_package_xml_declares_ament_python_and_ros_dependencies():
    root = ET.parse(REPO / 'package.xml').getroot()
    assert root.tag == 'package' and root.get('format') == '3'
    assert root.findtext('name') == 'dsac_ros'
    assert root.find('export/build_type').text == 'ament_python'
    exec_depends = {e.text for e in root.findall('exec_depend')}
    assert {'rclpy', 'sensor_msgs', 'geometry_msgs', 'std_msgs', 'tf2_msgs', 'std_srvs',
            'lifecycle_msgs'} <= exec_depends
    assert {'python3-torch', 'python3-numpy', 'python3-opencv', 'python3-scipy'} <= exec_depends
    assert 'python3-pytest' in {e.text for e in root.findall('test_depend')}


def test_colcon_style_install_layout(tmp_path):
    """`setup.py install` is what colcon runs for ament_python packages."""
    prefix = tmp_path / 'install'
    subprocess.run(
        [sys.executable, 'setup.py', '-q', 'egg_info', '--egg-base', str(tmp_path),
         'build', '--build-base', str(tmp_path / 'build'),
         'install', '--prefix', str(prefix), '--record', str(tmp_path / 'record.txt'),
         '--single-version-externally-managed'],
        cwd=REPO, check=True, capture_output=True)
    assert (prefix / 'share/ament_index/resource_index/packages/dsac_ros').is_file()
    share = prefix / 'share/dsac_ros'
    assert (share / 'package.xml').read_text() == (REPO / 'package.xml').read_text()
    assert (share / 'launch/relocalize.launch.py').is_file()
    assert (share / 'config/relocalize.yaml').is_file()
    assert (share / 'config/fastdds_localhost.xml').is_file()
    for script in CONSOLE_SCRIPTS:
        # ros2 run looks in lib/<package>/ (setup.cfg's install_scripts).
        assert (prefix / 'lib/dsac_ros' / script).is_file(), script


def test_pip_environment_is_an_ament_prefix(monkeypatch):
    ament_packages = pytest.importorskip('ament_index_python.packages')
    monkeypatch.setenv('AMENT_PREFIX_PATH', sys.prefix)
    share = Path(ament_packages.get_package_share_directory('dsac_ros'))
    assert (share / 'package.xml').is_file()
    assert (share / 'config/relocalize.yaml').is_file()
    assert (share / 'launch/relocalize.launch.py').is_file()
    for script in CONSOLE_SCRIPTS:
        assert (Path(sys.prefix) / 'bin' / script).is_file(), script


@pytest.mark.parametrize('script', CONSOLE_SCRIPTS)
def test_console_script_targets_import(script):
    (entry,) = [e for e in entry_points(group='console_scripts') if e.name == script]
    module_name, function_name = entry.value.split(':')
    assert callable(getattr(import_module(module_name), function_name))


# Each package imports only from the packages listed for it (no import runs back up the layers).
LAYERS = {
    'device': set(),
    'geometry': set(),
    'models': set(),
    'dsac': {'device', 'geometry'},
    'data': {'geometry'},
    'relocalizer': {'device', 'geometry', 'dsac', 'models'},
    'evaluation': {'geometry', 'dsac', 'data', 'relocalizer'},
    'training': {'device', 'geometry', 'dsac', 'models', 'data'},
    'ros': {'device', 'geometry', 'dsac', 'data', 'relocalizer'},
    'demo': {'geometry', 'models', 'data', 'evaluation', 'ros'},
    'cli': {'device', 'dsac', 'models', 'data', 'relocalizer', 'evaluation', 'training', 'demo'},
}
ROS_MODULES = {'rclpy', 'rcl_interfaces', 'sensor_msgs', 'geometry_msgs', 'std_msgs',
               'diagnostic_msgs', 'tf2_msgs', 'builtin_interfaces', 'launch', 'launch_ros',
               'std_srvs', 'lifecycle_msgs', 'rosgraph_msgs', 'tf2_ros'}


def _imports(path: Path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_layers_and_ros_edge():
    package = REPO / 'dsac_ros'
    for path in package.rglob('*.py'):
        rel = path.relative_to(package)
        layer = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if layer == '__init__':
            continue
        imports = _imports(path)
        ours = {n.split('.')[1] for n in imports if n.startswith('dsac_ros.')} - {layer}
        assert ours <= LAYERS[layer], f'{rel} imports {sorted(ours - LAYERS[layer])}'
        ros = {n.split('.')[0] for n in imports} & ROS_MODULES
        assert not ros or layer in ('ros', 'demo'), f'{rel} imports ROS: {sorted(ros)}'
