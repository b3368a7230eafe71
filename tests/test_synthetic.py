"Tests of netmoments.synthetic: the noise regimes of Bibi et al. 2018, §4.1, the slope fit and analytic-vs-MC on exact networks."
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import DEVICE_PARAMS
from netmoments.models import synthetic
from netmoments.synthetic import REGIMES, analytic_vs_mc, fit_slope, regime_covariances


@pytest.mark.parametrize('regime', list(REGIMES))
def test_regime_covariances(regime):
    covs = regime_covariances(30, regime, 4, torch.Generator().manual_seed(0))
    assert covs.shape == (4, 30, 30)
    torch.testing.assert_close(covs.diagonal(dim1=-2, dim2=-1).amax(-1), torch.full((4,), REGIMES[regime], dtype=torch.float64))
    assert (torch.linalg.eigvalsh(covs) > 0).all()
    torch.testing.assert_close(regime_covariances(30, regime, 4, torch.Generator().manual_seed(0)), covs, rtol=0, atol=0)


@pytest.mark.parametrize('bad', ['huge', 0., -1.])
def test_regime_errors(bad):
    with pytest.raises(ValueError, match='regime must be one of'): regime_covariances(3, bad)


@settings(max_examples=30)
@given(st.integers(2, 50), st.floats(-5, 5), st.integers(0, 2**31))
def test_fit_slope_matches_lstsq(k, b, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(k, generator=gen, dtype=torch.float64) + 0.1
    y = b * x + 0.1 * torch.randn(k, generator=gen, dtype=torch.float64)
    fit = fit_slope(x, y)
    ref = np.linalg.lstsq(x.numpy()[:, None], y.numpy(), rcond=None)[0][0]
    assert abs(fit.slope - ref) <= 1e-10 * max(1, abs(ref))
    assert fit.se >= 0


def test_fit_slope_errors():
    with pytest.raises(ValueError, match='all zero'): fit_slope(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match='same number'): fit_slope(torch.ones(3), torch.ones(2))


@pytest.mark.parametrize('name,shape', [('FC-A', (100,)), ('Conv-A', (1, 20, 20))])
def test_exact_networks_within_4se(name, shape):
    "FC-A and Conv-A are Affine-ReLU-Affine: with l = 1 the analytic variance is exact, so MC agrees within 4 SE."
    n = int(np.prod(shape))
    covs = regime_covariances(n, 'medium', 2, torch.Generator().manual_seed(3))
    r = analytic_vs_mc(synthetic(name, 1), shape, covs, 1, n_mc=20_000, seed=5)
    assert ((r.var - r.mc_var).abs() <= 4 * r.mc_var_se).all(), r
