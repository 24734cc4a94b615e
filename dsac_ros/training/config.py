"""Training configuration: stages, presets, schedules and precision as frozen dataclasses.

Units (docs/CONTRACTS.md): scene coordinates are metres everywhere, but stage 3 differentiates
its loss per millimetre of scene coordinate, the unit of the reference implementation, so the
paper's gradient clamp (+-0.1) and learning rates mean what they meant there
(`COORD_GRAD_UNIT_M`).

Two presets:

* ``default`` (CPU-sized, measured on the synthetic scene): one novel view of every training
  frame rendered from its depth (``TrainConfig.novel_views``); stage 1 with Adam lr 2e-3
  cosine-decayed to 0 over the budget (``minutes`` or ``iterations``), batch 4, exposure
  jitter only (``CoordStageConfig.augmentation``), bf16 autocast + channels_last where the
  hardware supports it; stage 2 Adam 1e-3,
  2000 steps of 64 error images; stage 3 as in the paper (SGD momentum 0.9, coordinate lr
  1e-4 / (1 + 0.1 t) and score lr 1e-7 on per-millimetre gradients clamped to [-0.1, 0.1])
  but 300 steps of one image.
* ``paper`` (Brachmann et al. 2017, Sec. 4.1 / 4.2): stage 1 Adam 1e-4 halved every 50k updates
  for 300k updates; stage 2 Adam 1e-4, batch 64, 2k updates; stage 3 SGD momentum 0.9,
  coordinate lr 1e-4 / (1 + 0.1 t), score lr 1e-7 fixed, 10k updates, per-millimetre
  gradients clamped to [-0.1, 0.1]. (The paper's batch of 64 patches becomes whole images.)

Both train stage 3 at the inlier threshold the model is deployed with (`TrainConfig.
inlier_threshold_px`, by default the paper's 10 px scaled to the image width) and store it, with
the other estimator settings, in the checkpoint (`dsac_ros.dsac.settings`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from dsac_ros.dsac import Selection
from dsac_ros.dsac.config import DEFAULT_INLIER_THRESHOLD_CM
from dsac_ros.models.scene_coordinate_net import SceneCoordinateNetConfig
from dsac_ros.training.augmentation import AugmentationConfig
from dsac_ros.training.novel_views import NovelViewConfig


class Stage(str, Enum):
    """Training stages, in order (paper Sec. 4.1 componentwise, 4.2 end-to-end). HEAD is not
    the paper's: the coordinate net's head alone on buffered encoder features
    (`HeadStageConfig`)."""

    COORDS = 'coords'
    HEAD = 'head'
    SCORE = 'score'
    E2E = 'e2e'


class Preset(str, Enum):
    DEFAULT = 'default'
    PAPER = 'paper'


class Schedule(str, Enum):
    """Learning-rate schedule. COSINE: lr0 * (1 + cos(pi p)) / 2 over the run's progress p in
    [0, 1] (iterations or minutes); STEP_HALF: lr0 * 0.5 ** (t // halve_every); INVERSE:
    lr0 / (1 + decay t); CONSTANT: lr0."""

    COSINE = 'cosine'
    STEP_HALF = 'step_half'
    INVERSE = 'inverse'
    CONSTANT = 'constant'


class Precision(str, Enum):
    """Forward precision of the coordinate net. AUTO: bf16 autocast on CPUs with native bf16
    (AVX512-BF16/AMX) and on CUDA with bf16 support, fp16 autocast on older CUDA, else fp32."""

    AUTO = 'auto'
    FP32 = 'fp32'
    BF16 = 'bf16'
    FP16 = 'fp16'


@dataclass(frozen=True)
class Budget:
    """When a stage ends: after ``iterations`` steps or ``minutes`` of training time, whichever
    comes first (None = no limit of that kind; at least one must be set). The lr schedule's
    progress is the larger of the two fractions, so a cosine spans the time budget."""

    iterations: int | None = None
    minutes: float | None = None

    def __post_init__(self) -> None:
        if self.iterations is None and self.minutes is None:
            raise ValueError('a stage budget needs iterations or minutes')
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f'iterations must be >= 1, got {self.iterations}')
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f'minutes must be > 0, got {self.minutes}')

    def progress(self, step: int, elapsed_s: float) -> float:
        """Fraction of the budget used, in [0, 1]."""
        fractions = []
        if self.iterations is not None:
            fractions.append(step / self.iterations)
        if self.minutes is not None:
            fractions.append(elapsed_s / (60.0 * self.minutes))
        return min(1.0, max(fractions))


@dataclass(frozen=True)
class LrSchedule:
    lr: float
    schedule: Schedule = Schedule.COSINE
    halve_every: int = 50_000  # STEP_HALF
    decay: float = 0.1  # INVERSE

    def at(self, step: int, progress: float) -> float:
        """Learning rate at optimizer step ``step`` (0-based) and budget ``progress``."""
        import math
        if self.schedule is Schedule.COSINE:
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if self.schedule is Schedule.STEP_HALF:
            return self.lr * 0.5 ** (step // self.halve_every)
        if self.schedule is Schedule.INVERSE:
            return self.lr / (1.0 + self.decay * step)
        return self.lr


@dataclass(frozen=True)
class ReprojectionPhase:
    """The last ``share`` of a depth-supervised stage's budget trained on the reprojection error
    instead of the distance in metres (`losses.guarded_reprojection_loss`): cells within
    ``guard_m`` of their depth target contribute their reprojection error, one pixel weighing
    ``metres_per_px`` (clamped at ``clamp_px``), the others their distance in metres. Not in
    the paper; DSAC* and ACE train on the reprojection error for the same reason: a
    coordinate's error along its viewing ray does not move the pose. share 0: metres only."""

    share: float = 0.0
    guard_m: float = 0.3
    metres_per_px: float = 0.01
    clamp_px: float = 50.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f'reprojection share must be in [0, 1], got {self.share}')

    def active(self, progress: float) -> bool:
        """Whether a step at budget ``progress`` (0..1) trains on the reprojection error."""
        return self.share > 0.0 and progress >= 1.0 - self.share


