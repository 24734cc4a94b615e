"""The training driver: componentwise stages (coordinates, score) and end-to-end DSAC / SoftAM.

``train(config)`` runs the selected stages in order inside ``config.out_dir``:

* ``checkpoint.pt``: full state (both networks, optimizer states, stage, step, elapsed time,
  RNG states, config), written atomically every ``checkpoint_every`` steps or
  ``checkpoint_seconds``, at each stage end and on SIGINT / SIGTERM. A rerun with the same
  ``out_dir`` resumes from it (completed stages are skipped, the running one continues at its
  saved step, so at most one interval is lost).
* ``model.pt``: slim inference file (float16 weights, no training state), after each stage;
  ``model_componentwise.pt`` the same before stage e2e, when it is to run, so that every run
  can show what end-to-end training changed (``dsac_evaluate`` on both files).
* ``log.csv`` (stage, step, elapsed_s, lr, loss, aux) and ``curves.png``.

Under torchrun (WORLD_SIZE > 1) every rank trains on its own shard of the frames with its own
seed; stage 1 and 2 use DistributedDataParallel, stage 3 averages gradients with one all-reduce
per step (its score net is not called when an image has no valid hypothesis, which DDP's
reducer cannot handle). Rank 0 alone writes files.
"""

from __future__ import annotations

import logging
from typing import Callable

from dsac_ros.models.checkpoint import save_checkpoint
from dsac_ros.training.config import Stage, TrainConfig
from dsac_ros.training.runtime import num_threads, setup_runtime, teardown_runtime
from dsac_ros.training.session import (
    CHECKPOINT_NAME,
    COMPONENTWISE_MODEL_NAME,
    CURVES_NAME,
    LOG_NAME,
    MODEL_NAME,
    Session,
    TrainingInterruptedError,
    TrainResult,
    barrier,
    metadata,
    open_session,
    plot_curves,
    prune_log,
    save_state,
    signal_guard,
)
from dsac_ros.training.stages import train_coords, train_e2e, train_head, train_score

__all__ = ['TrainResult', 'TrainingInterruptedError', 'train']

_LOG = logging.getLogger(__name__)


def train(config: TrainConfig) -> TrainResult:
    """Run ``config.stages`` in ``config.out_dir`` (resuming from its checkpoint if present).

    Raises TrainingInterruptedError after SIGINT / SIGTERM (state saved), ValueError on bad input
    (missing scene, checkpoint of another camera), CheckpointError on an unreadable
    checkpoint in ``out_dir`` or ``init_checkpoint``.
    """
    runtime = setup_runtime(config.device, config.precision)
    try:
        with num_threads(config.threads if runtime.device.type == 'cpu' else None), \
                signal_guard() as signals:
            session = open_session(config, runtime)
            signals.attach(session)
            return _run(session)
    finally:
        teardown_runtime(runtime)


def _run(session: Session) -> TrainResult:
    config = session.config
    session.result = TrainResult(out_dir=config.out_dir, checkpoint=config.out_dir /
                                 CHECKPOINT_NAME, model=config.out_dir / MODEL_NAME,
                                 stages_done=list(session.completed))
    if session.runtime.is_main:
        prune_log(session)
    runners: dict[Stage, Callable[[Session], None]] = {
        Stage.COORDS: train_coords, Stage.HEAD: train_head, Stage.SCORE: train_score,
        Stage.E2E: train_e2e}
    order = list(Stage)
    for stage in sorted(config.stages, key=order.index):
        if stage.value in session.completed:
            _LOG.info('stage %s already completed in %s: skipped', stage.value, config.out_dir)
            continue
        later = [s for s in session.completed if order.index(Stage(s)) > order.index(stage)]
        if later:  # e.g. a run from before the head stage existed: keep what e2e trained
            _LOG.info('stage %s skipped: the later stage(s) %s already ran in %s', stage.value,
                      later, config.out_dir)
            continue
        runners[stage](session)
        session.completed.append(stage.value)
        session.result.stages_done.append(stage.value)
        session.resume = None
        if session.runtime.is_main:
            save_state(session, stage=None, step=0, elapsed_s=0.0, optimizers={}, generator=None)
            _save_model(session, MODEL_NAME)
            if Stage.E2E in config.stages and Stage.E2E.value not in session.completed:
                _save_model(session, COMPONENTWISE_MODEL_NAME)
            plot_curves(config.out_dir / LOG_NAME, config.out_dir / CURVES_NAME)
        barrier(session.runtime)
    if not (config.out_dir / MODEL_NAME).exists() and session.runtime.is_main:
        _save_model(session, MODEL_NAME)
    return session.result


def _save_model(session: Session, name: str) -> None:
    """An inference file (model.pt): float16 weights, no training state (rank 0 only)."""
    save_checkpoint(session.out / name, session.coord_net, session.score_net,
                    session.data.K_33, session.data.image_size, metadata=metadata(session),
                    half=True)
