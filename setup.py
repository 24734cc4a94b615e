"""ament_python build of dsac_ros: colcon on a ROS 2 install, or `pip install -e .` in .venv."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'dsac_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, f'{PACKAGE}.*']),
    package_data={PACKAGE: ['assets/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.py')),
        (f'share/{PACKAGE}/config', glob('config/*')),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='dsac_ros maintainers',
    maintainer_email='dsac_ros@example.com',
    description='Camera relocalization with DSAC (differentiable RANSAC) for ROS 2',
    license='BSD-3-Clause',
    entry_points={
        'console_scripts': [
            'relocalize_node = dsac_ros.ros.node:main',
            'dsac_train = dsac_ros.cli.train:main',
            'dsac_pretrain = dsac_ros.cli.pretrain:main',
            'dsac_evaluate = dsac_ros.cli.evaluate:main',
            'dsac_extract_bag = dsac_ros.cli.extract_bag:main',
            'dsac_make_scene = dsac_ros.cli.make_scene:main',
            'dsac_demo = dsac_ros.cli.demo:main',
            'dsac_replay = dsac_ros.cli.replay:main',
            'relocalize_lifecycle_node = dsac_ros.ros.lifecycle_node:main',
        ],
    },
)
