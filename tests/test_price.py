"Price's theorem (Bibi et al. 2018, Lemma 2) on ReLU products and polynomials; the exported checkers; devices; bad inputs."
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.testing import assert_close

from conftest import DEVICE_PARAMS

from netmoments.gaussian import bvn_cdf, bvn_pdf
from netmoments.price import PriceCheck, PriceMC, check_price, isserlis, price_derivative, price_rhs_mc
from netmoments.relu import relu_cross_moment

f64 = torch.float64
PROFILE = settings(max_examples=60)  # on top of the derandomized profile of conftest.py
DEVICES = DEVICE_PARAMS

means = st.floats(-3, 3, allow_nan=False)
stds = st.floats(0.2, 3, allow_nan=False)
near_one = st.sampled_from([0.99, 0.999, 0.9999, 1 - 1e-5])
rhos = st.one_of(st.floats(-0.98, 0.98).filter(lambda r: r != 0), near_one, near_one.map(lambda r: -r))


def relu_pair(mu, cov):
    "E[relu(x1) relu(x2)] for x ~ N(mu, cov), batched."
    return relu_cross_moment(mu[..., 0], mu[..., 1], cov[..., 0, 0], cov[..., 1, 1], cov[..., 0, 1])


def quartic(mu, cov):
    "E[x1^2 x2^2] for x ~ N(mu, cov), batched (from the moment generating function; checked in sympy in 04_price)."
    m1, m2 = mu[..., 0], mu[..., 1]
    c11, c22, c12, c21 = cov[..., 0, 0], cov[..., 1, 1], cov[..., 0, 1], cov[..., 1, 0]
    return (m1**2 + c11) * (m2**2 + c22) + 2 * c12 * c21 + 2 * m1 * m2 * (c12 + c21)


def pair_cov(var1, var2, cov12):
    "Batched 2x2 covariance from its entries."
    return torch.stack([torch.stack([var1, cov12], -1), torch.stack([cov12, var2], -1)], -2)


def sigma12_derivatives(mu1, mu2, s1, s2, rho):
    "First and second derivatives of the exact E[relu relu] in cov12 by autograd, and their Price references."
    t = lambda x: torch.tensor(x, dtype=f64)
    cov12 = t(rho * s1 * s2).requires_grad_()
    E = relu_cross_moment(t(mu1), t(mu2), t(s1 * s1), t(s2 * s2), cov12)
    d1, = torch.autograd.grad(E, cov12, create_graph=True)
    d2, = torch.autograd.grad(d1, cov12)
    h1, h2 = t(mu1 / s1), t(mu2 / s2)
    return d1.detach(), d2, bvn_cdf(h1, h2, t(rho)), bvn_pdf(h1, h2, t(rho)) / (s1 * s2)


@PROFILE
@given(mu1=means, mu2=means, s1=stds, s2=stds, rho=rhos)
def test_first_sigma12_derivative_is_bvn_cdf(mu1, mu2, s1, s2, rho):
    d1, _, ref1, _ = sigma12_derivatives(mu1, mu2, s1, s2, rho)
    assert_close(d1, ref1, rtol=0, atol=1e-12)


@PROFILE
@given(mu1=means, mu2=means, s1=stds, s2=stds, rho=rhos)
def test_second_sigma12_derivative_is_bvn_pdf(mu1, mu2, s1, s2, rho):
    # float64 round-off of the twice-differentiated closed form grows as |rho| -> 1 (measured in 04_price)
    _, d2, _, ref2 = sigma12_derivatives(mu1, mu2, s1, s2, rho)
    tol = max(1e-12, 1e-15 / (1 - rho * rho) ** 2) * max(1., ref2.abs().item())
    assert_close(d2, ref2, rtol=0, atol=tol)


@pytest.mark.parametrize('mu1, mu2', [(0., 0.), (0.7, -0.4)])
def test_second_sigma12_derivative_at_zero_covariance(mu1, mu2):
    _, d2, _, ref2 = sigma12_derivatives(mu1, mu2, 1., 1., 0.)
    assert_close(d2, ref2, rtol=0, atol=1e-12)


