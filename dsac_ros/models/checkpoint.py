"""One-file checkpoints: both networks, their configs, the scene mean, the training camera and
(optionally) the training state for resuming. Everything in the file is a tensor, dict, list,
str, int, float, bool or None, so it loads with ``torch.load(path, weights_only=True)``.

Layout (format version 1)::

    {'format': 'dsac_ros.checkpoint', 'format_version': 1,
     'coord_net': {'config': {...}, 'state_dict': {...}},
     'score_net': {'config': {...}, 'state_dict': {...}} or None,
     'scene_mean': (3,) float32 tensor, world frame, metres,
     'K': (3, 3) float64 tensor, intrinsics of the training images (pixels),
     'image_size': [height, width] of the training images (pixels),
     'metadata': {str: str|int|float},
     'training': None or {'stage': str, 'step': int, 'optimizers': {...}, 'rng': {...}, ...},
     'digest': SHA-256 hex of everything else (optional on read; verified when present)}
"""

from __future__ import annotations

from dataclasses import dataclass, field
import hashlib
import logging
import os
from pathlib import Path
import tempfile
from typing import Any

import torch
from torch import Tensor

from dsac_ros.models.scene_coordinate_net import SceneCoordinateNet, SceneCoordinateNetConfig
from dsac_ros.models.score_net import ScoreNet, ScoreNetConfig

_LOG = logging.getLogger(__name__)

FORMAT_NAME = 'dsac_ros.checkpoint'
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, truncated, of another format or version."""


@dataclass
class Checkpoint:
    """In-memory view of a checkpoint file (networks in float32 on the requested device)."""

    coord_net: SceneCoordinateNet
    score_net: ScoreNet | None
    K: Tensor  # (3, 3) float64, intrinsics of the training images, pixels
    image_size: tuple[int, int]  # (height, width) of the training images, pixels
    metadata: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None


def _half_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Floating-point tensors to float16 (halves the file), integer buffers untouched."""
    return {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}


def _digest(obj: Any, h: Any = None) -> str:
    """SHA-256 over a checkpoint payload (keys, scalars, tensor dtypes/shapes/bytes).

    Zip entries in torch files carry no checksum that ``torch.load`` verifies, so bytes
    corrupted inside a tensor would load silently; the digest catches that.
    """
    top = h is None
    if top:
        h = hashlib.sha256()
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f'T{t.dtype}{tuple(t.shape)}'.encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f'D{len(obj)}'.encode())
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f'L{len(obj)}'.encode())
        for v in obj:
            _digest(v, h)
    else:
        h.update(repr(obj).encode())
    return h.hexdigest() if top else ''


def checkpoint_dict(coord_net: SceneCoordinateNet, score_net: ScoreNet | None, K_33: Tensor,
                    image_size: tuple[int, int], metadata: dict[str, Any] | None = None,
                    training: dict[str, Any] | None = None,
                    half: bool = False) -> dict[str, Any]:
    """Build the plain dict stored in a checkpoint file (see module docstring)."""
    K_33 = torch.as_tensor(K_33, dtype=torch.float64).detach().cpu().reshape(3, 3)
    height, width = int(image_size[0]), int(image_size[1])

    def net_entry(net: torch.nn.Module) -> dict[str, Any]:
        state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        return {'config': net.config.to_dict(),
                'state_dict': _half_state(state) if half else state}

    coord_entry = net_entry(coord_net)
    # The scene mean is kept in float32 even in half files: it is metres of absolute position.
    coord_entry['state_dict']['scene_mean'] = coord_net.scene_mean.detach().cpu().float()
    payload = {
        'format': FORMAT_NAME,
        'format_version': FORMAT_VERSION,
        'coord_net': coord_entry,
        'score_net': None if score_net is None else net_entry(score_net),
        'scene_mean': coord_net.scene_mean.detach().cpu().float().clone(),
        'K': K_33,
        'image_size': [height, width],
        'metadata': dict(metadata or {}),
        'training': training,
    }
    payload['digest'] = _digest(payload)
    return payload


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temp files a killed `save_checkpoint` of ``path`` left beside it.

    SIGKILL during a write cannot run the writer's clean-up, so a resuming run calls this
    before it writes again. Returns the removed paths.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f'.{path.name}.*.tmp'):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def save_checkpoint(path: str | os.PathLike, coord_net: SceneCoordinateNet,
                    score_net: ScoreNet | None, K_33: Tensor, image_size: tuple[int, int],
                    metadata: dict[str, Any] | None = None,
                    training: dict[str, Any] | None = None, half: bool = False) -> Path:
    """Write a checkpoint atomically: a temp file in the same folder, fsync, ``os.replace``.

    A crash at any point leaves either the old file or the new one, never a partial file.
    ``half`` stores floating-point weights as float16 (loaded back as float32).
    """
    payload = checkpoint_dict(coord_net, score_net, K_33, image_size, metadata, training, half)
    return atomic_torch_save(path, payload)


