"""Parameters of the relocalization node: NodeSettings (each field with its spec), declaration
and validation.

Defaults here equal config/relocalize.yaml. Parameters marked read-only are fixed at start
(topics, model, device, QoS); the others can be changed at run time with ``ros2 param set``
and are validated by the node's on-set callback (an invalid value is refused with a reason).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from enum import Enum
import re
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

from dsac_ros.device import Device
from dsac_ros.dsac.config import EstimatorConfig, Selection
from dsac_ros.dsac.settings import Scoring


class TfMode(str, Enum):
    """What the node broadcasts on /tf."""

    MAP_TO_ODOM = 'map_to_odom'  # REP-105: map -> odom, as AMCL (the robot's TF tree intact)
    MAP_TO_CAMERA = 'map_to_camera'  # map -> <camera>_dsac, a frame of the node's own
    NONE = 'none'


class Reliability(str, Enum):
    """QoS reliability of the camera subscriptions."""

    BEST_EFFORT = 'best_effort'  # qos_profile_sensor_data: drop rather than stall
    RELIABLE = 'reliable'


@dataclass(frozen=True)
class ParameterSpec:
    """Description and limits of one parameter (ranges are inclusive); ``choices`` are the
    values of an Enum."""

    description: str
    read_only: bool = False
    min_value: float | None = None
    max_value: float | None = None
    choices: tuple[str, ...] = ()


def _parameter(default: Any, description: str, *, read_only: bool = False,
               min_value: float | None = None, max_value: float | None = None,
               choices: type[Enum] | None = None) -> Any:
    """A NodeSettings field carrying its ParameterSpec."""
    spec = ParameterSpec(description, read_only, min_value, max_value,
                         tuple(c.value for c in choices) if choices is not None else ())
    return field(default=default, metadata={'spec': spec})


@dataclass(frozen=True)
class NodeSettings:
    """Values of all node parameters, each field with its `ParameterSpec` (meaning, units,
    range, read-only). Constructing one validates every value (`validate`): ValueError names the
    parameter and the reason. Integers given for float parameters are taken as floats."""

    model_path: str = _parameter(
        '', 'Checkpoint (.pt) of the scene; empty: the shipped demo model (dsac_ros/assets).',
        read_only=True)
    device: str = _parameter(
        Device.AUTO.value,
        "'auto' (CUDA when present), 'cuda' (falls back to CPU with a warning) or 'cpu'.",
        read_only=True, choices=Device)
    num_threads: int = _parameter(0, "CPU threads for torch; 0 keeps torch's default.",
                                  read_only=True, min_value=0, max_value=256)
    seed: int = _parameter(0, 'Seed of the hypothesis sampler (repeatable poses).',
                           read_only=True, min_value=0, max_value=2**31 - 1)
    image_topic: str = _parameter(
        '/camera/image_raw',
        'Image topic (sensor_msgs/Image); with compressed_input the CompressedImage is read '
        'from <image_topic>/compressed as image_transport publishes it.', read_only=True)
    camera_info_topic: str = _parameter('/camera/camera_info',
                                        'sensor_msgs/CameraInfo of the camera.', read_only=True)
    compressed_input: bool = _parameter(
        False, 'Subscribe to sensor_msgs/CompressedImage (jpeg/png).', read_only=True)
    depth_topic: str = _parameter(
        '', 'Depth image (sensor_msgs/Image) registered to the colour image, e.g. '
        '/camera/aligned_depth_to_color/image_raw: 16UC1 millimetres or 32FC1 metres, 0 / NaN '
        'invalid. Set: RGB-D relocalization (a frame without usable depth falls back to RGB); '
        'empty: RGB only.', read_only=True)
    depth_stamp_tolerance_s: float = _parameter(
        0.02, 'Image and depth pair when their stamps differ by at most this (seconds); 0: the '
        'same stamp only.', read_only=True, min_value=0.0, max_value=1.0)
    depth_wait_s: float = _parameter(
        0.05, 'How long a frame waits for its depth image when that has not arrived yet '
        '(seconds); then it is localized with RGB.', read_only=True, min_value=0.0,
        max_value=1.0)
    input_reliability: str = _parameter(
        Reliability.BEST_EFFORT.value,
        "QoS reliability of the camera subscriptions: 'best_effort' (sensor data) or "
        "'reliable'.", read_only=True, choices=Reliability)
    pose_topic: str = _parameter(
        '/camera_pose', 'geometry_msgs/PoseStamped output (camera pose in map_frame).',
        read_only=True)
    pose_with_covariance_topic: str = _parameter(
        '/camera_pose_with_covariance',
        'geometry_msgs/PoseWithCovarianceStamped output (covariance in ROS order, map_frame).',
        read_only=True)
    map_frame: str = _parameter(
        'map', 'Frame of the scene model: frame_id of the poses, parent of the TF it sends.')
    camera_frame: str = _parameter(
        '', 'Optical frame of the camera in the TF tree (OpenCV axes), looked up against '
        'base_frame; empty: the image header frame_id.')
    base_frame: str = _parameter(
        'base_link', 'Robot base frame: its pose goes to base_pose_topic and /initialpose; '
        'empty: a camera without a robot (no base pose; tf_mode map_to_odom not allowed).')
    odom_frame: str = _parameter('odom', 'Odometry frame (REP-105), child of map_frame on /tf '
                                         'in tf_mode map_to_odom.')
    tf_mode: str = _parameter(
        TfMode.MAP_TO_ODOM.value,
        "/tf output: 'map_to_odom' (map -> odom from the pose and odom -> base at the image "
        "stamp, as AMCL), 'map_to_camera' (map -> tf_camera_frame, a frame of the node's "
        "own) or 'none'.", choices=TfMode)
    tf_camera_frame: str = _parameter(
        '', "Child frame of tf_mode map_to_camera, never a frame another node publishes; "
        "empty: '<camera frame>_dsac'.")
    transform_tolerance_s: float = _parameter(
        0.5, 'map -> odom is stamped this far in the future (as AMCL), seconds.',
        min_value=0.0, max_value=10.0)
    tf_publish_rate_hz: float = _parameter(
        10.0, 'Republish the last map -> odom at this rate so TF never goes stale between '
        'poses; 0: only on new poses.', min_value=0.0, max_value=200.0)
    tf_timeout_s: float = _parameter(
        0.1, 'Longest wait for odom -> base / base -> camera to reach the image stamp, seconds.',
        min_value=0.0, max_value=5.0)
    tf_cache_time_s: float = _parameter(
        10.0, 'History of the TF buffer, seconds.', read_only=True, min_value=1.0,
        max_value=600.0)
    base_pose_topic: str = _parameter(
        '/dsac_pose', 'geometry_msgs/PoseWithCovarianceStamped output: the base_frame pose in '
        'map_frame (covariance carried from the camera).', read_only=True)
    initialpose_topic: str = _parameter(
        '/initialpose', 'PoseWithCovarianceStamped of the base for AMCL: sent after a '
        '~/relocalize request, and once per relocalization with publish_initialpose.',
        read_only=True)
    publish_initialpose: bool = _parameter(
        False, 'Also send initialpose_topic on the first pose after start-up or after being '
        'lost (lost_timeout_s); never every frame.')
    lost_timeout_s: float = _parameter(
        5.0, 'Without an accepted pose for this long (image stamps) the robot counts as lost: '
        'the jump gate opens and the next pose is a relocalization.', min_value=0.1,
        max_value=86400.0)
    # The estimator's covariance assumes independent cells; neighbouring scene coordinates err
    # together, so it is overconfident: x68 calibrates the demo model's (NEES on its test split,
    # docs/BENCHMARKS.md); x50 with the floors gives 97 % of frames inside chi-square's 95 %.
    covariance_scale: float = _parameter(
        50.0, "Factor on the estimator's covariance (calibrate a model with dsac_evaluate: it "
        "prints the NEES and the scale).", min_value=1e-3, max_value=1e6)
    covariance_floor_m: float = _parameter(
        0.005, 'Standard deviation added to each position axis of the published covariance, '
        'm.', min_value=0.0, max_value=100.0)
    covariance_floor_rad: float = _parameter(
        0.002, 'Standard deviation added to each rotation axis of the published covariance, '
        'rad.', min_value=0.0, max_value=3.2)
    max_jump_m: float = _parameter(
        1.0, 'A pose farther than this from the last accepted one (map -> odom when odometry '
        'is there, else the camera pose) with fewer than jump_min_inliers inliers is gated '
        '(not published, counted); 0: no gate.', min_value=0.0, max_value=1e4)
    max_jump_deg: float = _parameter(
        30.0, 'Rotation limit of the jump gate, degrees.', min_value=0.0, max_value=180.0)
    jump_min_inliers: int = _parameter(
        300, 'Poses with at least this many inliers pass the jump gate.', min_value=0,
        max_value=100000)
    continuous: bool = _parameter(
        True, 'Localize every frame; false: only on ~/relocalize requests (std_srvs/Trigger).')
    relocalize_frames: int = _parameter(
        3, 'Frames localized per ~/relocalize request; the one with most inliers is taken.',
        min_value=1, max_value=100)
    relocalize_timeout_s: float = _parameter(
        5.0, 'A ~/relocalize request fails when its frames have not arrived by then, seconds.',
        min_value=0.1, max_value=600.0)
    sync_tolerance_s: float = _parameter(
        0.01, 'Image and camera_info pair by stamp: exact, else the nearest within this, '
        'seconds.', read_only=True, min_value=0.0, max_value=1.0)
    sync_queue_size: int = _parameter(
        10, 'Messages per stream waiting for their pair.', read_only=True, min_value=1,
        max_value=1000)
    stale_timeout_s: float = _parameter(
        3.0, 'Diagnostics go STALE when no image arrived for this long (wall time), seconds.',
        min_value=0.1, max_value=3600.0)
    scoring: str = _parameter(
        Scoring.AUTO.value,
        "Hypothesis scores: 'auto' (what the checkpoint records: its Score CNN when validated "
        "clearly more accurate than soft inliers), 'score_net' or 'soft_inliers'.",
        read_only=True, choices=Scoring)
    selection: str = _parameter(
        Selection.RANSAC.value,
        "Hypothesis selection: 'ransac' (argmax score), 'softam' (score-weighted average) or "
        "'dsac' (sampled from the score softmax).", choices=Selection)
    num_hypotheses: int = _parameter(
        256, 'Pose hypotheses sampled per frame (RANSAC pool size).', min_value=1,
        max_value=4096)
    inlier_threshold_px: float = _parameter(
        0.0, "Reprojection error below which a cell is an inlier, pixels of the model's input "
        "size; 0: the checkpoint's (what it was trained with; older files: 10 px at 640 px "
        'width, 5 px at 320).', min_value=0.0, max_value=50.0)
    inlier_threshold_cm: float = _parameter(
        0.0, "RGB-D: 3D distance below which a cell is an inlier, cm; 0: the model's own "
        '(its model settings), 10 cm without one.', min_value=0.0, max_value=100.0)
    refinement_steps: int = _parameter(8, 'Inlier re-selection + PnP refinement rounds.',
                                       min_value=0, max_value=100)
    min_inliers: int = _parameter(
        50, 'Publish a pose only with at least this many inlier cells.', min_value=0,
        max_value=100000)
    max_rate_hz: float = _parameter(
        0.0, 'Most frames localized per second; 0: as fast as possible.', min_value=0.0,
        max_value=1000.0)
    diagnostics_period_s: float = _parameter(
        1.0, 'Period of the /diagnostics status, seconds.', read_only=True, min_value=0.05,
        max_value=60.0)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            reason = validate(f.name, value)
            if reason is not None:
                raise ValueError(reason)
            if isinstance(f.default, float):
                object.__setattr__(self, f.name, float(value))
        reason = _check_frames(self)
        if reason is not None:
            raise ValueError(reason)

    def estimator_config(self, base: EstimatorConfig | None = None) -> EstimatorConfig:
        """The estimator settings these parameters make (the other fields, and the inlier
        threshold when the parameter is 0, from ``base``, the checkpoint's settings, or the
        defaults). The node's ranges lie inside the estimator's, so this never raises."""
        base = base if base is not None else EstimatorConfig()
        threshold = self.inlier_threshold_px or base.inlier_threshold_px
        return replace(base, selection=Selection(self.selection),
                       num_hypotheses=self.num_hypotheses, inlier_threshold_px=threshold,
                       inlier_threshold_cm=self.inlier_threshold_cm or base.inlier_threshold_cm,
                       refinement_steps=self.refinement_steps,
                       min_inliers_for_pose=self.min_inliers, seed=self.seed)


PARAMETER_SPECS: dict[str, ParameterSpec] = {
    f.name: f.metadata['spec'] for f in fields(NodeSettings)}
"""Spec of every parameter, by name (the fields' metadata)."""

ESTIMATOR_PARAMETERS = ('selection', 'num_hypotheses', 'inlier_threshold_px',
                        'inlier_threshold_cm', 'refinement_steps', 'min_inliers', 'seed')
"""Parameters that `NodeSettings.estimator_config` reads."""

_DEFAULTS = {f.name: f.default for f in fields(NodeSettings)}

_FRAME_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_./-]*$')
_REQUIRED_FRAMES = ('map_frame', 'odom_frame')