@PROFILE
@given(mu1=means, mu2=means, s1=stds, s2=stds, rho=rhos)
def test_heat_identity_for_relu_products(mu1, mu2, s1, s2, rho):
    "dE/dvar1 = (1/2) d2E/dmu1^2 with cov12 held fixed, and the same for the second unit."
    t = lambda x: torch.tensor(x, dtype=f64, requires_grad=True)
    m1, m2, v1, v2 = t(mu1), t(mu2), t(s1 * s1), t(s2 * s2)
    E = relu_cross_moment(m1, m2, v1, v2, torch.tensor(rho * s1 * s2, dtype=f64))
    dm1, dm2, dv1, dv2 = torch.autograd.grad(E, (m1, m2, v1, v2), create_graph=True)
    dm1m1, = torch.autograd.grad(dm1, m1, retain_graph=True)
    dm2m2, = torch.autograd.grad(dm2, m2)
    tol = 1e-12 * max(1., 1 / (1 - rho * rho))
    assert_close(dv1, dm1m1 / 2, rtol=0, atol=tol)
    assert_close(dv2, dm2m2 / 2, rtol=0, atol=tol)


def test_price_derivative_on_relu_grid_matches_direct_autograd():
    "price_derivative (cov perturbed symmetrically) = autograd in the cov12 argument, batched, first and second order."
    gen = torch.Generator().manual_seed(0)
    mu = torch.rand(64, 2, generator=gen, dtype=f64) * 4 - 2
    s = torch.rand(64, 2, generator=gen, dtype=f64) * 1.5 + 0.3
    rho = torch.rand(64, generator=gen, dtype=f64) * 1.98 - 0.99
    cov = pair_cov(s[:, 0]**2, s[:, 1]**2, rho * s[:, 0] * s[:, 1])
    h1, h2 = mu[:, 0] / s[:, 0], mu[:, 1] / s[:, 1]
    assert_close(price_derivative(relu_pair, mu, cov, [(0, 1)]), bvn_cdf(h1, h2, rho), rtol=0, atol=1e-12)
    assert_close(price_derivative(relu_pair, mu, cov, [(1, 0), (0, 1)]), bvn_pdf(h1, h2, rho) / s.prod(1),
                 rtol=1e-11, atol=1e-12)


@PROFILE
@given(seed=st.integers(0, 2**31 - 1))
def test_price_derivative_on_polynomials(seed):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(3, 4, generator=gen, dtype=f64) * 2
    L = torch.randn(3, 4, 4, generator=gen, dtype=f64)
    cov = L @ L.mT
    assert_close(price_derivative(quartic, mu[:, :2], cov[:, :2, :2], [(0, 1)]),
                 4 * (mu[:, 0] * mu[:, 1] + cov[:, 0, 1]), rtol=1e-13, atol=1e-13)
    assert_close(price_derivative(quartic, mu[:, :2], cov[:, :2, :2], [(0, 1), (1, 0)]), torch.full((3,), 4., dtype=f64))
    assert_close(price_derivative(isserlis, mu, cov, [(0, 1), (2, 3)]), torch.ones(3, dtype=f64))
    assert_close(price_derivative(isserlis, mu, cov, [(3, 2)]), mu[:, 0] * mu[:, 1] + cov[:, 0, 1])
    assert_close(price_derivative(isserlis, mu, cov, [(0, 1), (0, 1)]), torch.zeros(3, dtype=f64))


def test_price_derivative_is_differentiable_in_mu():
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(2, 2, generator=gen, dtype=f64, requires_grad=True)
    cov = torch.tensor([[1.3, 0.4], [0.4, 0.8]], dtype=f64)
    assert torch.autograd.gradcheck(lambda m: price_derivative(relu_pair, m, cov, [(0, 1)]), (mu,))