@dataclass(frozen=True)
class CoordStageConfig:
    """Stage 1: componentwise coordinate regression (paper Sec. 4.1).

    With depth: loss = mean over valid cells of ||y - y*||_2 (metres). Without depth
    (``TrainingSet.coords_b3hw`` None): reprojection initialisation, see
    ``losses.reprojection_init_loss`` (pixels).

    augmentation: per image, camera roll and zoom with K and pose to match (targets stay exact)
    and exposure / noise changes (`training.augmentation`; ``AugmentationConfig()`` is DSAC*'s
    +-30 deg and 2/3..3/2). The default is exposure jitter only (no camera change, as in the
    paper): within a 30-minute CPU budget the full augmentation slows stage 1 more than it
    helps. Measured on the revisit_a benchmark room, 24 minutes of stage 1 on a 2-core AVX2 CPU
    (about 1300 steps of 8 images): held-out coordinate error median 0.32 m (5 % of cells
    within 10 cm) with it, 0.24 m (11 %) with the default; switched on only for the last 28 of
    82 minutes it still lost (0.130 m vs 0.094 m; 18 % vs 19 % of poses within 10 cm / 10 deg).
    On a 2-core CPU with AMX bf16 (Sapphire Rapids; about 5x the steps) it still loses in the
    README's 30 minutes, same room: 22335 steps, validation error 0.184 m after stage 1 (0.062 m
    without), test coordinate error 6.8 cm (3.1 cm), 29.5 % of the test poses within
    5 cm / 5 deg (71.5 %). From a pretrained encoder (4 rooms) it still loses: revisit_a,
    19.5 minutes of stage 1, validation error 0.227 m (20.8 % within 10 cm) after 9265 steps
    with it, 0.140 m (37.5 %) after 10712 without (training loss 0.24 vs 0.10 m). Turn it on
    (`dsac_train --augment`) for budgets that reach convergence (GPU, hours).

    batch_size: 4 images, not 8: a CPU-bound stage 1 learns more from twice the steps. On
    revisit_a, 24 minutes on the 2-core AVX2 CPU: 2940 steps of 4 reached a training error of
    0.20 m against 0.23 m for 1423 steps of 8, and after the whole 30-minute recipe a median
    pose error of 42 cm against 50 cm (RANSAC, soft inliers; both 0 % within 5 cm / 5 deg).
    Batches of 2 from the pretrained encoder (session 16, 2-core AVX-512 bf16 CPU, 1.83x the
    steps in the same time, seed 0): a lower training loss (0.068 vs 0.076 m on revisit_a),
    a higher validation error after stage 1 (0.144 vs 0.122 m; free_a 0.073 vs 0.057 m), the
    same after the head stage, and 55.5 vs 51.5 % within 5 cm / 5 deg on revisit_a (frames
    won : lost 39 : 31), 22.5 vs 26.0 % on free_a (18 : 25): no gain, so 4 stays.

    crop_fraction: each step trains on a random window of every image, this share of its
    height and width (`crop_size`, `augmentation.crop_batch`; 1: whole frames, as the paper's
    preset). Not the paper's (it trained on 42x42 patches of a network without image context,
    we on whole frames of one with a ~150 px receptive field); the reason is the same as for
    the batch size: on a CPU, steps and the variety of frames per second count more than the
    cells per frame. A 0.6 window costs 36 % of a frame, so a step of 4 windows sees 4 frames
    for the compute of 1.4. Measured on revisit_a, 12 minutes of stage 1 then 3 of the head
    stage (2-core AVX2 CPU), test coordinate error on 50 test frames (median, share within
    10 cm): whole frames 1370 steps, 0.187 m, 23 %; 0.6 (144x192) 3850 steps, 0.147 m, 33 %;
    0.5 (120x160) 5150 steps, 0.151 m, 32 %. (Adam lr 5e-3 instead of 2e-3 on whole frames, the
    same 12 + 3 minutes: a lower training loss, 0.42 vs 0.50 m, but 0.229 m, 15 % on the test
    frames.)
    """

    budget: Budget = Budget(iterations=3000)
    lr: LrSchedule = LrSchedule(2e-3, Schedule.COSINE)
    batch_size: int = 4
    weight_decay: float = 0.0
    augmentation: AugmentationConfig = AugmentationConfig.exposure_jitter()
    crop_fraction: float = 0.6
    reprojection_clamp_px: float = 100.0  # no-depth loss: errors above this are outliers
    depth_prior_m: float = 3.0  # no-depth loss: target depth where reprojection is invalid
    min_depth_m: float = 0.1
    # With depth: metres only. The last 30 % on the reprojection error was within noise of it
    # on revisit_a in the README's 30 minutes (21.0 vs 19.5 % within 5 cm / 5 deg, 11.5 k vs
    # 12.7 k steps; docs/BENCHMARKS.md), so it stays off until a run converges.
    reprojection: ReprojectionPhase = ReprojectionPhase()
    # The encoder's learning rate relative to the head's (``lr``). 1: a pretrained encoder
    # must still adapt to the room. Measured on free_a, 10 + 2.3 minutes from the 8-room
    # encoder: 0.3 gave 3.5 % within 5 cm / 5 deg (validation 0.113 m, 5737 steps), 1.0 16.5 %
    # (0.093 m, 7336 steps).
    encoder_lr_scale: float = 1.0
    # Keep the encoder's strided stem (`SceneCoordinateNet.stem`) as the pretrained encoder
    # left it: its backward is a fifth of a step, so stage 1 makes 1.21x the steps in the same
    # time. At equal time on the 2-core AVX-512 bf16 CPU (session 16; 18540 / 19160 steps
    # against 15324 / 15837): training loss 3.5-7 % lower, 5 cm / 5 deg 52.0 vs 51.5 % on
    # revisit_a (frames won : lost 26 : 25), 55.0 vs 53.5 % with seed 1 (29 : 26), 27.5 vs
    # 26.0 % on free_a (36 : 33): within noise, so off.
    freeze_stem: bool = False

    def __post_init__(self) -> None:
        if not self.encoder_lr_scale >= 0.0:
            raise ValueError(f'encoder_lr_scale must be >= 0, got {self.encoder_lr_scale}')
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f'crop_fraction must be in (0, 1], got {self.crop_fraction}')

    def crop_size(self, image_hw: tuple[int, int], stride: int) -> tuple[int, int]:
        """(height, width) of stage 1's training window on ``image_hw`` frames:
        ``crop_fraction`` of each side, rounded down to the stride (at least one cell)."""
        return window_size(image_hw, self.crop_fraction, stride)