def _check_frames(settings: NodeSettings) -> str | None:
    """Why the frames do not fit together, or None (the checks that span parameters)."""
    s = settings
    if s.tf_mode == TfMode.MAP_TO_ODOM.value:
        if not s.base_frame:
            return ("tf_mode 'map_to_odom' needs a base_frame (the odom -> base lookup); "
                    "set base_frame, or tf_mode 'map_to_camera' / 'none' for a camera alone")
        names = {'map_frame': s.map_frame, 'odom_frame': s.odom_frame,
                 'base_frame': s.base_frame}
        if len(set(names.values())) < 3:
            return f'map_frame, odom_frame and base_frame must differ, got {names}'
    if s.tf_camera_frame and s.tf_camera_frame in (s.camera_frame, s.base_frame, s.odom_frame,
                                                   s.map_frame):
        return (f'tf_camera_frame={s.tf_camera_frame!r} must be a frame of its own (a second '
                'parent for a frame of the TF tree breaks the tree)')
    return None


def validate(name: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for parameter ``name``, or None when it is."""
    spec = PARAMETER_SPECS.get(name)
    if spec is None:
        return None  # not ours (e.g. use_sim_time)
    default = _DEFAULTS[name]
    if isinstance(default, bool):
        if not isinstance(value, bool):
            return f'{name} must be a bool, got {value!r}'
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            return f'{name} must be an integer, got {value!r}'
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f'{name} must be a number, got {value!r}'
        if value != value or value in (float('inf'), float('-inf')):
            return f'{name} must be finite, got {value!r}'
    elif not isinstance(value, str):
        return f'{name} must be a string, got {value!r}'
    if spec.min_value is not None and value < spec.min_value:
        return f'{name}={value!r} is below the minimum {spec.min_value}'
    if spec.max_value is not None and value > spec.max_value:
        return f'{name}={value!r} is above the maximum {spec.max_value}'
    if spec.choices and value not in spec.choices:
        return f'{name}={value!r} is not one of {list(spec.choices)}'
    if name == 'inlier_threshold_px' and 0 < value < 0.5:
        return f"{name}={value!r}: 0 (the checkpoint's) or at least 0.5 px"
    if name.endswith('_frame') and (value or name in _REQUIRED_FRAMES):
        if not _FRAME_RE.match(value):
            empty = ', non-empty' if name in _REQUIRED_FRAMES else ''
            return f'{name}={value!r} is not a valid frame id (no leading /{empty})'
    if name.endswith('_topic') and not value and name != 'depth_topic':
        return f'{name} must not be empty'
    return None


def _descriptor(name: str, spec: ParameterSpec, default: Any) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if spec.choices:
        descriptor.additional_constraints = f'one of {list(spec.choices)}'
    if spec.min_value is not None and spec.max_value is not None:
        if isinstance(default, int) and not isinstance(default, bool):
            descriptor.integer_range = [IntegerRange(
                from_value=int(spec.min_value), to_value=int(spec.max_value), step=1)]
        elif isinstance(default, float):
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(spec.min_value), to_value=float(spec.max_value), step=0.0)]
    if isinstance(default, float):
        # `-p inlier_threshold_px:=12` arrives as an integer: accept it (validate() checks the
        # type is a number and the range).
        descriptor.dynamic_typing = True
    return descriptor


def declare_parameters(node: Node) -> NodeSettings:
    """Declares every parameter on ``node`` (overrides from --params-file / -p applied) and
    returns the values.

    Raises:
        ValueError: a value is invalid (out of range, wrong type, unknown choice); the message
            names the parameter. rclpy's own exceptions for range/type errors are re-raised as
            ValueError with their text.
    """
    defaults = NodeSettings()
    for f in fields(NodeSettings):
        default = getattr(defaults, f.name)
        spec = PARAMETER_SPECS[f.name]
        try:
            node.declare_parameter(f.name, default, _descriptor(f.name, spec, default))
        except Exception as exc:  # InvalidParameterValueException / InvalidParameterTypeException
            if isinstance(exc, ValueError) and not type(exc).__module__.startswith('rclpy'):
                raise
            raise ValueError(f'parameter {f.name}: {exc}') from exc
    return current_settings(node)


def current_settings(node: Node, overrides: dict[str, Any] | None = None) -> NodeSettings:
    """NodeSettings from the node's parameters, with ``overrides`` (pending sets) applied.

    Raises:
        ValueError: a value is invalid (the message names the parameter).
    """
    values = {name: node.get_parameter(name).value for name in PARAMETER_SPECS}
    values.update({k: v for k, v in (overrides or {}).items() if k in PARAMETER_SPECS})
    return NodeSettings(**values)


def add_parameter_callbacks(node: Node,
                            on_change: Callable[[NodeSettings, set[str]], None]) -> None:
    """Validates every set on ``node`` (an invalid value is refused with the reason; rclpy
    itself refuses read-only ones) and hands the new settings and the names set to
    ``on_change``."""

    def on_set(params: list[Parameter]) -> SetParametersResult:
        try:
            current_settings(node, {p.name: p.value for p in params})
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def after_set(params: list[Parameter]) -> None:
        on_change(current_settings(node), {p.name for p in params})
        node.get_logger().info(
            'parameters set: ' + ', '.join(f'{p.name}={p.value!r}' for p in params))

    node.add_on_set_parameters_callback(on_set)
    node.add_post_set_parameters_callback(after_set)


def describe_parameters() -> str:
    """One line per parameter: name, type, default, range or choices, read-only, meaning (the
    node's --help)."""
    lines = []
    for f in fields(NodeSettings):
        spec = PARAMETER_SPECS[f.name]
        limits = ''
        if spec.choices:
            limits = ' one of ' + '|'.join(spec.choices)
        elif spec.min_value is not None:
            limits = f' in [{spec.min_value:g}, {spec.max_value:g}]'
        fixed = ', read-only' if spec.read_only else ''
        lines.append(f'  {f.name} ({type(f.default).__name__}, default {f.default!r}{limits}'
                     f'{fixed})\n      {spec.description}')
    return '\n'.join(lines)
