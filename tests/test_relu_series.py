"Properties of `netmoments.relu.relu_cross_moment_series` (Alfadly et al. 2020, Lemma 4): values, convergence, dtypes, gradients, errors."
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import stats
from torch.testing import assert_close

from conftest import DEVICE_PARAMS

from netmoments.relu import relu_cross_moment_series

f64 = torch.float64
PROFILE = settings(max_examples=40)  # on top of the derandomized profile of conftest.py
DEVICES = DEVICE_PARAMS
DISJUNCTION = 1 / math.sqrt(2)


def exact(mu1, mu2, s1, s2, rho):
    "Float64 reference: the closed form with Phi2 from scipy's bivariate normal CDF (Genz, ~1e-16 absolute)."
    h1, h2 = mu1 / s1, mu2 / s2
    r = math.sqrt(1 - rho * rho)
    Phi2 = stats.multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]]).cdf([h1, h2])
    phi2 = math.exp(-(h1 * h1 - 2 * rho * h1 * h2 + h2 * h2) / (2 * r * r)) / (2 * math.pi * r)
    return ((mu1 * mu2 + rho * s1 * s2) * Phi2 + mu1 * s2 * stats.norm.pdf(h2) * stats.norm.cdf((h1 - rho * h2) / r)
            + mu2 * s1 * stats.norm.pdf(h1) * stats.norm.cdf((h2 - rho * h1) / r) + s1 * s2 * r * r * phi2)


def series(mu1, mu2, s1, s2, rho, terms, dtype=f64, device='cpu'):
    "relu_cross_moment_series at one point given by standard deviations and correlation, as a python float."
    t = lambda v: torch.tensor(v, dtype=dtype, device=device)
    return relu_cross_moment_series(t(mu1), t(mu2), t(s1 * s1), t(s2 * s2), t(rho * s1 * s2), terms=terms).item()


means = st.floats(-3, 3)
stds = st.floats(0.2, 3)
rho_direct = st.floats(-0.6, 0.6)                                                     # |a| <= 0.75
rho_by_parts = st.one_of(st.floats(0.8, 0.999), st.floats(-0.999, -0.8))             # 1/|a| <= 0.75


@PROFILE
@given(mu1=means, mu2=means, s1=stds, s2=stds, rho=st.one_of(rho_direct, rho_by_parts))
def test_fifty_terms_match_the_exact_moment_away_from_the_disjunction(mu1, mu2, s1, s2, rho):
    got, ref = series(mu1, mu2, s1, s2, rho, 50), exact(mu1, mu2, s1, s2, rho)
    assert abs(got - ref) <= 1e-13 * (1 + s1 * s2), (got, ref)


@PROFILE
@given(mu1=means, mu2=means, s1=stds, s2=stds, rho=st.floats(-0.5, 0.5))
def test_twenty_terms_beat_fewer(mu1, mu2, s1, s2, rho):
    "Point by point the error need not fall at every step (partial sums can swing), but 20 terms beat 1, 5 and 10."
    ref = exact(mu1, mu2, s1, s2, rho)
    errors = [abs(series(mu1, mu2, s1, s2, rho, n) - ref) for n in (1, 5, 10, 20)]
    floor = 1e-14 * (1 + s1 * s2 + abs(mu1 * mu2))   # rounding: once there, more terms cannot help
    assert all(errors[-1] <= max(e, floor) for e in errors[:-1]), errors


@PROFILE
@given(seed=st.integers(0, 2**31 - 1))
def test_worst_error_over_a_batch_falls_with_terms(seed):
    "As in Alfadly et al. 2020, Fig. 2: the worst error over many (mu, s, rho), |rho| <= 0.5, falls strictly from 1 to 5 to 10 to 20 terms."
    gen = np.random.default_rng(seed)
    rows = np.column_stack([gen.uniform(-3, 3, (30, 2)), gen.uniform(0.2, 3, (30, 2)), gen.uniform(-0.5, 0.5, 30)])
    p = torch.tensor(rows, dtype=f64)
    args = (p[:, 0], p[:, 1], p[:, 2]**2, p[:, 3]**2, p[:, 4] * p[:, 2] * p[:, 3])
    ref = torch.tensor([exact(*row) for row in rows.tolist()], dtype=f64)
    worst = [(relu_cross_moment_series(*args, terms=n) - ref).abs().max().item() for n in (1, 5, 10, 20)]
    assert all(later < earlier or later < 1e-13 for earlier, later in zip(worst, worst[1:])), worst