def test_check_price_accepts_right_and_rejects_wrong_partials():
    gen = torch.Generator().manual_seed(2)
    mu = torch.randn(6, 2, generator=gen, dtype=f64)
    L = torch.randn(6, 2, 2, generator=gen, dtype=f64)
    cov = L @ L.mT
    good = check_price(quartic, lambda x: 4 * x[..., 0] * x[..., 1], mu, cov, [(0, 1)], n=40_000, seed=3)
    assert isinstance(good, PriceCheck) and good.ok.dtype == torch.bool and good.ok.shape == (6,)
    assert good.ok.all(), ((good.lhs - good.rhs) / good.rhs_se)
    assert check_price(quartic, lambda x: torch.full_like(x[..., 0], 4.), mu, cov, [(0, 1), (0, 1)], n=10).ok.all()
    assert not check_price(quartic, lambda x: x[..., 0] * x[..., 1], mu, cov, [(0, 1)], n=40_000).ok.any()


def test_price_rhs_mc_on_relu_steps_within_4_se():
    "E[u(x1) u(x2)] by sampling = Phi2(h1, h2; rho), incl. |rho| near 1 and a singular covariance, batched."
    mu = torch.tensor([[0.3, -0.5], [1., 1.], [-0.4, 0.2], [0.5, 0.5], [0.1, -0.2]], dtype=f64)
    var = torch.tensor([[1., 2.], [0.5, 0.5], [2., 1.], [1., 1.], [1., 4.]], dtype=f64)
    rho = torch.tensor([0.3, -0.9999, 0.9999, 1., -1.], dtype=f64)
    cov = pair_cov(var[:, 0], var[:, 1], rho * var.prod(1).sqrt())
    est = price_rhs_mc(lambda x: (x > 0).all(-1), mu, cov, n=40_000, seed=5)
    assert isinstance(est, PriceMC) and est.n == 40_000 and est.mean.shape == (5,)
    truth = bvn_cdf(mu[:, 0] / var[:, 0].sqrt(), mu[:, 1] / var[:, 1].sqrt(), rho)
    assert ((est.mean - truth).abs() <= 4 * est.mean_se).all(), ((est.mean - truth) / est.mean_se)


def test_price_rhs_mc_batch_of_singular_covariances():
    "A batch as long as the dimension (2 x 2 x 2), one singular: each entry gets its own square root."
    mu = torch.tensor([0.5, -0.5], dtype=f64)
    cov = torch.stack([torch.ones(2, 2, dtype=f64), torch.tensor([[2., 0.5], [0.5, 1.]], dtype=f64)])
    est = price_rhs_mc(lambda x: x[..., 0] * x[..., 1], mu, cov, n=40_000, seed=1)
    truth = mu.prod() + cov[:, 0, 1]
    assert ((est.mean - truth).abs() <= 4 * est.mean_se).all(), ((est.mean - truth) / est.mean_se)


def test_price_rhs_mc_does_not_depend_on_chunk_and_takes_a_generator():
    mu, cov = torch.tensor([0.2, 0.1], dtype=f64), torch.tensor([[1., 0.3], [0.3, 2.]], dtype=f64)
    f = lambda x: 4 * x[..., 0] * x[..., 1]
    assert torch.equal(price_rhs_mc(f, mu, cov, n=2500, chunk=333).mean, price_rhs_mc(f, mu, cov, n=2500).mean)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(price_rhs_mc(f, mu, cov, n=500, generator=g1).mean, price_rhs_mc(f, mu, cov, n=500, generator=g2).mean)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, f64])
def test_devices_and_dtypes(device, dtype):
    mu = torch.tensor([[0.3, -0.5], [1., 0.2]], dtype=dtype, device=device)
    cov = torch.tensor([[1., 0.6], [0.6, 2.]], dtype=dtype, device=device)
    lhs = price_derivative(relu_pair, mu, cov, [(0, 1)])
    assert (lhs.device.type, lhs.dtype, lhs.shape) == (device, dtype, (2,))
    ref = price_derivative(relu_pair, mu.double().cpu(), cov.double().cpu(), [(0, 1)])
    assert_close(lhs.double().cpu(), ref, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)
    res = check_price(relu_pair, lambda x: (x > 0).all(-1), mu, cov, [(0, 1)], n=20_000)
    assert res.rhs.device.type == device and res.rhs.dtype == dtype and res.ok.all()