def atomic_torch_save(path: str | os.PathLike, payload: Any) -> Path:
    """``torch.save`` atomically: a temp file in the same folder, fsync, ``os.replace``.

    A crash at any point leaves either the old file or the new one, never a partial file
    (`remove_stale_temporaries` deletes what a SIGKILL leaves)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _read_versioned(path: Path, what: str, kind: str, format_name: str, version: int
                    ) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a dict of ``format_name`` / ``version``, else a
    CheckpointError that names the file and what is wrong with it."""
    if not path.is_file():
        raise CheckpointError(f'{what} {path} does not exist or is not a file')
    try:
        raw = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # torch raises many types for garbage/truncated files
        raise CheckpointError(
            f'{what} {path} cannot be read (corrupted, truncated or not a torch file): '
            f'{type(exc).__name__}: {exc}') from exc
    if not isinstance(raw, dict) or raw.get('format') != format_name:
        raise CheckpointError(f'{path} is not {kind} (no format {format_name!r})')
    if raw.get('format_version') != version:
        raise CheckpointError(
            f'{what} {path} has format version {raw.get("format_version")!r}; this dsac_ros '
            f'reads version {version}')
    return raw


def read_checkpoint_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate the raw dict of a checkpoint file (tensors on the CPU).

    Raises CheckpointError for a missing, unreadable, truncated or foreign file, or one of
    another format version.
    """
    path = Path(path)
    raw = _read_versioned(path, 'checkpoint', 'a dsac_ros checkpoint', FORMAT_NAME,
                          FORMAT_VERSION)
    for key in ('coord_net', 'K', 'image_size', 'scene_mean'):
        if key not in raw:
            raise CheckpointError(f'checkpoint {path} lacks the entry {key!r}')
    stored = raw.pop('digest', None)
    if stored is not None and stored != _digest(raw):
        raise CheckpointError(f'checkpoint {path} is corrupted (content digest mismatch)')
    return raw


def _build_net(entry: Any, cls: type, config_cls: type, what: str, path: Path,
               device: torch.device) -> torch.nn.Module:
    if not isinstance(entry, dict) or 'config' not in entry or 'state_dict' not in entry:
        raise CheckpointError(f'checkpoint {path}: bad {what} entry')
    try:
        net = cls(config_cls.from_dict(entry['config']))
        state = {k: v.float() if v.is_floating_point() else v
                 for k, v in entry['state_dict'].items()}
        net.load_state_dict(state)
    except (ValueError, RuntimeError, AttributeError, TypeError) as exc:
        raise CheckpointError(f'checkpoint {path}: {what} does not load: {exc}') from exc
    return net.to(device).eval()


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = 'cpu') -> Checkpoint:
    """Load a checkpoint file into float32 networks (in eval mode) on ``device``.

    Raises CheckpointError (a ValueError) when the file is missing, corrupted, truncated,
    foreign or of another format version.
    """
    path = Path(path)
    device = torch.device(device)
    raw = read_checkpoint_dict(path)
    coord_net = _build_net(raw['coord_net'], SceneCoordinateNet, SceneCoordinateNetConfig,
                           'coordinate net', path, device)
    score_net = None
    if raw.get('score_net') is not None:
        score_net = _build_net(raw['score_net'], ScoreNet, ScoreNetConfig, 'score net', path,
                               device)
    try:
        K = torch.as_tensor(raw['K'], dtype=torch.float64).reshape(3, 3)
        height, width = (int(x) for x in raw['image_size'])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f'checkpoint {path}: bad K or image_size: {exc}') from exc
    if height <= 0 or width <= 0 or height % 8 or width % 8:
        raise CheckpointError(f'checkpoint {path}: bad image size {width}x{height}')
    return Checkpoint(coord_net=coord_net, score_net=score_net, K=K,
                      image_size=(height, width), metadata=dict(raw.get('metadata') or {}),
                      training=raw.get('training'))


# ----------------------------------------------------------------------------- encoder files

ENCODER_FORMAT_NAME = 'dsac_ros.encoder'
ENCODER_FORMAT_VERSION = 1


@dataclass(frozen=True)
class EncoderFile:
    """A pretrained encoder (``training.pretrain``): the architecture it belongs to, the
    encoder's state (float32), what made it (``metadata``), its content digest and the file
    it was read from."""

    net_config: SceneCoordinateNetConfig
    state_dict: dict[str, Tensor]
    metadata: dict[str, Any]
    digest: str
    path: Path

    @property
    def origin(self) -> str:
        """``<file name> sha256:<digest>``: how a run that starts from this encoder names it
        (a pretraining curriculum's lineage, a scene model's metadata)."""
        return f'{self.path.name} sha256:{self.digest}'


def save_encoder(path: str | os.PathLike, net: SceneCoordinateNet,
                 metadata: dict[str, Any] | None = None) -> Path:
    """Write ``net.encoder`` (float16 weights: the file ships in the repository) atomically.

    Layout (format version 1)::

        {'format': 'dsac_ros.encoder', 'format_version': 1, 'net_config': {...},
         'state_dict': {...}, 'metadata': {str: str|int|float}, 'digest': SHA-256 hex}
    """
    state = {k: v.detach().cpu().clone() for k, v in net.encoder.state_dict().items()}
    payload = {'format': ENCODER_FORMAT_NAME, 'format_version': ENCODER_FORMAT_VERSION,
               'net_config': net.config.to_dict(), 'state_dict': _half_state(state),
               'metadata': dict(metadata or {})}
    payload['digest'] = _digest(payload)
    return atomic_torch_save(path, payload)


def load_encoder(path: str | os.PathLike) -> EncoderFile:
    """Read an encoder file (``weights_only``). Raises CheckpointError for a missing, corrupt,
    foreign or other-version file."""
    path = Path(path)
    raw = _read_versioned(path, 'encoder file', 'a dsac_ros encoder file', ENCODER_FORMAT_NAME,
                          ENCODER_FORMAT_VERSION)
    stored = raw.pop('digest', None)
    if stored is None or stored != _digest(raw):
        raise CheckpointError(f'encoder file {path} is corrupted (content digest mismatch)')
    try:
        config = SceneCoordinateNetConfig.from_dict(raw['net_config'])
        state = {k: v.float() if v.is_floating_point() else v
                 for k, v in raw['state_dict'].items()}
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f'encoder file {path}: bad entry: {exc}') from exc
    return EncoderFile(config, state, dict(raw.get('metadata') or {}), stored, path)


def load_encoder_into(net: SceneCoordinateNet, encoder: EncoderFile) -> None:
    """Copy a pretrained encoder into ``net`` (same encoder architecture; the head and the scene
    mean are left alone). Raises ValueError when the architectures differ."""
    mine, theirs = net.config, encoder.net_config
    if (mine.stem_widths, mine.num_blocks, mine.dilations, mine.norm) != (
            theirs.stem_widths, theirs.num_blocks, theirs.dilations, theirs.norm):
        raise ValueError(f'the pretrained encoder is for {theirs}, the network is {mine}')
    net.encoder.load_state_dict(encoder.state_dict)
