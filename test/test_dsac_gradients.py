"""Gradients of the DSAC / SoftAM expected pose loss: autograd vs central differences."""

import pytest
import torch
from torch import nn

from dsac_ros.dsac import (
    DsacEstimator,
    EstimatorConfig,
    Selection,
    default_inlier_threshold_px,
    expected_pose_loss,
)
from dsac_ros.dsac.testing import CorrespondenceCaseConfig, make_correspondence_case
from dsac_ros.geometry.transforms import pose_loss
from dsac_ros.models.score_net import ScoreNet, ScoreNetConfig


class TinyScore(nn.Module):
    """A minimal learned score: conv on the error image, pooled: (B, N, H, W) -> (B, N)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, dtype=torch.float64)
        self.head = nn.Linear(2, 1, dtype=torch.float64)
        torch.manual_seed(0)
        for p in self.parameters():
            nn.init.normal_(p, std=0.3)

    def forward(self, errors_bnhw):
        B, N, H, W = errors_bnhw.shape
        x = torch.tanh(self.conv(errors_bnhw.reshape(B * N, 1, H, W) / 10.0))
        return 20.0 * self.head(x.mean(dim=(2, 3))).reshape(B, N)


def _small_case(outliers=0.25, seed=0):
    cfg = CorrespondenceCaseConfig(height=6, width=8, outlier_fraction=outliers, noise_px=1.0,
                                   focal_px=60.0)
    return make_correspondence_case(cfg, batch=2, seed=seed)


def _config(selection):
    return EstimatorConfig(num_hypotheses=6, selection=selection, refinement_steps=2,
                           max_refinement_inliers=16, min_refinement_inliers=8,
                           score_alpha=0.5, soft_inlier_alpha=0.5)


def _loss(coords, case, config, score_fn, seed=7):
    g = torch.Generator()
    g.manual_seed(seed)
    return expected_pose_loss(coords, case.K_b33, case.T_cw_b44, config, score_fn, g)


@pytest.mark.parametrize('selection', [Selection.DSAC, Selection.SOFTAM])
def test_gradient_reaches_coordinates_and_score_parameters(selection):
    case = _small_case()
    coords = case.scene_coords_b3hw.clone().requires_grad_(True)
    score = TinyScore()
    loss = _loss(coords, case, _config(selection), score)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert float(loss.detach()) > 0
    loss.backward()
    assert bool(torch.isfinite(coords.grad).all())
    assert float(coords.grad.abs().sum()) > 0
    for name, p in score.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        if name == 'head.bias':
            # Shifts every score of an image alike: the selection softmax ignores it.
            assert float(p.grad.abs().max()) < 1e-9, name
        else:
            assert float(p.grad.abs().sum()) > 0, name


def _check_against_central_differences(case, config, score, h, tolerance):
    """Autograd d E[loss] / d scene coordinates against central differences of the loss
    computed without autograd, on the 4 entries with the largest gradient (inlier cells that
    drive the loss) and 4 random ones; within `tolerance` of the largest entry."""
    coords = case.scene_coords_b3hw.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_loss(coords, case, config, score), coords)
    flat = grad.abs().flatten()
    assert bool(torch.isfinite(grad).all()) and float(flat.max()) > 0
    perm = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))
    for idx in torch.cat([flat.topk(4).indices, perm[:4]]).tolist():
        plus = case.scene_coords_b3hw.clone()
        minus = case.scene_coords_b3hw.clone()
        plus.view(-1)[idx] += h
        minus.view(-1)[idx] -= h
        with torch.no_grad():
            up, down = _loss(plus, case, config, score), _loss(minus, case, config, score)
        numeric, analytic = float((up - down) / (2 * h)), float(grad.reshape(-1)[idx])
        assert abs(numeric - analytic) <= tolerance * float(flat.max()), (idx, numeric, analytic)


@pytest.mark.parametrize('selection', [Selection.DSAC, Selection.SOFTAM])
@pytest.mark.parametrize('learned', [False, True], ids=['soft_inliers', 'score_net'])
def test_gradient_matches_central_differences(selection, learned):
    """Small map, distinct hypotheses (random 16-inlier refinement subsets): the selection
    probabilities' share of the gradient."""
    case = _small_case(seed=1)
    config = _config(selection)
    score = TinyScore() if learned else None
    # the refinement's implicit gradient: Gauss-Newton steps (0.3 % here, `_TAPED_STEPS`)
    _check_against_central_differences(case, config, score, h=1e-6, tolerance=0.01)