def test_paper_grid_errors_at_the_disjunction_and_near_it():
    "Worst errors at 20 terms on a coarse version of the grid of Alfadly et al. 2020, Fig. 2: ~5.7e-3 at rho = 0.7, ~1.3e-2 at 1/sqrt2."
    grid = [(m1, m2, s1, s2) for m1 in (-2., -1.6, 1.6, 2.) for m2 in (-2., 2.) for s1 in (0.2, 2.) for s2 in (0.2, 2.)]
    for rho, low, high in [(0.7, 4e-3, 7e-3), (-0.7, 4e-3, 7e-3), (DISJUNCTION, 1e-2, 1.5e-2), (0.5, 0, 1e-11)]:
        worst = max(abs(series(*p, rho, 20) - exact(*p, rho)) for p in grid)
        assert low <= worst <= high, (rho, worst)


@PROFILE
@given(mu1=means, mu2=means, s1=stds, s2=stds, rho=st.one_of(rho_direct, rho_by_parts))
def test_swapping_the_pair_changes_nothing_beyond_truncation(mu1, mu2, s1, s2, rho):
    a, b = series(mu1, mu2, s1, s2, rho, 50), series(mu2, mu1, s2, s1, rho, 50)
    assert abs(a - b) <= 1e-13 * (1 + s1 * s2)


@pytest.mark.parametrize('rho', [-0.6, 0., 0.3, 0.9, -0.999])
def test_zero_mean_gives_lemma3(rho):
    s1, s2 = 0.7, 1.9
    lemma3 = s1 * s2 * (rho * math.asin(rho) + math.sqrt(1 - rho * rho)) / (2 * math.pi) + rho * s1 * s2 / 4
    assert abs(series(0., 0., s1, s2, rho, 50) - lemma3) < 1e-13


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_dtype_device_and_broadcast_are_kept(dtype, device):
    mu1 = torch.linspace(-2, 2, 4, dtype=dtype, device=device)[:, None]
    mu2 = torch.linspace(-1, 1, 3, dtype=dtype, device=device)
    out = relu_cross_moment_series(mu1, mu2, 1.5, torch.tensor(0.5, dtype=dtype, device=device), 0.3, terms=20)
    assert (out.shape, out.dtype, out.device.type) == ((4, 3), dtype, device)
    ref = torch.tensor([[exact(a, b, math.sqrt(1.5), math.sqrt(0.5), 0.3 / math.sqrt(0.75)) for b in mu2.tolist()]
                        for a in mu1[:, 0].tolist()], dtype=f64)
    tol = 1e-12 if dtype == f64 else 2e-6
    assert_close(out.cpu().double(), ref, rtol=0, atol=tol)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_large_offsets_stay_finite(dtype):
    "b = mu1 / (sqrt2 s1 sqrt(1 - rho^2)) up to ~30: e^{-b^2} underflows alone, the rescaled recurrence does not."
    mu1, s1 = torch.tensor([8., -8., 3., 6.], dtype=dtype), torch.tensor([0.2, 0.2, 0.1, 0.3], dtype=dtype)
    out = relu_cross_moment_series(mu1, 1., s1**2, 1., 0.5 * s1, terms=50)    # rho = 0.5
    assert torch.isfinite(out).all()
    ref = torch.tensor([exact(m, 1., s, 1., 0.5) for m, s in zip(mu1.tolist(), s1.tolist())], dtype=f64)
    assert_close(out.double(), ref, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)


def _leaves(rows):
    "Float64 leaf tensors (mu1, mu2, var1, var2, cov12) from rows of (mu1, mu2, s1, s2, rho)."
    p = torch.tensor(rows, dtype=f64)
    return [x.clone().requires_grad_() for x in (p[:, 0], p[:, 1], p[:, 2]**2, p[:, 3]**2, p[:, 4] * p[:, 2] * p[:, 3])]


def test_gradcheck_in_both_cases_of_eq1():
    leaves = _leaves([(0.3, -0.5, 1.1, 0.8, 0.4), (-1.2, 0.7, 0.5, 1.6, -0.55), (0.8, 1.4, 1.3, 0.6, 0.85),
                      (-0.4, -1.1, 0.9, 1.2, -0.95), (1.0, 0.2, 0.7, 2.0, 0.999)])
    assert torch.autograd.gradcheck(lambda *a: relu_cross_moment_series(*a, terms=20), leaves, eps=1e-6, atol=1e-8)


