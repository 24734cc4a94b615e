"""Minimal-set sampling of the DSAC estimator: distinct valid cells, seeding, uniformity."""

from dataclasses import FrozenInstanceError

import pytest
import torch

from dsac_ros.dsac.config import EstimatorConfig, Selection
from dsac_ros.dsac.sampling import sample_minimal_sets


def _generator(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_sets_are_distinct_and_valid():
    valid = torch.rand(3, 500, generator=_generator(1)) < 0.3
    valid[2] = False
    valid[2, [7, 70, 170, 400, 499]] = True  # only 5 valid cells: repeats would be likely
    cells, enough = sample_minimal_sets(valid, 2000, _generator(2))
    assert cells.shape == (3, 2000, 4)
    assert enough.tolist() == [True, True, True]
    assert bool(torch.gather(valid, 1, cells.reshape(3, -1)).all()), 'sampled an invalid cell'
    sorted_cells = cells.sort(dim=-1).values
    assert bool((sorted_cells[..., 1:] != sorted_cells[..., :-1]).all()), 'repeated cell in a set'


def test_too_few_valid_cells_flagged():
    valid = torch.zeros(2, 100, dtype=torch.bool)
    valid[0, :3] = True  # 3 < 4
    cells, enough = sample_minimal_sets(valid, 8, _generator(0))
    assert enough.tolist() == [False, False]
    assert cells.shape == (2, 8, 4)
    assert int(cells.min()) >= 0 and int(cells.max()) < 100


def test_uniform_over_valid_cells():
    valid = torch.zeros(1, 60, dtype=torch.bool)
    valid[0, ::3] = True  # 20 valid cells
    cells, _ = sample_minimal_sets(valid, 20000, _generator(3))
    counts = torch.bincount(cells.reshape(-1), minlength=60).double()
    assert float(counts[~valid[0]].sum()) == 0.0
    expected = 20000 * 4 / 20
    # binomial std ~ sqrt(4000) = 63: 5 sigma band
    assert float((counts[valid[0]] - expected).abs().max()) < 320
    # every pair position unbiased: first member also uniform
    first = torch.bincount(cells[0, :, 0], minlength=60).double()[valid[0]]
    assert float((first - 1000).abs().max()) < 160


def test_same_seed_same_sets_different_seed_differs():
    valid = torch.ones(2, 300, dtype=torch.bool)
    a, _ = sample_minimal_sets(valid, 64, _generator(5))
    b, _ = sample_minimal_sets(valid, 64, _generator(5))
    c, _ = sample_minimal_sets(valid, 64, _generator(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_bad_valid_shape():
    with pytest.raises(ValueError, match='valid_bm'):
        sample_minimal_sets(torch.ones(10, dtype=torch.bool), 4, None)


def test_config_validation():
    assert EstimatorConfig(selection='dsac').selection is Selection.DSAC
    with pytest.raises(ValueError, match='selection'):
        EstimatorConfig(selection='best')
    with pytest.raises(ValueError, match='num_hypotheses'):
        EstimatorConfig(num_hypotheses=0)
    with pytest.raises(ValueError, match='inlier_threshold_px'):
        EstimatorConfig(inlier_threshold_px=0.0)
    with pytest.raises(ValueError, match='max_reprojection_error_px'):
        EstimatorConfig(inlier_threshold_px=10.0, max_reprojection_error_px=5.0)
    with pytest.raises(FrozenInstanceError):
        EstimatorConfig().num_hypotheses = 3  # frozen
