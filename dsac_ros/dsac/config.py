"""Configuration, selection modes and the score-function protocol of the DSAC estimator."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Callable, Protocol, runtime_checkable

from torch import Tensor


class PoseMode(str, Enum):
    """Which correspondences a pose comes from.

    RGB: 2D-3D (cell pixel, scene coordinate): P4P hypotheses, reprojection errors in pixels.
    RGBD: 3D-3D (camera point from measured depth, scene coordinate): Kabsch hypotheses from 3
    cells, 3D distances in the camera frame (`dsac_ros.dsac.rgbd`). Selection is the same.
    """

    RGB = 'rgb'
    RGBD = 'rgbd'


class Selection(str, Enum):
    """How one pose is chosen from the hypothesis pool (paper Sec. 2.1 / 2.2).

    RANSAC: argmax of the scores (Eq. 2). SOFTAM: softmax-weighted average of all hypotheses
    (Eq. 4-5). DSAC: one hypothesis drawn from the softmax of the scores (Eq. 6).
    """

    RANSAC = 'ransac'
    SOFTAM = 'softam'
    DSAC = 'dsac'


@runtime_checkable
class ScoreFunction(Protocol):
    """Scores hypotheses from their reprojection-error images (paper Sec. 3, Score CNN).

    Args:
        errors_bnhw: (B, N, H, W) reprojection error in pixels of every scene-coordinate cell
            under each of the N hypotheses of each of the B images. Invalid cells (NaN scene
            coordinates) and points behind the camera hold `max_reprojection_error_px`; every
            error is clamped to that value, so inputs are finite and bounded. At inference the
            tensor is scratch memory reused by the next call: do not keep a reference to it.

    Returns:
        (B, N) scores, higher is better. They are turned into selection probabilities by
        `softmax(score_alpha * scores)`. A torch.nn.Module with this forward qualifies and its
        parameters receive gradients from `expected_pose_loss`.
    """

    def __call__(self, errors_bnhw: Tensor) -> Tensor:
        ...


ScoreFn = Callable[[Tensor], Tensor]
"""Callable alias of `ScoreFunction`: (B, N, H, W) errors in px -> (B, N) scores."""


@dataclass(frozen=True)
class EstimatorConfig:
    """Parameters of the DSAC pose estimator (defaults: paper Sec. 3, values of Brachmann 2016).

    Attributes:
        num_hypotheses: minimal sets (4 correspondences each) sampled per image.
        inlier_threshold_px: tau; a cell is an inlier when its reprojection error is below it.
        soft_inlier_beta: sharpness (1/px) of the soft inlier count
            sum_i sigmoid(beta * (tau - e_i)), the default score when no score function is given.
        score_alpha: temperature of the selection softmax, P(j) = softmax(alpha * s)_j. It scales
            whatever the score function returns (soft inlier counts are in cells).
        refinement_steps: inlier re-selection + re-solve rounds applied to the chosen pose.
        max_refinement_inliers: at most this many inliers (a random subset) per round.
        min_refinement_inliers: a hypothesis stops refining once it has fewer inliers.
        refinement_pnp_iterations: Gauss-Newton iterations of `refine_pnp` per round (each
            round starts from the previous round's pose, so one is enough).
        stop_when_inliers_unchanged: a hypothesis also stops refining when its inlier set is
            the same as in the previous round (the next round would re-fit the same points; with
            one LM iteration per round that forgoes a little convergence, which the inference
            polish step recovers; it did not change the expected training loss measurably).
        p4p_gauss_newton_steps: LM steps on all 4 points after P3P in `solve_p4p` (0 = the
            exact P3P solution of 3 points, disambiguated by the 4th).
        polish_with_all_inliers: after the refinement rounds, `estimate` runs one more
            `refine_pnp` on ALL inliers of the refined pose (not in `expected_pose_loss`, where
            every hypothesis would need it). Off = only the paper's rounds of <= 100 inliers.
        selection: RANSAC, SOFTAM or DSAC.
        min_inliers_for_pose: the final pose is valid only with at least this many inliers (and
            images with fewer valid cells than this, or fewer than 4, get no pose at all).
        max_reprojection_error_px: errors are clamped to this value (score-function input).
        seed: seed of the torch.Generator used when the caller passes none.
        inlier_threshold_cm: RGB-D mode only: a cell is an inlier when its camera point (from
            depth) and its scene coordinate moved by the hypothesis are closer than this (cm).
            None: the model's own (checkpoint metadata `INLIER_THRESHOLD_CM_KEY`, applied by
            the relocalizer), `DEFAULT_INLIER_THRESHOLD_CM` without one. The other thresholds
            (scoring, refinement, clamping) apply to RGB-D errors rescaled so that this
            threshold maps onto `inlier_threshold_px` (see `dsac_ros.dsac.rgbd`).
        rgbd_draws_per_hypothesis: RGB-D mode only: minimal sets of 3 cells drawn per
            hypothesis; the first `num_hypotheses` that pass the cheap rigidity and degeneracy
            checks become the hypotheses (rejection and redraw, batched).
    """

    num_hypotheses: int = 256
    inlier_threshold_px: float = 10.0
    soft_inlier_beta: float = 0.5
    score_alpha: float = 0.1
    refinement_steps: int = 8
    max_refinement_inliers: int = 100
    min_refinement_inliers: int = 50
    refinement_pnp_iterations: int = 1
    stop_when_inliers_unchanged: bool = True
    p4p_gauss_newton_steps: int = 0
    polish_with_all_inliers: bool = True
    selection: Selection = Selection.RANSAC
    min_inliers_for_pose: int = 20
    max_reprojection_error_px: float = 100.0
    seed: int = 0
    inlier_threshold_cm: float | None = None
    rgbd_draws_per_hypothesis: int = 4

    def __post_init__(self) -> None:
        # Accept the plain string form ('dsac') from YAML / CLI.
        if not isinstance(self.selection, Selection):
            try:
                object.__setattr__(self, 'selection', Selection(self.selection))
            except ValueError as exc:
                names = [s.value for s in Selection]
                raise ValueError(
                    f'selection must be one of {names}, got {self.selection!r}') from exc
        positive_ints = ('num_hypotheses', 'max_refinement_inliers',
                         'rgbd_draws_per_hypothesis')
        for name in positive_ints:
            if int(getattr(self, name)) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        non_negative_ints = ('refinement_steps', 'min_refinement_inliers',
                             'refinement_pnp_iterations', 'min_inliers_for_pose',
                             'p4p_gauss_newton_steps')
        for name in non_negative_ints:
            if int(getattr(self, name)) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
        positive_floats = ('inlier_threshold_px', 'soft_inlier_beta', 'score_alpha')
        for name in positive_floats:
            value = float(getattr(self, name))
            if not value > 0.0 or value == float('inf'):
                raise ValueError(f'{name} must be a finite number > 0, got {value}')
        if self.inlier_threshold_cm is not None:
            value = float(self.inlier_threshold_cm)
            if not value > 0.0 or value == float('inf'):
                raise ValueError('inlier_threshold_cm must be None or a finite number > 0, got '
                                 f'{self.inlier_threshold_cm}')
        if not float(self.max_reprojection_error_px) > float(self.inlier_threshold_px):
            raise ValueError(
                'max_reprojection_error_px must exceed inlier_threshold_px, got '
                f'{self.max_reprojection_error_px} <= {self.inlier_threshold_px}')


DEFAULT_INLIER_THRESHOLD_CM = 10.0
"""RGB-D inlier threshold (cm) when neither the caller nor the checkpoint gives one (DSAC*'s)."""

INLIER_THRESHOLD_CM_KEY = 'inlier_threshold_cm'
"""Checkpoint metadata key of the model's RGB-D inlier threshold (float, cm)."""


def rgbd_threshold_cm(config: EstimatorConfig) -> float:
    """The RGB-D inlier threshold in cm: `config.inlier_threshold_cm` or the default."""
    if config.inlier_threshold_cm is None:
        return DEFAULT_INLIER_THRESHOLD_CM
    return float(config.inlier_threshold_cm)


def estimator_metadata(config: EstimatorConfig) -> dict[str, float]:
    """Estimator settings a checkpoint carries as the defaults of its model (metadata dict).

    Today: the RGB-D inlier threshold (`INLIER_THRESHOLD_CM_KEY`, cm).
    """
    return {INLIER_THRESHOLD_CM_KEY: rgbd_threshold_cm(config)}


def apply_estimator_metadata(config: EstimatorConfig, metadata: dict) -> EstimatorConfig:
    """`config` with its unset (None) settings taken from a checkpoint's metadata, where the
    metadata holds a usable value (a bad one is ignored: the default applies)."""
    if config.inlier_threshold_cm is not None or INLIER_THRESHOLD_CM_KEY not in metadata:
        return config
    try:
        return replace(config, inlier_threshold_cm=float(metadata[INLIER_THRESHOLD_CM_KEY]))
    except (TypeError, ValueError):
        return config
