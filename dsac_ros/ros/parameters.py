"""Parameters of the relocalization node: NodeSettings (each field with its spec), declaration
and validation.

Defaults here equal config/relocalize.yaml. Parameters marked read-only are fixed at start
(topics, model, device, QoS); the others can be changed at run time with ``ros2 param set``
and are validated by the node's on-set callback (an invalid value is refused with a reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from enum import Enum
import re
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node

from dsac_ros.device import Device
from dsac_ros.dsac.config import EstimatorConfig, Selection
from dsac_ros.dsac.settings import Scoring


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
        'map', 'Frame of the scene model: frame_id of the pose and TF parent.')
    camera_frame: str = _parameter(
        '', 'TF child frame (optical frame, OpenCV axes); empty: the image header frame_id.')
    publish_tf: bool = _parameter(True, 'Broadcast map_frame -> camera_frame on /tf.')
    scoring: str = _parameter(
        Scoring.AUTO.value,
        "Hypothesis scores: 'auto' (what the checkpoint records: its Score CNN when validated "
        "at least as accurate as soft inliers), 'score_net' or 'soft_inliers'.",
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
    if name == 'map_frame' and not _FRAME_RE.match(value):
        return f'map_frame={value!r} is not a valid frame id (non-empty, no leading /)'
    if name == 'camera_frame' and value and not _FRAME_RE.match(value):
        return f'camera_frame={value!r} is not a valid frame id (no leading /)'
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