def window_size(image_hw: tuple[int, int], fraction: float, stride: int) -> tuple[int, int]:
    """(height, width) of a training window: ``fraction`` of each side of ``image_hw``,
    rounded down to the stride (at least one cell)."""
    return tuple(max(stride, int(side * fraction) // stride * stride) for side in image_hw)


@dataclass(frozen=True)
class HeadStageConfig:
    """Stage 1b (not in the paper; the buffer-and-shuffle of ACE, Brachmann et al. CVPR 2023,
    applied to our own encoder): freeze the encoder stage 1 trained, run it once over every
    training frame, keep the features of the cells with a target in a buffer, and train the
    1x1 regression head alone on random cells drawn from all frames at once.

    Why: 94 % of the network's multiply-adds are in the encoder, and each stage-1 step sees the
    cells of 4 images, which are highly correlated. A head step costs about 1 / 15 of a stage-1
    step per cell (7 vs 104 us on the CPU below) and mixes cells of every frame. The network
    and its inference cost do not change. Measured on revisit_a (2-core AVX2 CPU), test
    coordinate error (median, cells within 10 cm), 50 test frames:

    - 24 min of stage 1: 0.206 m, 16 %; + 4 min of this stage: 0.133 m, 37 % (training frames
      0.158 -> 0.064 m; 137k cells per second);
    - 16 min of stage 1: 0.311 m, 6 %; + 8 min of this stage: 0.155 m, 31 %.

    So at equal time the split beats stage 1 alone (0.155 vs 0.206 m), but the encoder's
    minutes count more than the head's: `STAGE_TIME_SHARE` gives the head 15 %, stage 1 65 %.

    cells_per_step: buffered cells per Adam step. max_buffer_cells: the buffer's size limit
    (float16 features, 2 bytes x C per cell: 4 M cells of 128 channels take 1 GiB); above it
    every view keeps the same share of its cells, drawn at random. augmented_copies: besides
    every frame as recorded, this many copies of it under ``augmentation`` (camera roll, zoom,
    exposure; exact targets) are buffered, which costs an encoder forward each, not a step.

    reprojection: with depth targets, the last half of the budget trains on the reprojection
    error (`ReprojectionPhase`). Measured on revisit_a (2-core AMX CPU, one stage-1 encoder of
    the README recipe, seed 1; a fresh head trained 4.5 minutes, 200 test frames, RANSAC):
    share 0 (metres only): 30.0 % within 5 cm / 5 deg, median 6.6 cm, test coordinate error
    6.0 cm; 0.5: 37.5 %, 5.9 cm, 9.6 cm (the 3D error grows along the rays, the pose error
    shrinks). A wider head (512) did not help: 29.5 %.
    """

    budget: Budget = Budget(iterations=8000)
    lr: LrSchedule = LrSchedule(3e-3, Schedule.COSINE)
    cells_per_step: int = 4096
    max_buffer_cells: int = 4_000_000
    augmented_copies: int = 0
    augmentation: AugmentationConfig = AugmentationConfig()
    reprojection: ReprojectionPhase = ReprojectionPhase(share=0.5)

    def __post_init__(self) -> None:
        if self.augmented_copies < 0:
            raise ValueError(f'augmented_copies must be >= 0, got {self.augmented_copies}')
        if self.cells_per_step < 1 or self.max_buffer_cells < 1:
            raise ValueError(f'cells_per_step and max_buffer_cells must be >= 1: {self}')


@dataclass(frozen=True)
class ScoreStageConfig:
    """Stage 2: Score CNN regression on error images of poses sampled around the ground truth
    (paper Sec. 4.1): target s* = -beta * pose_loss (deg / cm), L1, Adam."""

    budget: Budget = Budget(iterations=2000)
    lr: LrSchedule = LrSchedule(1e-3, Schedule.COSINE)
    batch_size: int = 64
    beta: float = 10.0
    max_perturbation: float = 30.0  # largest rotation (deg) / translation (cm) perturbation
    min_perturbation: float = 1.0
    output_scale: float = 100.0  # ScoreNetConfig.output_scale of a freshly built score net


COORD_GRAD_UNIT_M = 1e-3
"""Stage 3 takes the loss gradient w.r.t. scene coordinates per millimetre (the reference
implementation's unit): the per-metre gradient times this, before the clamp and the optimizer.
Per metre the same clamp acted on 8-14 % of the shipped model's cells with the earlier
100-inlier refinement and would on 82-85 % with the all-inlier one (5 and 10 px); per mm on none
(as in the paper), and the paper's learning rates act on gradients of the reference's magnitude
per coordinate (the networks differ, so their effect is measured: `EndToEndStageConfig`)."""


@dataclass(frozen=True)
class EndToEndStageConfig:
    """Stage 3: end-to-end training through ``dsac.expected_pose_loss`` (paper Sec. 4.2).

    coord_lr / score_lr / momentum: SGD on per-millimetre scene-coordinate gradients
    (`COORD_GRAD_UNIT_M`) and on the Score CNN; the paper's 1e-4 / (1 + 0.1 t) in both presets.
    Measured from the shipped demo model (150 DSAC steps, demo test split, 100 frames, 5 px):
    1e-4 moved 5 cm / 5 deg by at most 1 point, 1e-3 by -1.5 points on average with a 9-point
    spread over two seeds, 1e-2 took it from 86 % to 49 %. The clamp never acted (per-mm
    gradients ~0.02 per image in L2 norm); per metre at 0.1 it would have hit 82-85 % of cells.
    grad_clamp: the gradient entering either network at its output is clamped to +- this (per
    mm for coordinates, per score unit for the Score CNN), as in the paper. augment: each image
    under ``augmentation`` (`training.augmentation`) with K and pose to match; off: measured
    with the former augmentation (in-plane +-5 deg, zoom +-10 %, brightness / contrast) from
    the then shipped (unaugmented) demo model, 150 DSAC steps at 1e-3 gave 69.0 % (66-72, two
    seeds) within 5 cm / 5 deg on the demo test split with it, 84.5 % (80-89) without, 86 %
    before. Worth retrying only from a stage 1 trained with the same augmentation.
    through_deployed_scoring: score the hypotheses the way the model will be deployed: through
        soft inlier counts when the validation frames chose them over the Score CNN
        (`stages.validate_scoring`; the Score CNN then keeps its weights), through the Score
        CNN when it won. False: through the Score CNN whenever the model has one, as the paper
        (the paper preset). Measured from the `revisit_a` componentwise model of session 12
        (soft inliers deployed; 300 DSAC steps, seed 1, 200 test frames): through the Score
        CNN 51.5 / 50.5 / 51.5 % within 5 cm / 5 deg (RANSAC / SoftAM / DSAC) at 0.98 s per
        step, through soft inliers 51.0 / 50.5 / 50.5 % at 0.75 s (componentwise 49.5 / 50.0 /
        48.5 %): the same at equal steps, and a third more steps in the same minutes.
    depth: through the estimator's RGB-D mode instead (Kabsch hypotheses from 3 cells, 3D
    inliers within ``inlier_threshold_cm``), with the depth of the training frames (the z of
    their scene-coordinate targets); needs a scene with depth. ``inlier_threshold_cm`` is
    also what the checkpoint's model settings carry as the model's RGB-D threshold. (No
    augmentation with depth: the cell depths are not warped.)
    """

    budget: Budget = Budget(iterations=300)
    selection: Selection = Selection.DSAC
    coord_lr: LrSchedule = LrSchedule(1e-4, Schedule.INVERSE, decay=0.1)
    score_lr: LrSchedule = LrSchedule(1e-7, Schedule.CONSTANT)
    momentum: float = 0.9
    grad_clamp: float = 0.1
    frames_per_step: int = 1
    num_hypotheses: int = 256
    train_score: bool = True
    through_deployed_scoring: bool = True
    augment: bool = False
    augmentation: AugmentationConfig = AugmentationConfig()
    depth: bool = False
    inlier_threshold_cm: float = DEFAULT_INLIER_THRESHOLD_CM

    def __post_init__(self) -> None:
        if not isinstance(self.selection, Selection):
            object.__setattr__(self, 'selection', Selection(self.selection))
        if self.selection is Selection.RANSAC:
            raise ValueError('end-to-end training needs selection dsac or softam, not ransac')
        if not 0.0 < float(self.inlier_threshold_cm) < float('inf'):
            raise ValueError(f'inlier_threshold_cm must be > 0, got {self.inlier_threshold_cm}')


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs (the CLI builds it; the library never sees argparse).

    scene: 7-Scenes-layout scene root. out_dir: checkpoint, logs and plots; a rerun with the
    same out_dir resumes. stages: which stages to run, in order. init_checkpoint: start the
    networks from this file (weights only, e.g. componentwise -> end-to-end in a new folder).
    encoder: a pretrained encoder file (``dsac_pretrain``, `training.pretrain`) that a freshly
    built coordinate net starts from, with a fresh head (None: random initialisation; ignored
    when resuming or initialising from a checkpoint). `preset_config` gives the default preset
    the shipped one (`shipped_encoder`) where it fits ``coord_net``.
    coord_net: architecture of a freshly built coordinate net (ignored when resuming or
    initialising from a checkpoint, which carries its own).
    inlier_threshold_px: tau (pixels of the training images) that stage 3 trains with, the
    Score CNN's input is scaled by and the model is deployed with (stored in the checkpoint);
    None: the paper's 10 px scaled to the image width (5 px at 320). soft_inlier_beta: the soft
    inlier count's sharpness (1/px), likewise stored.
    validation_fraction: the last this share of every training sequence is held out of
    training as the validation frames (`data.validation_split`): the held-out coordinate error
    and the Score CNN vs soft-inlier choice are measured on them, never on the test split.
    0: no validation frames (the model is then deployed with soft inlier counts).
    novel_views: views of the training frames from cameras moved around them, rendered from
    their depth (`training.novel_views`), trained on by every stage like recorded frames. Not
    in the paper (its preset has none); one per frame by default: at equal steps it gained
    7.5 and 8.5 points within 5 cm / 5 deg on a revisit room (two seeds) and 3.5 on a free
    path (docs/BENCHMARKS.md, "Novel views").
    """

    scene: Path
    out_dir: Path
    coord_net: SceneCoordinateNetConfig = SceneCoordinateNetConfig()
    stages: tuple[Stage, ...] = tuple(Stage)
    coords: CoordStageConfig = CoordStageConfig()
    head: HeadStageConfig = HeadStageConfig()
    score: ScoreStageConfig = ScoreStageConfig()
    e2e: EndToEndStageConfig = EndToEndStageConfig()
    preset: Preset = Preset.DEFAULT
    inlier_threshold_px: float | None = None
    soft_inlier_beta: float = 0.5
    seed: int = 0
    device: str = 'auto'
    precision: Precision = Precision.AUTO
    channels_last: bool = True
    use_depth: bool = True
    max_frames: int | None = None
    validation_fraction: float = 0.1
    novel_views: NovelViewConfig = NovelViewConfig(copies=1)
    init_checkpoint: Path | None = None
    encoder: Path | None = None
    checkpoint_every: int = 500  # steps
    checkpoint_seconds: float = 120.0
    log_every: int = 20  # steps per CSV row
    progress_bar: bool = True
    threads: int | None = None  # torch.set_num_threads on CPU (None: leave torch's default)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, 'scene', Path(self.scene))
        object.__setattr__(self, 'out_dir', Path(self.out_dir))
        if self.init_checkpoint is not None:
            object.__setattr__(self, 'init_checkpoint', Path(self.init_checkpoint))
        if self.encoder is not None:
            object.__setattr__(self, 'encoder', Path(self.encoder))
        object.__setattr__(self, 'stages', tuple(Stage(s) for s in self.stages))
        if not self.stages:
            raise ValueError('no training stage selected')
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError('checkpoint_every and log_every must be >= 1')
        if self.inlier_threshold_px is not None and not self.inlier_threshold_px > 0:
            raise ValueError(f'inlier_threshold_px must be > 0, got {self.inlier_threshold_px}')
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f'validation_fraction must be in [0, 1), got '
                             f'{self.validation_fraction}')
        if not self.soft_inlier_beta > 0:
            raise ValueError(f'soft_inlier_beta must be > 0, got {self.soft_inlier_beta}')

    def to_dict(self) -> dict[str, Any]:
        """Plain (weights_only-loadable) dict for checkpoints and logs."""
        def plain(x: Any) -> Any:
            if isinstance(x, Enum):
                return x.value
            if isinstance(x, Path):
                return str(x)
            if isinstance(x, dict):
                return {k: plain(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [plain(v) for v in x]
            return x
        return plain(asdict(self))


def all_stages(preset: Preset | str) -> tuple[Stage, ...]:
    """The stages of a whole run of ``preset``: every stage; the paper has no head stage."""
    if Preset(preset) is Preset.PAPER:
        return tuple(s for s in Stage if s is not Stage.HEAD)
    return tuple(Stage)


def preset_config(preset: Preset | str, scene: Path | str, out_dir: Path | str,
                  **overrides: Any) -> TrainConfig:
    """A TrainConfig for ``preset`` ('default' or 'paper'), fields replaced by ``overrides``."""
    preset = Preset(preset)
    if preset is Preset.PAPER:
        base = TrainConfig(
            scene=Path(scene), out_dir=Path(out_dir), preset=preset,
            stages=all_stages(preset),
            coords=CoordStageConfig(budget=Budget(iterations=300_000),
                                    lr=LrSchedule(1e-4, Schedule.STEP_HALF, halve_every=50_000),
                                    batch_size=8, crop_fraction=1.0),
            score=ScoreStageConfig(budget=Budget(iterations=2000),
                                   lr=LrSchedule(1e-4, Schedule.CONSTANT), batch_size=64),
            e2e=EndToEndStageConfig(budget=Budget(iterations=10_000),
                                    coord_lr=LrSchedule(1e-4, Schedule.INVERSE, decay=0.1),
                                    score_lr=LrSchedule(1e-7, Schedule.CONSTANT),
                                    frames_per_step=1, through_deployed_scoring=False),
            novel_views=NovelViewConfig(),
        )
    else:
        net = overrides.get('coord_net', SceneCoordinateNetConfig())
        base = TrainConfig(scene=Path(scene), out_dir=Path(out_dir), preset=preset,
                           encoder=shipped_encoder() if net == SceneCoordinateNetConfig()
                           else None)
    return replace(base, **overrides)


def shipped_encoder() -> Path | None:
    """The pretrained encoder shipped with the package (``dsac_ros/assets/encoder.pt``, made by
    the command in its metadata and docs/BENCHMARKS.md), None where it is absent. It fits the
    default `SceneCoordinateNetConfig`."""
    path = Path(__file__).resolve().parents[1] / 'assets' / 'encoder.pt'
    return path if path.is_file() else None


STAGE_TIME_SHARE = {Stage.COORDS: 0.65, Stage.HEAD: 0.15, Stage.SCORE: 0.05, Stage.E2E: 0.15}
"""Shares of a ``--minutes`` budget (`with_budget`), renormalised over the selected stages;
without the head stage (``--preset paper``) its share goes to coords (80 / 5 / 15 %)."""


def with_budget(config: TrainConfig, minutes: float | None = None,
                iterations: int | None = None) -> TrainConfig:
    """Apply a CLI budget to the selected stages.

    ``iterations`` replaces every selected stage's iteration count. ``minutes`` is the total
    time for the selected stages, shared as `STAGE_TIME_SHARE` (renormalised over the
    selected ones); the iteration cap is lifted unless ``iterations`` is given too.
    """
    if minutes is None and iterations is None:
        return config
    share = dict(STAGE_TIME_SHARE)
    if Stage.HEAD not in config.stages:  # the head's time goes to the stage it continues
        share[Stage.COORDS] += share[Stage.HEAD]
    total = sum(share[s] for s in config.stages)
    updates = {}
    for stage in Stage:
        if stage not in config.stages:
            continue
        stage_minutes = minutes
        if minutes is not None and len(config.stages) > 1:
            stage_minutes = minutes * share[stage] / total
        name = stage.value
        stage_cfg = getattr(config, name)
        updates[name] = replace(stage_cfg, budget=Budget(iterations=iterations,
                                                         minutes=stage_minutes))
    return replace(config, **updates)