BAD = [
    (dict(pairs=[(0, 2)]), ValueError, 'pairs must index 0..1 (0-based); got (0, 2)'),
    (dict(pairs=[(-1, 0)]), ValueError, 'pairs must index 0..1'),
    (dict(pairs=[(1, 1)]), ValueError, 'pairs must be off-diagonal (i != j); got (1, 1)'),
    (dict(pairs=[]), ValueError, 'pairs must hold at least one'),
    (dict(pairs=(0, 1)), TypeError, 'pairs must be a sequence of (i, j) index pairs'),
    (dict(pairs=[(0., 1.)]), TypeError, 'pairs must be a sequence of (i, j) index pairs'),
    (dict(cov=torch.tensor([[1., 0.5], [0., 1.]], dtype=f64)), ValueError, 'cov must be symmetric'),
    (dict(cov=torch.tensor([[1., 2.], [2., 1.]], dtype=f64)), ValueError, 'cov must be positive semi-definite'),
    (dict(cov=torch.tensor([[-1., 0.], [0., 1.]], dtype=f64)), ValueError, 'cov must have a non-negative diagonal'),
    (dict(cov=torch.eye(3, dtype=f64)), ValueError, 'cov must have shape (..., 2, 2)'),
    (dict(cov=torch.eye(2, dtype=f64).expand(3, 2, 2)), ValueError, 'shapes do not broadcast: mu batch (2,), cov batch (3,)'),
    (dict(mu=torch.tensor([[0., math.nan], [0., 0.]], dtype=f64)), ValueError, 'mu must be finite'),
    (dict(mu=torch.tensor(0., dtype=f64)), ValueError, 'mu must have shape (..., N)'),
    (dict(cov=torch.eye(2, device='meta')), ValueError, 'all tensors must be on one device'),
]


@pytest.mark.parametrize('change, error, message', BAD)
def test_bad_inputs(change, error, message):
    args = dict(mu=torch.zeros(2, 2, dtype=f64), cov=torch.eye(2, dtype=f64), pairs=[(0, 1)]) | change
    with pytest.raises(error, match=None) as info: price_derivative(quartic, **args)
    assert message in str(info.value)
    if 'pairs' not in change:
        with pytest.raises(error) as info: price_rhs_mc(lambda x: x[..., 0], args['mu'], args['cov'], n=10)
        assert message in str(info.value)


def test_bad_callables():
    mu, cov = torch.zeros(3, 2, dtype=f64), torch.eye(2, dtype=f64)
    with pytest.raises(ValueError, match=r'expectation must return one value per batch entry, shape \(3,\); got \(\)'):
        price_derivative(lambda m, c: quartic(m, c).sum(), mu, cov, [(0, 1)])
    with pytest.raises(ValueError, match=r'mixed_partial must map samples \(10, 3, 2\) to shape \(10, 3\)'):
        price_rhs_mc(lambda x: x, mu, cov, n=10)


# ---------------------------------------------------------------------------------------------------------------------
# The limits: no NaN where Gaussian moments overflow, empty batches, tolerances.

def test_isserlis_overflows_to_the_sign_of_the_dominant_term():
    "Means of 1e300: E[x1 x2 x3 x4] is +-inf with the sign of mu1 mu2 mu3 mu4, not inf - inf = NaN."
    gen = torch.Generator().manual_seed(3)
    mu = torch.randn(6, 4, generator=gen, dtype=f64)
    L = torch.randn(4, 4, generator=gen, dtype=f64)
    out = isserlis(mu * 1e300, L @ L.mT)
    assert torch.equal(out, mu.prod(-1).sign() * math.inf)
    for k in (-250, -100, 100, 250):        # inside the range: the plain sum, scaled exactly by 2^(4k)
        out = isserlis(mu * 2. ** k, L @ L.mT * 4. ** k)
        assert torch.equal(out * 2. ** (-2 * k) * 2. ** (-2 * k), isserlis(mu, L @ L.mT))


