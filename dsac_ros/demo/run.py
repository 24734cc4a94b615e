"""End-to-end demo: synthetic camera -> relocalize_node -> recorded poses -> accuracy report.

`run_demo` (the logic of ``dsac_demo``, `dsac_ros.cli.demo`):

1. Renders the test sequence of the synthetic scene the model was trained on (the scene
   config stored in the checkpoint metadata, else the default SyntheticSceneConfig) in the
   7-Scenes layout.
2. Starts three processes on loopback-only DDS (`dsac_ros.demo.dds_env.loopback_dds_env`):
   relocalize_node (config/relocalize.yaml + overrides), the pose recorder, and the player
   (Image rgb8 + CameraInfo at ``--rate`` Hz).
3. Matches the received poses to ground truth by image stamp and prints accuracy (share of
   poses within 5 cm / 5 deg, median errors), latency (image stamp -> pose received, and the
   node's own receive -> publish latency from /diagnostics), and writes
   ``trajectory_top_view.png``, ``summary.json``, ``gt.json``, ``poses.json`` and the
   processes' logs to the output folder.
With ``depth`` (an RGB-D camera): the player also publishes the depth images (registered to
colour, with sensor-like noise) and a second node, ``relocalize_node_rgbd``, localizes the same
published frames with them (RGB-D mode, its own pose topic, no TF); the report puts RGB and RGB-D
side by side, over each node's poses and over the frames both localized
(``poses_rgbd.json``, ``trajectory_top_view_rgbd.png``).
All children are stopped (SIGINT first) on success, error or Ctrl-C.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
import json
import logging
import os
from pathlib import Path
import shutil
import tempfile
import time

from dsac_ros.demo.dds_env import loopback_dds_env
from dsac_ros.demo.processes import RosProcesses, module_command, node_command, wait_exit, wait_for
from dsac_ros.demo.trajectory import (
    AccuracySummary,
    load_json,
    on_common_frames,
    plot_top_view,
    summarize_recording,
)

_LOG = logging.getLogger('dsac_ros.demo')

RGBD_NODE_NAME = 'relocalize_node_rgbd'
DEPTH_TOPIC = '/camera/aligned_depth_to_color/image_raw'
RGBD_POSE_TOPIC = '/camera_pose_rgbd'


@dataclass(frozen=True)
class DemoConfig:
    """Demo settings.

    Attributes:
        out_dir: where the report, plot and logs go.
        model_path: checkpoint; None: the shipped demo model (dsac_ros/assets/demo_model.pt).
        frames: frames of the test sequence to play (0: all).
        rate_hz: camera rate of the player.
        device: 'auto' | 'cpu' | 'cuda' for the node.
        num_threads: torch CPU threads of the node (0: torch's default).
        startup_timeout_s: how long to wait for the node to subscribe (model loading).
        keep_scene: keep the rendered sequence in ``out_dir/scene``.
        inlier_threshold_px: the node's inlier threshold; 0: the checkpoint's.
        scoring: 'auto' (the checkpoint's choice), 'score_net' or 'soft_inliers'.
        depth: also run an RGB-D node on the same frames (the player publishes depth).
        depth_noise: relative Gaussian noise per depth pixel (0.01: 1 % of the range, a real
            sensor's) added to the rendered (exact) depth.
    """

    out_dir: Path = Path('demo_out')
    model_path: Path | None = None
    frames: int = 0
    rate_hz: float = 15.0
    device: str = 'auto'
    num_threads: int = 0
    startup_timeout_s: float = 60.0
    keep_scene: bool = False
    inlier_threshold_px: float = 0.0
    scoring: str = 'auto'
    depth: bool = False
    depth_noise: float = 0.01


def package_config_file() -> Path:
    """config/relocalize.yaml of the source tree, else of the installed share folder."""
    source = Path(__file__).resolve().parents[2] / 'config' / 'relocalize.yaml'
    if source.is_file():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory('dsac_ros')) / 'config' / 'relocalize.yaml'
    except (ImportError, LookupError, KeyError, ValueError):
        return source


def scene_config_for_model(model_path: Path):
    """The SyntheticSceneConfig the model was trained on.

    From the checkpoint metadata, first found: 'scene_config' (JSON of the config),
    'scene_seed', or 'scene' naming a scene folder that holds scene_config.json (as
    generate_scene writes it); the default SyntheticSceneConfig otherwise.
    """
    from dsac_ros.data.synthetic import SyntheticSceneConfig
    from dsac_ros.models.checkpoint import read_checkpoint_dict

    metadata = dict(read_checkpoint_dict(model_path).get('metadata') or {})
    known = {f.name for f in fields(SyntheticSceneConfig)}
    raw = metadata.get('scene_config')
    scene_file = Path(str(metadata.get('scene', ''))) / 'scene_config.json'
    if not raw and 'scene_seed' not in metadata and metadata.get('scene') and \
            scene_file.is_file():
        raw = scene_file.read_text()
    if raw:
        values = json.loads(raw) if isinstance(raw, str) else dict(raw)
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
                  if k in known}
        return SyntheticSceneConfig(**values)
    if 'scene_seed' in metadata:
        return SyntheticSceneConfig(seed=int(metadata['scene_seed']))
    return SyntheticSceneConfig()


@dataclass(frozen=True)
class RgbdComparison:
    """The RGB-D node beside the RGB node: over its own poses, and both over the frames both
    localized (same published images)."""

    accuracy: AccuracySummary
    rgb_on_common: AccuracySummary
    rgbd_on_common: AccuracySummary
    node_diagnostics: dict[str, str]
    plot_path: Path
    depth_noise: float


@dataclass(frozen=True)
class DemoResult:
    accuracy: AccuracySummary
    node_diagnostics: dict[str, str]
    plot_path: Path
    wall_s: float
    rgbd: RgbdComparison | None = None


def run_demo(config: DemoConfig) -> DemoResult:
    """Runs the whole demo (see module doc); raises RuntimeError when a process fails."""
    from dsac_ros.data.synthetic import generate_test_sequence
    from dsac_ros.ros.node import NODE_NAME, default_model_path

    start = time.monotonic()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(config.model_path) if config.model_path else default_model_path()
    if not model.is_file():
        raise FileNotFoundError(f'model {model} does not exist (train one or pass --model)')
    scene_config = scene_config_for_model(model)
    scene_dir = out / 'scene' if config.keep_scene else Path(tempfile.mkdtemp(prefix='dsac_'))
    if config.keep_scene and scene_dir.exists():
        shutil.rmtree(scene_dir)
    try:
        _LOG.info('rendering the test sequence (seed %d)', scene_config.seed)
        generate_test_sequence(scene_dir, scene_config, config.frames)
        gt_path, poses_path = out / 'gt.json', out / 'poses.json'
        rgbd_path = out / 'poses_rgbd.json'
        for stale in (gt_path, poses_path, rgbd_path):
            stale.unlink(missing_ok=True)
        env = loopback_dds_env(base=os.environ)
        if config.num_threads:
            env['OMP_NUM_THREADS'] = str(config.num_threads)
        with RosProcesses(env, out / 'logs') as procs:
            ready = out / 'logs' / 'recorder.ready'
            ready.unlink(missing_ok=True)
            recorder = procs.start('recorder', module_command(
                'dsac_ros.demo.pose_recorder', str(poses_path), '--ready-file', str(ready),
                '--node', NODE_NAME))
            # The demo camera is not on a robot: no base frame, map -> <camera>_dsac on /tf.
            common = {'model_path': str(model.resolve()), 'device': config.device,
                      'num_threads': config.num_threads, 'input_reliability': 'reliable',
                      'inlier_threshold_px': float(config.inlier_threshold_px),
                      'scoring': config.scoring, 'base_frame': '', 'tf_mode': 'map_to_camera'}
            node = procs.start('node', node_command(package_config_file(), common))
            waiting, player_args = [(recorder, ready)], []
            if config.depth:
                # The same node program under another name: the package YAML is keyed by the
                # default name, and its values are the parameter defaults.
                ready_rgbd = out / 'logs' / 'recorder_rgbd.ready'
                ready_rgbd.unlink(missing_ok=True)
                waiting.append((procs.start('recorder_rgbd', module_command(
                    'dsac_ros.demo.pose_recorder', str(rgbd_path), '--topic', RGBD_POSE_TOPIC,
                    '--ready-file', str(ready_rgbd), '--node', RGBD_NODE_NAME)), ready_rgbd))
                rgbd_node = procs.start('node_rgbd', node_command(None, {
                    **common, 'depth_topic': DEPTH_TOPIC, 'pose_topic': RGBD_POSE_TOPIC,
                    'pose_with_covariance_topic': f'{RGBD_POSE_TOPIC}_with_covariance',
                    'tf_mode': 'none'}, node_name=RGBD_NODE_NAME))
                player_args = ['--depth-topic', DEPTH_TOPIC, '--depth-noise',
                               str(config.depth_noise), '--wait-subscribers', '2']
            for rec, ready_file in waiting:
                if not wait_for(ready_file.exists, 30.0, children=[rec]):
                    raise RuntimeError(f'pose recorder did not start:\n{rec.log()}')
            _LOG.info('playing %s at %.1f Hz%s', scene_dir, config.rate_hz,
                      ' with depth' if config.depth else '')
            player = procs.start('player', module_command(
                'dsac_ros.demo.player', str(scene_dir), '--rate', str(config.rate_hz),
                '--gt-out', str(gt_path), '--wait-timeout', str(config.startup_timeout_s),
                *player_args))
            frames = len(list((scene_dir / 'seq-01').glob('*.color.png')))
            code = wait_exit(player, config.startup_timeout_s + 2.0 * frames / config.rate_hz)
            if node.returncode is not None:
                raise RuntimeError(f'relocalize_node exited with {node.returncode}:\n'
                                   f'{node.log()[-3000:]}')
            if code != 0:
                raise RuntimeError(f'player failed ({code}):\n{player.log()[-3000:]}')
            # Let the node finish its last frame and send one more /diagnostics.
            time.sleep(2.5)
            for rec, _ in waiting:
                procs.stop(rec)
            for child in ([node, rgbd_node] if config.depth else [node]):
                node_code = procs.stop(child)
                if node_code != 0:
                    raise RuntimeError(f'{child.name} exited with {node_code}:\n'
                                       f'{child.log()[-3000:]}')
        gt, recorded = load_json(gt_path), load_json(poses_path)
        accuracy = summarize_recording(gt, recorded)
        title = (f'{accuracy.within_5cm_5deg_pct:.1f}% within 5 cm/5 deg, median '
                 f'{100 * accuracy.median_translation_m:.1f} cm / '
                 f'{accuracy.median_rotation_deg:.2f} deg')
        plot = plot_top_view(gt, recorded, out / 'trajectory_top_view.png', title)
        rgbd = _compare_rgbd(gt, recorded, load_json(rgbd_path), out, config.depth_noise) \
            if config.depth else None
        result = DemoResult(accuracy, dict(recorded.get('diagnostics') or {}), plot,
                            time.monotonic() - start, rgbd)
        summary = {
            'accuracy': asdict(accuracy), 'node_diagnostics': result.node_diagnostics,
            'model': str(model), 'scene_seed': scene_config.seed, 'rate_hz': config.rate_hz,
            'wall_s': result.wall_s}
        if rgbd is not None:
            summary['rgbd'] = {
                'accuracy': asdict(rgbd.accuracy), 'node_diagnostics': rgbd.node_diagnostics,
                'depth_noise': rgbd.depth_noise, 'same_frames': {
                    'rgb': asdict(rgbd.rgb_on_common), 'rgbd': asdict(rgbd.rgbd_on_common)}}
        (out / 'summary.json').write_text(json.dumps(summary, indent=2))
        return result
    finally:
        if not config.keep_scene:
            shutil.rmtree(scene_dir, ignore_errors=True)


def _compare_rgbd(gt: dict, recorded: dict, recorded_rgbd: dict, out: Path,
                  depth_noise: float) -> RgbdComparison:
    accuracy = summarize_recording(gt, recorded_rgbd)
    rgb_common, rgbd_common = on_common_frames(recorded, recorded_rgbd)
    title = (f'RGB-D: {accuracy.within_5cm_5deg_pct:.1f}% within 5 cm/5 deg, median '
             f'{100 * accuracy.median_translation_m:.1f} cm / '
             f'{accuracy.median_rotation_deg:.2f} deg')
    plot = plot_top_view(gt, recorded_rgbd, out / 'trajectory_top_view_rgbd.png', title)
    return RgbdComparison(accuracy, summarize_recording(gt, rgb_common),
                          summarize_recording(gt, rgbd_common),
                          dict(recorded_rgbd.get('diagnostics') or {}), plot, depth_noise)


def format_report(result: DemoResult) -> str:
    a, d = result.accuracy, result.node_diagnostics

    def diag(key: str) -> str:
        return d.get(key, 'n/a')

    lines = [
        'dsac_ros demo: synthetic test sequence -> relocalize_node (loopback DDS)',
        f'  frames published by the player : {a.frames_published}',
        f'  poses received (matched)       : {a.poses_received} ({a.poses_matched})',
        f'  node: processed / dropped / without pose : {diag("frames_processed")} / '
        f'{diag("frames_dropped")} / {diag("frames_without_pose")}',
        f'  within 5 cm / 5 deg            : {a.within_5cm_5deg_pct:.1f}% of poses, '
        f'{a.within_5cm_5deg_of_published_pct:.1f}% of published frames',
        f'  median error                   : {100 * a.median_translation_m:.2f} cm, '
        f'{a.median_rotation_deg:.2f} deg',
        f'  latency image stamp -> pose    : median {a.median_latency_ms:.1f} ms, '
        f'p90 {a.p90_latency_ms:.1f} ms',
        f'  node receive -> publish        : mean {diag("mean_latency_ms")} ms (last: network '
        f'{diag("network_ms")} ms, estimator {diag("estimator_ms")} ms)',
        f'  trajectory plot                : {result.plot_path}',
        f'  wall time                      : {result.wall_s:.1f} s',
    ]
    if result.rgbd is not None:
        lines += _format_rgbd(a, result.rgbd)
    return '\n'.join(lines)


def _format_rgbd(rgb: AccuracySummary, c: RgbdComparison) -> list[str]:
    """RGB and RGB-D side by side: each node's poses, then the frames both localized."""
    d = c.node_diagnostics

    def diag(key: str) -> str:
        return d.get(key, 'n/a')

    def row(name: str, s: AccuracySummary) -> str:
        return (f'  {name:31s}: {s.poses_matched:4d} {s.within_5cm_5deg_pct:7.1f}% '
                f'{100 * s.median_translation_m:8.2f} cm {s.median_rotation_deg:6.2f} deg')

    return [
        f'RGB vs RGB-D (a second node with registered depth, {100 * c.depth_noise:g} % noise of '
        'the range)',
        f'  {"":31s}  {"poses":>4s} {"5cm/5deg":>8s} {"median error":>20s}',
        row('RGB node', rgb),
        row('RGB-D node', c.accuracy),
        row('RGB, frames both localized', c.rgb_on_common),
        row('RGB-D, frames both localized', c.rgbd_on_common),
        f'  {"RGB-D node: poses rgbd / rgb":31s}: {diag("poses_rgbd")} / {diag("poses_rgb")} '
        f'(fallbacks: no depth {diag("depth_fallback_no_depth")}, bad '
        f'{diag("depth_fallback_bad_depth")}, invalid {diag("depth_fallback_invalid_depth")}); '
        f'estimator {diag("estimator_ms")} ms (last)',
        f'  RGB-D trajectory plot          : {c.plot_path}',
    ]
