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


def test_regime_and_counts_are_checked():
    for bad in (float('inf'), float('nan'), True, [1.]):
        with pytest.raises(ValueError, match='regime must be one of'): regime_covariances(3, bad)
    with pytest.raises(ValueError, match='n must be >= 1'): regime_covariances(0, 'low')
    with pytest.raises(TypeError, match='count must be an int'): regime_covariances(3, 'low', 2.5)
    assert regime_covariances(3, 'low', 0).shape == (0, 3, 3)
    with pytest.raises(TypeError, match='generator must be a torch.Generator'): regime_covariances(3, 'low', 1, 7)


@settings(max_examples=20)
@given(st.sampled_from([-1000, -500, 500, 1000]), st.sampled_from([-1000, 0, 1000]), st.integers(0, 2**31))
def test_fit_slope_is_scale_free(px, py, seed):
    "Sums in units of powers of two near max |x| and max |y|: scaled data give the exactly scaled slope and error."
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(20, generator=gen, dtype=torch.float64) + 0.1
    y = 0.7 * x + 0.1 * torch.randn(20, generator=gen, dtype=torch.float64)
    ref, got = fit_slope(x, y), fit_slope(x * 2.**px, y * 2.**py)
    ratio = 2.**(py - px) if abs(py - px) < 1000 else None          # 2^2000 is beyond float64
    if ratio is not None: assert got.slope == ref.slope * ratio and got.se == ref.se * ratio
    assert np.isfinite(got.slope) or abs(py - px) >= 1000


def test_fit_slope_refuses_mixed_and_non_finite_values():
    with pytest.raises(TypeError, match='found x float32, y float64'): fit_slope(torch.ones(3), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match='x must be finite'): fit_slope(torch.tensor([1., float('nan')]), torch.ones(2))
    with pytest.raises(ValueError, match='y must be finite'): fit_slope(torch.ones(2), torch.tensor([1., float('inf')]))
    assert fit_slope([1., 2.], [2., 4.]).slope == 2.                 # lists are read as float64


def test_analytic_vs_mc_leaves_the_network_alone_and_checks_covs():
    net = synthetic('FC-A', 1).train()
    weight = net[0].weight.clone()
    covs = regime_covariances(100, 'low', 2, torch.Generator().manual_seed(0))
    r = analytic_vs_mc(net, (100,), covs, 1, n_mc=100)
    assert net.training and net[0].weight.dtype == torch.float32 and torch.equal(net[0].weight, weight)
    assert r.var.dtype == torch.float64 and r.var.shape == (2,)
    assert all(t.shape == (0,) for t in analytic_vs_mc(net, (100,), covs[:0], 1))
    with pytest.raises(ValueError, match=r'covs must have shape \(count, 100, 100\)'): analytic_vs_mc(net, (100,), covs[0], 1)
    with pytest.raises(ValueError, match='covs must be finite'): analytic_vs_mc(net, (100,), covs * float('nan'), 1)
    with pytest.raises(ValueError, match='covs must be symmetric'):
        analytic_vs_mc(net, (100,), covs + torch.triu(torch.ones(100, 100, dtype=torch.float64), 1), 1)
    with pytest.raises(ValueError, match='input_shape must be'): analytic_vs_mc(net, 100, covs, 1)
    with pytest.raises(TypeError, match='layer must be an int'): analytic_vs_mc(net, (100,), covs, 1.5)
    with pytest.raises(TypeError, match='net must be a torch.nn.Module'): analytic_vs_mc(lambda v: v, (100,), covs, 1)