def test_gradcheck_at_zero_correlation_and_zero_mean():
    "rho = 0 and mu2 = 0 (kappa = 0) exactly: no NaN from the incomplete gamma, no lost d/dcov12."
    leaves = _leaves([(0.4, -0.3, 1.0, 1.4, 0.), (1.5, 0., 0.6, 1.1, 0.), (0., 0., 1.0, 1.0, 0.3)])
    assert torch.autograd.gradcheck(lambda *a: relu_cross_moment_series(*a, terms=10), leaves, eps=1e-6, atol=1e-8)


def test_gradcheck_where_the_terms_are_rescaled_down():
    """h1 = -3.2: the Hermite terms fall below 1/2 and are rescaled by negative powers of two, where torch.ldexp's
    gradient is 0 (the gradient in mu1 came out up to 3x off before)."""
    leaves = _leaves([(-3.2, -0.5, 1., 1., 0.6), (-3.2, -0.5, 1., 1., 0.75), (-3.2, 0.5, 1., 1., 0.6),
                      (-2.5, 1.0, 0.8, 1.3, -0.3)])
    for terms in (5, 20):
        assert torch.autograd.gradcheck(lambda *a: relu_cross_moment_series(*a, terms=terms), leaves, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize('scale', [60., 1e6, 1e150, 1e300])
def test_means_beyond_h_50_give_the_exact_moment(scale):
    "|h| > 50: the exact closed form (the series' terms overflow for such means): finite, equal to relu_cross_moment."
    from netmoments.relu import relu_cross_moment
    mu1 = torch.tensor([-scale, scale, 0.3], dtype=f64)
    args = (mu1, torch.tensor(0.7, dtype=f64), torch.tensor(1., dtype=f64), torch.tensor(2., dtype=f64), torch.tensor(0.5, dtype=f64))
    out = relu_cross_moment_series(*args)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:2], relu_cross_moment(*args)[:2])


def test_price_theorem_holds_for_the_series():
    "dE/dcov12 = Phi2(h1, h2; rho) (Price's theorem), here through autograd of the 50-term series."
    mu1, mu2, s1, s2, rho = 0.6, -0.4, 1.3, 0.9, 0.35
    leaves = _leaves([(mu1, mu2, s1, s2, rho)])
    relu_cross_moment_series(*leaves, terms=50).sum().backward()
    Phi2 = stats.multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]]).cdf([mu1 / s1, mu2 / s2])
    assert abs(leaves[4].grad.item() - Phi2) < 1e-12


@pytest.mark.parametrize('args, kwargs, error, message', [
    ((0., 0., 0., 1., 0.), {}, ValueError, 'var1 must be > 0 for Lemma 4'),
    ((0., 0., 1., 0., 0.), {}, ValueError, 'var2 must be > 0 for Lemma 4'),
    ((0., 0., 1., 4., -2.), {}, ValueError, 'Lemma 4 needs |rho| < 1'),
    ((0., 0., 1., 1., 1.5), {}, ValueError, 'cov12^2 must be <= var1 * var2'),
    ((0., 0., -1., 1., 0.), {}, ValueError, 'var1 must be >= 0'),
    ((float('nan'), 0., 1., 1., 0.), {}, ValueError, 'mu1 must be finite'),
    ((0., 0., 1., 1., float('inf')), {}, ValueError, 'cov12 must be finite'),
    ((0., 0., 1., 1., 0.), {'terms': 0}, ValueError, 'terms must be >= 1'),
    ((0., 0., 1., 1., 0.), {'terms': 2.5}, TypeError, 'terms must be an int'),
])
def test_errors_name_the_argument(args, kwargs, error, message):
    with pytest.raises(error) as info:
        relu_cross_moment_series(*args, **kwargs)
    assert message in str(info.value)


def test_shapes_that_do_not_broadcast_are_refused():
    with pytest.raises(ValueError, match='shapes do not broadcast'):
        relu_cross_moment_series(torch.ones(2), torch.ones(3), 1., 1., 0.)


def test_inputs_are_not_modified():
    args = [torch.tensor([0.5, -0.2], dtype=f64), torch.tensor([1.0, 0.3], dtype=f64), torch.tensor([1.2, 0.4], dtype=f64),
            torch.tensor([0.8, 2.0], dtype=f64), torch.tensor([0.3, -0.5], dtype=f64)]
    copies = [a.clone() for a in args]
    relu_cross_moment_series(*args, terms=5)
    assert all(torch.equal(a, c) for a, c in zip(args, copies))