def test_isserlis_gradients_are_the_closed_forms():
    "dE/dmu_i = E[x_j x_k x_l] and dE/dsigma_ij = E[x_k x_l] (i < j; the lower triangle is not read), to second order."
    gen = torch.Generator().manual_seed(4)
    mu = torch.randn(3, 4, generator=gen, dtype=f64, requires_grad=True)
    L = torch.randn(4, 4, generator=gen, dtype=f64)
    cov = (L @ L.mT).requires_grad_()
    assert torch.autograd.gradcheck(isserlis, (mu, cov))
    assert torch.autograd.gradgradcheck(isserlis, (mu, cov))
    d = price_derivative(isserlis, mu.detach() * 1e300, cov.detach(), [(0, 1)])   # mu3 mu4 + sigma34 overflows alone
    assert torch.equal(d, (mu[:, 2] * mu[:, 3]).detach().sign() * math.inf)


def test_isserlis_refuses_bad_inputs_by_name():
    mu, cov = torch.zeros(4, dtype=f64), torch.eye(4, dtype=f64)
    for args, error, message in (((mu[:3], cov), ValueError, 'mu must have shape (..., 4)'),
                                 ((mu, cov[:3]), ValueError, 'cov must have shape (..., 4, 4)'),
                                 ((mu * math.nan, cov), ValueError, 'mu must be finite'),
                                 ((mu, cov * math.inf), ValueError, 'cov must be finite'),
                                 ((mu.float(), cov), TypeError, 'found mu float32, cov float64'),
                                 ((mu.expand(2, 4), cov.expand(3, 4, 4)), ValueError, 'shapes do not broadcast')):
        with pytest.raises(error) as info: isserlis(*args)
        assert message in str(info.value)


def test_relu_pair_derivative_at_huge_means():
    "dE[relu relu]/dsigma12 = P(both on) (Price) stays right where E itself overflows or underflows to 0."
    mu = torch.tensor([[-1e300, 2e299], [2e300, 8e299], [1e300, -4e299], [3e300, 0.5]], dtype=f64)
    cov = torch.tensor([[1., 0.3], [0.3, 2.]], dtype=f64)
    d = price_derivative(relu_pair, mu, cov, [(0, 1)])
    assert_close(d, torch.tensor([0., 1., 0., 0.5 * math.erfc(-0.5 / 2**.5 / 2**.5)], dtype=f64), rtol=1e-14, atol=0)


def test_empty_batches_and_tolerances():
    "An empty batch gives empty results without sampling; se and atol must be finite numbers >= 0."
    mu, cov = torch.zeros(0, 2, dtype=f64), torch.eye(2, dtype=f64)
    est = price_rhs_mc(lambda x: x[..., 0] * x[..., 1], mu, cov, n=10)
    assert est.mean.shape == est.mean_se.shape == (0,) and est.n == 10
    res = check_price(relu_pair, lambda x: (x > 0).all(-1), mu, cov, [(0, 1)], n=10)
    assert res.lhs.shape == res.ok.shape == (0,)
    with pytest.raises(ValueError, match='n must be >= 2'): price_rhs_mc(lambda x: x[..., 0], mu, cov, n=1)
    good = dict(expectation=relu_pair, mixed_partial=lambda x: (x > 0).all(-1), mu=torch.zeros(2, dtype=f64), cov=cov,
                pairs=[(0, 1)], n=10)
    for change, error, message in ((dict(se=math.nan), ValueError, 'se must be finite and >= 0'),
                                   (dict(se=-1.), ValueError, 'se must be finite and >= 0'),
                                   (dict(atol=math.inf), ValueError, 'atol must be finite and >= 0'),
                                   (dict(atol='0'), TypeError, 'atol must be a number'),
                                   (dict(se=True), TypeError, 'se must be a number')):
        with pytest.raises(error, match=message): check_price(**(good | change))
    with pytest.raises(ValueError, match=r'mixed_partial\(x\) must be finite'):
        price_rhs_mc(lambda x: x[..., 0] / 0., torch.zeros(2, dtype=f64), cov, n=10)
