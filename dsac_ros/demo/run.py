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
    plot_top_view,
    summarize_recording,
)

_LOG = logging.getLogger('dsac_ros.demo')


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
    """

    out_dir: Path = Path('demo_out')
    model_path: Path | None = None
    frames: int = 0
    rate_hz: float = 15.0
    device: str = 'auto'
    num_threads: int = 0
    startup_timeout_s: float = 60.0
    keep_scene: bool = False


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
class DemoResult:
    accuracy: AccuracySummary
    node_diagnostics: dict[str, str]
    plot_path: Path
    wall_s: float


def run_demo(config: DemoConfig) -> DemoResult:
    """Runs the whole demo (see module doc); raises RuntimeError when a process fails."""
    from dsac_ros.data.synthetic import generate_test_sequence
    from dsac_ros.ros.node import default_model_path

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
        for stale in (gt_path, poses_path):
            stale.unlink(missing_ok=True)
        env = loopback_dds_env(base=os.environ)
        if config.num_threads:
            env['OMP_NUM_THREADS'] = str(config.num_threads)
        with RosProcesses(env, out / 'logs') as procs:
            ready = out / 'logs' / 'recorder.ready'
            ready.unlink(missing_ok=True)
            recorder = procs.start('recorder', module_command(
                'dsac_ros.demo.pose_recorder', str(poses_path), '--ready-file', str(ready)))
            node = procs.start('node', node_command(package_config_file(), {
                'model_path': str(model.resolve()), 'device': config.device,
                'num_threads': config.num_threads, 'input_reliability': 'reliable',
                # The demo camera is not on a robot: no base, map -> <camera>_dsac on /tf.
                'base_frame': '', 'tf_mode': 'map_to_camera'}))
            if not wait_for(ready.exists, 30.0, children=[recorder]):
                raise RuntimeError(f'pose recorder did not start:\n{recorder.log()}')
            _LOG.info('playing %s at %.1f Hz', scene_dir, config.rate_hz)
            player = procs.start('player', module_command(
                'dsac_ros.demo.player', str(scene_dir), '--rate', str(config.rate_hz),
                '--gt-out', str(gt_path), '--wait-timeout', str(config.startup_timeout_s)))
            frames = len(list((scene_dir / 'seq-01').glob('*.color.png')))
            code = wait_exit(player, config.startup_timeout_s + 2.0 * frames / config.rate_hz)
            if node.returncode is not None:
                raise RuntimeError(f'relocalize_node exited with {node.returncode}:\n'
                                   f'{node.log()[-3000:]}')
            if code != 0:
                raise RuntimeError(f'player failed ({code}):\n{player.log()[-3000:]}')
            # Let the node finish its last frame and send one more /diagnostics.
            time.sleep(2.5)
            procs.stop(recorder)
            node_code = procs.stop(node)
            if node_code != 0:
                raise RuntimeError(f'relocalize_node exited with {node_code}:\n'
                                   f'{node.log()[-3000:]}')
        gt, recorded = load_json(gt_path), load_json(poses_path)
        accuracy = summarize_recording(gt, recorded)
        title = (f'{accuracy.within_5cm_5deg_pct:.1f}% within 5 cm/5 deg, median '
                 f'{100 * accuracy.median_translation_m:.1f} cm / '
                 f'{accuracy.median_rotation_deg:.2f} deg')
        plot = plot_top_view(gt, recorded, out / 'trajectory_top_view.png', title)
        result = DemoResult(accuracy, dict(recorded.get('diagnostics') or {}), plot,
                            time.monotonic() - start)
        (out / 'summary.json').write_text(json.dumps({
            'accuracy': asdict(accuracy), 'node_diagnostics': result.node_diagnostics,
            'model': str(model), 'scene_seed': scene_config.seed, 'rate_hz': config.rate_hz,
            'wall_s': result.wall_s}, indent=2))
        return result
    finally:
        if not config.keep_scene:
            shutil.rmtree(scene_dir, ignore_errors=True)


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
    return '\n'.join(lines)