def _deployed_case():
    """A 320x240 frame (30x40 cells) as deployed: tau = 5 px (the paper's 10 px at 640 px
    width), 25 % outliers and 1 px noise, the default refinement (all inliers, up to 8 re-solves,
    >= 50 inliers) and minimal-set check; 16 hypotheses keep the test fast."""
    cfg = CorrespondenceCaseConfig(height=30, width=40, outlier_fraction=0.25, noise_px=1.0,
                                   focal_px=262.5)
    return make_correspondence_case(cfg, batch=1, seed=5)


@pytest.mark.parametrize('selection', [Selection.DSAC, Selection.SOFTAM])
@pytest.mark.parametrize('learned', [False, True], ids=['soft_inliers', 'score_net'])
def test_gradient_matches_central_differences_at_the_deployed_threshold(selection, learned):
    """d E[loss] / d scene coordinates by autograd (P4P implicit gradient, scores, selection
    probabilities, the refinement's last re-solve) against central differences of the loss as
    computed without autograd (the refinement iterated to convergence)."""
    case = _deployed_case()
    tau = default_inlier_threshold_px(320)
    config = EstimatorConfig(num_hypotheses=16, selection=selection, inlier_threshold_px=tau)
    score = None
    if learned:
        torch.manual_seed(0)
        score = ScoreNet(ScoreNetConfig.for_threshold(tau, config.soft_inlier_beta,
                                                      output_scale=100.0)).double()
        score = score.score_fn
    # h in metres moves a reprojection by ~1e-3 px: no inlier changes side of tau
    _check_against_central_differences(case, config, score, h=1e-5, tolerance=0.01)


def test_score_parameter_gradient_matches_central_differences():
    case = _small_case(seed=2)
    config = _config(Selection.DSAC)
    score = TinyScore()
    loss = _loss(case.scene_coords_b3hw, case, config, score)
    (grad,) = torch.autograd.grad(loss, score.head.weight)
    h = 1e-6
    for k in range(score.head.weight.numel()):
        with torch.no_grad():
            score.head.weight.view(-1)[k] += h
            up = _loss(case.scene_coords_b3hw, case, config, score)
            score.head.weight.view(-1)[k] -= 2 * h
            down = _loss(case.scene_coords_b3hw, case, config, score)
            score.head.weight.view(-1)[k] += h
        numeric = (up - down) / (2 * h)
        assert abs(float(numeric - grad.view(-1)[k])) <= 1e-5 * max(1.0, abs(float(numeric)))


def test_ransac_loss_rejected_and_bad_ground_truth():
    case = _small_case()
    with pytest.raises(ValueError, match='RANSAC'):
        _loss(case.scene_coords_b3hw, case, _config(Selection.RANSAC), None)
    with pytest.raises(ValueError, match='T_cw_gt_b44'):
        expected_pose_loss(case.scene_coords_b3hw, case.K_b33, case.T_cw_b44[:1],
                           _config(Selection.DSAC))


def test_image_without_valid_cells_is_skipped():
    case = _small_case()
    coords = case.scene_coords_b3hw.clone()
    coords[1] = float('nan')
    coords.requires_grad_(True)
    loss = _loss(coords, case, _config(Selection.DSAC), None)
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    assert bool(torch.isfinite(coords.grad).all())
    assert float(coords.grad[1].abs().sum()) == 0.0
    # only image 0 counts: same value as image 0 alone with the same pool
    assert float(coords.grad[0].abs().sum()) > 0


@pytest.mark.parametrize('selection', [Selection.DSAC, Selection.SOFTAM])
def test_sharp_softmax_loss_equals_loss_of_ransac_estimate(selection):
    """With a very large alpha, P(j) is one-hot on the best hypothesis, so both losses equal
    pose_loss of the refined argmax hypothesis, i.e. of the RANSAC estimate (same pool)."""
    cfg = CorrespondenceCaseConfig(height=30, width=40, outlier_fraction=0.5)
    case = make_correspondence_case(cfg, batch=2, seed=3)
    coords = case.scene_coords_b3hw.float()
    K = case.K_b33.float()
    common = dict(num_hypotheses=64, soft_inlier_alpha=1000.0)
    g = torch.Generator().manual_seed(4)
    est = DsacEstimator(EstimatorConfig(selection=Selection.RANSAC, **common)).estimate(
        coords, K, generator=g)
    expected = pose_loss(est.T_cw_b44.double(), case.T_cw_b44).mean()
    g = torch.Generator().manual_seed(4)
    loss = expected_pose_loss(coords, K, case.T_cw_b44.float(),
                              EstimatorConfig(selection=selection, **common), None, g)
    assert abs(float(loss) - float(expected)) < 1e-3 * max(1.0, float(expected)), (
        float(loss), float(expected))
