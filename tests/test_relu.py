"Properties of `netmoments.relu`: moments of relu(z) against mpmath, limits, gradients, hypothesis properties, layers."
import math

import mpmath as mp
import pytest
import torch
from hypothesis import assume, given, strategies as st
from torch.testing import assert_close

from netmoments.gaussian import bvn_cdf
from netmoments.montecarlo import mc_moments
from netmoments.relu import (ReluMoments, _relu_cross_moment_mp, relu_cross_moment, relu_cross_moment_zero_mean,
                             relu_mean, relu_moments, relu_second_moment, relu_var)

f64, f32 = torch.float64, torch.float32
EPS64 = torch.finfo(f64).eps
ACC = 1e-12   # the accuracy claim of relu_cross_moment, relative to s1 s2 (paper range) or to sqrt(Q1 Q2) (everywhere)
SQRT_HALF = 2 ** -0.5


def t64(*xs): return [torch.as_tensor(x, dtype=f64) for x in xs]


def pair_args(rows):
    "(mu1, mu2, var1, var2, cov12) float64 tensors from rows (mu1, mu2, s1, s2, rho)."
    p = torch.as_tensor(rows, dtype=f64).reshape(-1, 5)
    return p[:, 0], p[:, 1], p[:, 2] ** 2, p[:, 3] ** 2, p[:, 4] * p[:, 2] * p[:, 3]


def scale_q(mu1, mu2, var1, var2):
    "sqrt((mu1^2 + s1^2)(mu2^2 + s2^2)) >= sqrt(E[relu(z1)^2] E[relu(z2)^2]) >= E[relu(z1) relu(z2)] (Cauchy-Schwarz)."
    return ((mu1 * mu1 + var1) * (mu2 * mu2 + var2)).sqrt()


def reference(args):
    "The 20-digit mpmath quadrature of Alfadly et al. 2020, eq 4 (shares no code with the closed form), one pair at a time."
    return torch.tensor([float(_relu_cross_moment_mp(*a, dps=20)) for a in zip(*(x.tolist() for x in args))], dtype=f64)


# ---------------------------------------------------------------------------------------------------------------------
# relu_cross_moment against mpmath (~80 ms a pair on this box: ~300 pairs).

PAPER_RHOS = [-0.999, -0.9, -SQRT_HALF, -0.5, -0.2, 0., 0.3, 0.6, SQRT_HALF, 0.95, 0.999]


def paper_rows():
    "The paper's range (Alfadly et al. 2020, Fig. 2): seeded random (mu, s) and rho, and its corners, at +-1/sqrt2 and +-0.999."
    gen = torch.Generator().manual_seed(2023)
    n = 200
    mu = torch.rand(n, 2, generator=gen, dtype=f64) * 4 - 2
    s = torch.rand(n, 2, generator=gen, dtype=f64) * 1.8 + 0.2
    listed = torch.tensor(PAPER_RHOS, dtype=f64)[torch.randint(len(PAPER_RHOS), (n,), generator=gen)]
    uniform = torch.rand(n, generator=gen, dtype=f64) * 1.998 - 0.999
    rho = torch.where(torch.arange(n) % 2 == 0, listed, uniform)
    rows = torch.cat([mu, s, rho[:, None]], 1).tolist()
    rows += [(m1, m2, s1, s2, r) for m1 in (-2., 2.) for m2 in (-2., 2.) for s1 in (0.2, 2.) for s2 in (0.2, 2.)
             for r in (-0.999, -SQRT_HALF, SQRT_HALF, 0.999) if (m1, s1) <= (m2, s2)]   # the rest by symmetry
    return rows


EXTREME_ROWS = [  # mu1, mu2, s1, s2, rho
    (30., -30., 1., 1., 0.5), (30., 29., 1., 1., 0.999), (-30., -30., 1., 1., 0.9), (-30., 30., 1., 1., -0.9),
    (30., 30., 1., 1., -0.999), (60., 3., 2., 0.1, -0.6), (3., -60., 0.1, 2., 0.6), (29., -1., 1., 0.5, -SQRT_HALF),
    (1e-6, 2e-6, 1e-6, 1e-6, 0.3), (-1e-6, 2e-6, 1e-6, 1e-6, -0.8), (0.5, -0.2, 1e-6, 1., 0.7),
    (-0.5, 1.2, 1e-6, 1., -0.7), (2., 1., 1e-6, 1e-6, 0.99), (1e-6, 3., 1e-6, 1., 1.), (20., 0.5, 1., 1e-6, -0.3),
    (0.3, 0.3, 1., 1., 1.), (0.3, -0.1, 1., 2., -1.), (-0.3, -0.1, 1., 2., 1.), (0.5, 0.5, 1., 2., -1.),   # |rho| = 1:
    (1.5, -0.4, 2., 0.5, 1.), (0., 0., 1., 1., 1.), (0., 0., 1., 1., -1.), (-2., 2., 0.5, 0.5, -1.),      # s1 s2 exact
    (0.4, 1.2, 0., 1., 0.), (-0.4, 1.2, 0., 0., 0.), (0.4, -1.2, 1., 0., 0.), (0.4, 1.2, 0., 0., 0.), (0., 0., 0., 0., 0.),
    (2., 1., 1.5, 0.5, 0.99999999), (2., 1., 1.5, 0.5, -0.99999999), (-1., 2., 0.5, 1.5, 1 - 1e-12)]


@pytest.fixture(scope='module')
def paper():
    args = pair_args(paper_rows())
    return args, reference(args)


@pytest.fixture(scope='module')
def extreme():
    args = pair_args(EXTREME_ROWS)
    return args, reference(args)


def test_paper_range_against_mpmath(paper):
    args, ref = paper
    assert len(ref) == 240
    ours = relu_cross_moment(*args)
    err = (ours - ref).abs() / (args[2] * args[3]).sqrt()
    assert torch.isfinite(ours).all()
    assert err.max() <= ACC, f'max |error| / (s1 s2) = {err.max():.2e} at {[float(a[err.argmax()]) for a in args]}'
    swapped = relu_cross_moment(args[1], args[0], args[3], args[2], args[4])    # corners were only listed one way round
    assert ((swapped - ref).abs() / (args[2] * args[3]).sqrt()).max() <= ACC


def test_extremes_against_mpmath(extreme):
    """|mu / s| up to 60, s down to 1e-6, |rho| = 1 exactly, zero variances. Here the error is normalized by
    sqrt((mu1^2 + s1^2)(mu2^2 + s2^2)), the Cauchy-Schwarz bound on the value, not by s1 s2: as s -> 0 one ulp of the
    result exceeds 1e-12 s1 s2 (s1 = 1e-6 and E ~ 0.15: one ulp is 3e-17 = 3e-11 s1 s2), and s1 s2 = 0 at var = 0."""
    args, ref = extreme
    ours = relu_cross_moment(*args)
    assert torch.isfinite(ours).all()
    err = (ours - ref).abs()
    bad = err > ACC * scale_q(*args[:4])            # no division: the all-zero row needs exactly 0
    assert not bad.any(), [(EXTREME_ROWS[i], ours[i].item(), ref[i].item()) for i in torch.nonzero(bad)[:, 0].tolist()]


def test_float32_follows_float64(paper):
    args, ref = paper
    out = relu_cross_moment(*(a.float() for a in args))
    assert out.dtype == f32 and torch.isfinite(out).all()
    # float32 inputs are themselves rounded (relative 6e-8): the result moves by ~|grad| * that, a few 1e-7 * scale
    assert ((out.double() - ref).abs() <= 1e-5 * scale_q(*args[:4])).all()


def test_no_nan_or_inf_anywhere():
    "A dense sweep, including means 1e3 times the spread, tiny variances, rho = +-1 and rho one ulp inside."
    mus = torch.tensor([-1e3, -30., -2., -1e-7, 0., 1e-7, 0.5, 3., 1e3], dtype=f64)
    ss = torch.tensor([0., 1e-60, 1e-8, 0.2, 1., 1e3], dtype=f64)
    rhos = torch.tensor([-1., math.nextafter(-1., 0.), -SQRT_HALF, 0., 0.4, math.nextafter(1., 0.), 1.], dtype=f64)
    M1, M2, S1, S2, R = torch.meshgrid(mus, mus, ss, ss, rhos, indexing='ij')
    for dtype in (f64, f32):
        out = relu_cross_moment(*(x.to(dtype) for x in (M1, M2, S1 ** 2, S2 ** 2, R * S1 * S2)))
        assert torch.isfinite(out).all() and (out >= 0).all()


# ---------------------------------------------------------------------------------------------------------------------
# Gradients.

def test_gradcheck_interior():
    rows = [(0.3, -0.5, 1.1, 0.8, 0.4), (-1.2, 0.7, 0.5, 1.6, -0.55), (0.8, 1.4, 1.3, 0.6, 0.85),
            (-0.4, -1.1, 0.9, 1.2, -0.95), (1.0, 0.2, 0.7, 2.0, 0.), (0., 0., 1., 1.3, SQRT_HALF), (0.4, 0., 0.6, 0.9, -0.3)]
    leaves = [x.clone().requires_grad_() for x in pair_args(rows)]
    assert torch.autograd.gradcheck(relu_cross_moment, leaves, eps=1e-6, atol=1e-8)


def test_gradgradcheck_interior_including_rho_zero():
    "Second derivatives (Price's theorem differentiates twice), at rho = 0 exactly too: d^2 sqrt(1 - rho^2) = -1 there."
    rows = [(0.3, -0.5, 1.1, 0.8, 0.), (0., 0., 1., 1.3, 0.), (-1.2, 0.7, 0.5, 1.6, -0.55), (0.8, 1.4, 1.3, 0.6, 0.85),
            (0.4, 0., 0.6, 0.9, 0.3)]
    leaves = [x.clone().requires_grad_() for x in pair_args(rows)]
    assert torch.autograd.gradgradcheck(relu_cross_moment, leaves, eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(relu_cross_moment_zero_mean, leaves[2:], eps=1e-6, atol=1e-7)


def test_price_theorem():
    "dE/dcov12 = Phi2(h1, h2; rho) (Price), and dE/dmu1 = E[1(z1 > 0) relu(z2)] <= E[relu(z2)]."
    rows = [(0.3, -0.5, 1.1, 0.8, 0.4), (-1.2, 0.7, 0.5, 1.6, -0.55), (0.8, 1.4, 1.3, 0.6, 0.97), (0.2, 0.1, 1., 2., 0.)]
    leaves = [x.clone().requires_grad_() for x in pair_args(rows)]
    d = torch.autograd.grad(relu_cross_moment(*leaves).sum(), leaves)
    mu1, mu2, v1, v2, c = (x.detach() for x in leaves)
    assert_close(d[4], bvn_cdf(mu1 / v1.sqrt(), mu2 / v2.sqrt(), c / (v1 * v2).sqrt()), rtol=0, atol=1e-13)
    assert ((d[0] >= 0) & (d[0] <= relu_mean(mu2, v2) + 1e-15)).all()


def test_gradients_finite_everywhere():
    "rho = +-1, zero variances (one or both), zero means on the singular line: every gradient finite."
    rows = [(0.3, 0.3, 1., 1., 1.), (0.3, -0.1, 1., 2., -1.), (0.4, 1.2, 0., 1., 0.), (-0.4, 1.2, 0., 0., 0.),
            (0., 0., 0., 0., 0.), (0., 0., 1., 1., 1.), (0., 0., 1., 1., -1.), (0., 1., 0., 1., 0.), (1., 0., 1., 0., 0.),
            (30., -30., 1., 1., 0.5), (0.5, -0.2, 1e-6, 1., 0.7), (2., 1., 1.5, 0.5, 0.99999999)]
    for dtype in (f64, f32):
        leaves = [x.to(dtype).clone().requires_grad_() for x in pair_args(rows)]
        out = relu_cross_moment(*leaves)
        grads = torch.autograd.grad(out.sum(), leaves)
        assert all(torch.isfinite(g).all() for g in grads), grads
    for f in (relu_mean, relu_second_moment, relu_var):
        mu, var = (x.clone().requires_grad_() for x in t64([-1., 0., 2., 1e8, -40.], [0., 0., 0., 1., 1e-4]))
        grads = torch.autograd.grad(f(mu, var).sum(), (mu, var))
        assert all(torch.isfinite(g).all() for g in grads), (f.__name__, grads)


# ---------------------------------------------------------------------------------------------------------------------
# Hypothesis properties of relu_cross_moment.

# magnitudes below 1e-50 are flushed to 0: the tests' own bounds multiply four of them, which would underflow
flush = lambda x: x if abs(x) >= 1e-50 else 0.
means = st.floats(-5, 5).map(flush)
stds = st.one_of(st.floats(0, 3).map(flush), st.just(0.))
rhos = st.one_of(st.floats(-1, 1), st.sampled_from([-1., 1., 0., SQRT_HALF, -SQRT_HALF]))


def cm(mu1, mu2, s1, s2, rho): return relu_cross_moment(*pair_args([(mu1, mu2, s1, s2, rho)])).item()


@given(mu1=means, mu2=means, s1=stds, s2=stds, rho=rhos)
def test_swapping_the_pair_changes_nothing(mu1, mu2, s1, s2, rho):
    a, b = cm(mu1, mu2, s1, s2, rho), cm(mu2, mu1, s2, s1, rho)
    q = math.sqrt((mu1 ** 2 + s1 ** 2) * (mu2 ** 2 + s2 ** 2))
    assert abs(a - b) <= 2 * ACC * q, (a, b)     # each within ACC q of the same truth


@given(mu1=means, mu2=means, s1=stds, s2=stds, rho=rhos)
def test_nonnegative_and_cauchy_schwarz(mu1, mu2, s1, s2, rho):
    v = cm(mu1, mu2, s1, s2, rho)
    assert v >= 0
    m1, m2 = t64(mu1, mu2)
    second = math.sqrt(relu_second_moment(m1, s1 * s1).item() * relu_second_moment(m2, s2 * s2).item())
    q = math.sqrt((mu1 ** 2 + s1 ** 2) * (mu2 ** 2 + s2 ** 2))
    assert v <= second + 2 * ACC * q, (v, second)


@given(mu1=means, mu2=means, s2=stds, rho=rhos)
def test_continuous_as_a_variance_goes_to_zero(mu1, mu2, s2, rho):
    """relu is 1-Lipschitz, so |E[relu(z1) relu(z2)] - relu(mu1) E[relu(z2)]| <= E|z1 - mu1| relu(z2) <= s1 sqrt(Q2)
    (Cauchy-Schwarz): at var1 = 1e-14 the value is within 1e-7 sqrt(Q2) (plus accuracy) of the var1 = 0 value."""
    s1 = 1e-7
    near, at = cm(mu1, mu2, s1, s2, rho), cm(mu1, mu2, 0., s2, 0.)
    q2 = math.sqrt(mu2 ** 2 + s2 ** 2)
    assert abs(near - at) <= s1 * q2 + 2 * ACC * math.sqrt(mu1 ** 2 + s1 ** 2) * q2, (near, at)
    assert at == pytest.approx(max(mu1, 0) * relu_mean(*t64(mu2, s2 * s2)).item(), rel=4 * EPS64, abs=0)


@given(mu1=means, mu2=means, s1=st.floats(0.01, 3), s2=st.floats(0.01, 3), sign=st.sampled_from([-1., 1.]))
def test_continuous_as_rho_goes_to_one(mu1, mu2, s1, s2, sign):
    "Price: dE/dcov12 = Phi2 in [0, 1], so moving cov12 by 1e-10 s1 s2 moves E by at most that much."
    near, at = cm(mu1, mu2, s1, s2, sign * (1 - 1e-10)), cm(mu1, mu2, s1, s2, sign)
    q = math.sqrt((mu1 ** 2 + s1 ** 2) * (mu2 ** 2 + s2 ** 2))
    assert abs(near - at) <= 1e-10 * s1 * s2 + 2 * ACC * q, (near, at)


@given(s1=stds, s2=stds, rho=rhos)
def test_zero_mean_is_lemma3(s1, s2, rho):
    args = pair_args([(0., 0., s1, s2, rho)])
    a, b = relu_cross_moment(*args).item(), relu_cross_moment_zero_mean(*args[2:]).item()
    assert abs(a - b) <= 2 * ACC * s1 * s2, (a, b)


@given(mu1=means, mu2=means, s1=stds, s2=stds, rho=rhos, a=st.sampled_from([1e-6, 1e-3, 7., 1e4]))
def test_homogeneous_of_degree_two(mu1, mu2, s1, s2, rho, a):
    "relu(a z) = a relu(z) for a > 0: scaling (mu, s) by a scales E by a^2."
    scaled, base = cm(a * mu1, a * mu2, a * s1, a * s2, rho), cm(mu1, mu2, s1, s2, rho)
    q = math.sqrt((mu1 ** 2 + s1 ** 2) * (mu2 ** 2 + s2 ** 2))
    assert abs(scaled - a * a * base) <= 2 * ACC * a * a * q + 8 * EPS64 * abs(scaled), (scaled, a * a * base)


@pytest.mark.parametrize('dtype,var', [(f32, 1e-24), (f64, 1e-300)])
def test_tiny_variances_are_accepted(dtype, var):
    "E[relu(x1) relu(x2)] at zero mean, variances v, rho = 0.5 is v times its value at unit variances (Lemma 3)."
    unit = relu_cross_moment(*(torch.tensor(x, dtype=dtype) for x in (0., 0., 1., 1., 0.5)))
    tiny = relu_cross_moment(*(torch.tensor(x, dtype=dtype) for x in (0., 0., var, var, 0.5 * var)))
    assert_close(tiny / var, unit, rtol=8 * torch.finfo(dtype).eps, atol=0)


@given(mu=means, s=st.floats(0.01, 3))
def test_perfect_correlation_gives_the_second_moment(mu, s):
    """z1 = z2: E[relu(z)^2] (Bibi et al. 2018, Lemma 1); z2 = -z1 (same mean reflected): relu(z) relu(-z) = 0.
    The pair's closed form keeps the lower-tail cancellation that relu_second_moment avoids: relative agreement to
    4 (1 + h^2)^3 eps for h = mu / s < 0."""
    m, v = t64(mu, s * s)
    g = 1 + min(mu / s, 0.) ** 2
    assert cm(mu, mu, s, s, 1.) == pytest.approx(relu_second_moment(m, v).item(), rel=max(1e-13, 4 * g ** 3 * EPS64), abs=0)
    assert cm(mu, -mu, s, s, -1.) <= ACC * (mu * mu + s * s)


# ---------------------------------------------------------------------------------------------------------------------
# One-variable moments against mpmath closed forms, tails included.

def closed_forms(mu, s):
    "E[relu(z)], E[relu(z)^2], Var[relu(z)] at 40 digits (Remark 1, Lemma 1)."
    with mp.workdps(40):
        m, s = mp.mpf(mu), mp.mpf(s)
        if s == 0: return [max(m, 0), max(m, 0) ** 2, mp.mpf(0)]
        h = m / s
        mean = m * mp.ncdf(h) + s * mp.npdf(h)
        second = (m * m + s * s) * mp.ncdf(h) + m * s * mp.npdf(h)
        return [mean, second, second - mean * mean]


HS = [-37., -30., -20., -10., -5., -2., -0.5, 0., 0.3, 1., 4., 10., 30., 1e3, 1e8]


@pytest.mark.parametrize('s', [1., 0.37, 2.5e-3, 40.])
def test_one_variable_moments_against_mpmath(s):
    """Relative errors. For h = mu / s >= 0 nothing cancels: a few ulps (relu_var's h >= 0 form avoids the
    cancellation of E[r^2] - E[r]^2). For h < 0 the lower tail is evaluated without cancellation (a continued fraction
    below h = -2.5); what remains is phi(h) = exp(-h^2 / 2), whose relative error is ~h^2 eps from the rounding of h^2:
    allowed 8 (1 + h^2) eps."""
    mu = torch.tensor(HS, dtype=f64) * s
    var = torch.full_like(mu, s * s)
    got = [relu_mean(mu, var), relu_second_moment(mu, var), relu_var(mu, var)]
    for i, (m, h) in enumerate(zip(mu.tolist(), HS)):
        ref = closed_forms(m, s)
        g = 1 + min(h, 0.) ** 2
        for name, out, r in zip(('mean', 'second', 'var'), got, ref):
            with mp.workdps(40):
                rel = float(abs(mp.mpf(out[i].item()) / r - 1))
            assert rel <= 8 * g * EPS64, f'{name} at h = {h}, s = {s}: relative error {rel:.2e}'


TAIL_HS = torch.linspace(-37.5, -2.5, 141, dtype=f64).tolist()


@pytest.mark.parametrize('s', [1., 0.37, 40., 3e-7])
def test_far_lower_tail_is_accurate_to_1e12(s):
    """h = mu / s in [-37.5, -2.5], where the closed forms of E[relu(z)^2] (and Var) lost up to 1e-7 (relative) to
    cancellation: mean, second moment and variance within 1e-12 of 40-digit mpmath at the float inputs, down to where
    they leave the normal float64 range."""
    mu = torch.tensor(TAIL_HS, dtype=f64) * s
    var = torch.full_like(mu, s * s)
    got = [relu_mean(mu, var), relu_second_moment(mu, var), relu_var(mu, var)]
    worst = [0.] * 3
    for i, m in enumerate(mu.tolist()):
        with mp.workdps(40):
            ref = closed_forms(m, mp.sqrt(mp.mpf(var[i].item())))
            for j, (out, r) in enumerate(zip(got, ref)):
                if r >= torch.finfo(f64).tiny:   # subnormal results carry fewer digits
                    worst[j] = max(worst[j], float(abs(mp.mpf(out[i].item()) / r - 1)))
    assert max(worst) < 1e-12, f'relative errors (mean, second, var) up to {worst}'


@pytest.mark.parametrize('s', [1., 0.37, 40.])
def test_far_lower_tail_gradients(s):
    """Gradients in the lower tail against mpmath: dE[r^2]/dmu = 2 E[r], dE[r^2]/dvar = Phi(h), dE[r]/dmu = Phi(h),
    dE[r]/dvar = phi(h) / (2 s) (Price's theorem in one variable), each within 1e-12 (relative)."""
    mu = (torch.tensor(TAIL_HS[::7], dtype=f64) * s).requires_grad_()
    var = torch.full_like(mu, s * s).requires_grad_()
    gm1, gv1 = torch.autograd.grad(relu_mean(mu, var).sum(), (mu, var))
    gm2, gv2 = torch.autograd.grad(relu_second_moment(mu, var).sum(), (mu, var))
    for i, m in enumerate(mu.tolist()):
        with mp.workdps(40):
            sd = mp.sqrt(mp.mpf(var[i].item()))
            h = mp.mpf(m) / sd
            mean = closed_forms(m, sd)[0]
            for got, ref in ((gm1, mp.ncdf(h)), (gv1, mp.npdf(h) / (2 * sd)), (gm2, 2 * mean), (gv2, mp.ncdf(h))):
                rel = float(abs(mp.mpf(got[i].item()) / ref - 1))
                assert rel < 1e-12, f'h = {float(h):.4g}, s = {s}: relative gradient error {rel:.2e}'
    assert torch.autograd.gradcheck(relu_second_moment, (mu[:4].detach().clone().requires_grad_(),
                                                         var[:4].detach().clone().requires_grad_()))
    assert torch.autograd.gradgradcheck(relu_second_moment, (mu[-4:].detach().clone().requires_grad_(),
                                                             var[-4:].detach().clone().requires_grad_()))


def test_relu_var_where_the_naive_difference_fails():
    "h = 1e8: E[r^2] - E[r]^2 is 1e16 + 1 - 1e16 (garbage in float64); relu_var returns s^2 to the last bit."
    big = torch.tensor([1e8, 1e8, -1e8, 1e12], dtype=f64)
    var = torch.tensor([1., 2.5, 1., 9.], dtype=f64)
    assert_close(relu_var(big, var), torch.tensor([1., 2.5, 0., 9.], dtype=f64), rtol=2 * EPS64, atol=0)
    naive = relu_second_moment(big[:1], 1.) - relu_mean(big[:1], 1.) ** 2
    assert abs(naive.item() - 1) > 0.5   # the failure relu_var exists to avoid (so the check above can fail)


def test_zero_variance_is_relu_itself():
    mu = torch.tensor([-2., -1e-300, 0., 1e-300, 0.7, 5e3], dtype=f64)
    zero = torch.zeros_like(mu)
    assert torch.equal(relu_mean(mu, zero), mu.clamp(min=0))
    assert torch.equal(relu_second_moment(mu, zero), mu.clamp(min=0) ** 2)
    assert torch.equal(relu_var(mu, zero), zero)


@given(mu=st.floats(-1e3, 1e3), var=st.one_of(st.floats(0, 1e3), st.floats(0, 1e-10), st.just(0.)))
def test_relu_var_is_nonnegative_and_below_var(mu, var):
    "relu is 1-Lipschitz: 0 <= Var[relu(z)] <= Var[z]."
    m, v = t64(mu, var)
    out = relu_var(m, v).item()
    assert 0 <= out <= var * (1 + 4 * EPS64)


# ---------------------------------------------------------------------------------------------------------------------
# relu_moments: a layer.

def random_psd(p, rank, seed, scale=1.):
    gen = torch.Generator().manual_seed(seed)
    L = torch.randn(p, rank, generator=gen, dtype=f64) * scale
    return torch.randn(p, generator=gen, dtype=f64) * scale, L @ L.mT


@given(p=st.integers(1, 6), rank=st.integers(1, 6), seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 1., 5.]),
       zero_unit=st.booleans())
def test_layer_covariance_is_symmetric_psd_with_relu_var_diagonal(p, rank, seed, scale, zero_unit):
    """Covariance of relu(z): exactly symmetric, diagonal = relu_var, PSD. Each entry is within
    (ACC + 4 eps) sqrt(Q_u Q_v) of the truth (the pair accuracy, plus rounding of E[r_u r_v] - E[r_u] E[r_v], both terms
    <= sqrt(Q_u Q_v)), so the error matrix has norm <= (ACC + 4 eps) sum_u Q_u: the bound on a negative eigenvalue."""
    mean, cov = random_psd(p, min(rank, p), seed, scale)
    if zero_unit:                            # a unit with zero variance: zero row and column
        cov[0], cov[:, 0] = 0., 0.
    res = relu_moments(mean, cov)
    assert isinstance(res, ReluMoments) and res.cov.shape == (p, p)
    assert torch.equal(res.cov, res.cov.mT)
    assert torch.equal(res.cov.diagonal(), res.var)
    assert_close(res.var, relu_var(mean, cov.diagonal()), rtol=0, atol=0)
    assert_close(res.mean, relu_mean(mean, cov.diagonal()), rtol=0, atol=0)
    q = mean ** 2 + cov.diagonal()
    assert torch.linalg.eigvalsh(res.cov).min() >= -(ACC + 4 * EPS64) * q.sum()


@pytest.mark.parametrize('seed', [0, 1])
def test_layer_rank_one_covariance(seed):
    "cov = v v^T: every pair has |rho| = 1 (or a zero variance). Still symmetric PSD, and against Monte Carlo."
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(5, generator=gen, dtype=f64)
    v[2] = 0.
    mean = torch.randn(5, generator=gen, dtype=f64) * 0.5
    res = relu_moments(mean, torch.outer(v, v))
    q = mean ** 2 + v ** 2
    assert torch.equal(res.cov, res.cov.mT) and torch.linalg.eigvalsh(res.cov).min() >= -(ACC + 4 * EPS64) * q.sum()
    mc = mc_moments(torch.relu, mean, torch.outer(v, v), 100_000, seed=seed)
    assert ((res.mean - mc.mean).abs() <= 4 * mc.mean_se + 1e-15).all()     # SE 0 for the constant unit: exact there
    assert ((res.cov - mc.cov).abs() <= 4 * mc.cov_se + 1e-15).all()


def test_diagonal_mode_matches_full_mode():
    gen = torch.Generator().manual_seed(7)
    L = torch.randn(4, 6, 6, generator=gen, dtype=f64)
    cov = L @ L.mT / 6
    mean = torch.randn(4, 6, generator=gen, dtype=f64)
    full = relu_moments(mean, cov)
    diag = relu_moments(mean, cov.diagonal(dim1=-2, dim2=-1))
    assert diag.cov is None
    assert torch.equal(diag.mean, full.mean) and torch.equal(diag.var, full.var)


def test_layer_against_monte_carlo():
    gen = torch.Generator().manual_seed(11)
    L = torch.randn(6, 6, generator=gen, dtype=f64)
    cov = L @ L.mT / 6
    mean = torch.randn(6, generator=gen, dtype=f64)
    res = relu_moments(mean, cov)
    mc = mc_moments(torch.relu, mean, cov, 100_000, seed=0)
    z_mean, z_cov = ((res.mean - mc.mean) / mc.mean_se).abs(), ((res.cov - mc.cov) / mc.cov_se).abs()
    assert z_mean.max() <= 4 and z_cov.max() <= 4, (z_mean.max(), z_cov.max())


def test_layer_batches_broadcast():
    gen = torch.Generator().manual_seed(3)
    L = torch.randn(3, 5, 5, generator=gen, dtype=f64)
    cov = L @ L.mT / 5
    mean = torch.randn(2, 1, 5, generator=gen, dtype=f64)
    res = relu_moments(mean, cov)                     # (2, 1, 5) with (3, 5, 5): (2, 3, 5)
    assert (res.mean.shape, res.cov.shape, res.var.shape) == ((2, 3, 5), (2, 3, 5, 5), (2, 3, 5))
    one = relu_moments(mean[1, 0], cov[2])
    assert_close(res.cov[1, 2], one.cov, rtol=0, atol=4 * EPS64 * one.cov.abs().max())
    assert_close(res.mean[1, 2], one.mean, rtol=0, atol=0)
    shared = relu_moments(torch.randn(4, 5, generator=gen, dtype=f64), cov[0])   # one covariance for the batch
    assert shared.cov.shape == (4, 5, 5)
    d = relu_moments(mean, cov.diagonal(dim1=-2, dim2=-1))
    assert d.mean.shape == (2, 3, 5) and d.cov is None


LAYER_BAD = [
    (lambda m, c: (m[0, 0], c), ValueError, 'mean must have shape (..., p); got a scalar'),
    (lambda m, c: (m, c[..., :5]), ValueError, 'cov must have shape (..., p, p) or (..., p)'),
    (lambda m, c: (m, -c), ValueError, 'cov must have a non-negative diagonal'),
    (lambda m, c: (m, c + torch.triu(torch.ones(6, 6, dtype=f64), 1)), ValueError, 'cov must be symmetric'),
    (lambda m, c: (m, c - 2 * torch.eye(6, dtype=f64) * c.diagonal().max()), ValueError, 'cov must'),
    (lambda m, c: (m, c + torch.ones(6, 6, dtype=f64) * 10 - torch.eye(6, dtype=f64) * 9), ValueError,
     'cov must be positive semi-definite'),
    (lambda m, c: (m, -c.diagonal()), ValueError, 'cov must be >= 0'),
    (lambda m, c: (m.clone().index_fill_(0, torch.tensor([0]), math.nan), c), ValueError, 'mean must be finite'),
    (lambda m, c: (m, c.to('meta')), ValueError, 'all tensors must be on one device'),
]


@pytest.mark.parametrize('make,exc,message', LAYER_BAD, ids=[m for _, _, m in LAYER_BAD])
def test_layer_bad_inputs(make, exc, message):
    gen = torch.Generator().manual_seed(7)
    L = torch.randn(6, 6, generator=gen, dtype=f64)
    mean, cov = torch.randn(1, 6, generator=gen, dtype=f64), L @ L.mT / 6
    with pytest.raises(exc) as info: relu_moments(*make(mean, cov))
    assert message in str(info.value)


PAIR_BAD = [
    ((0., 0., 1., 1., 1.5), ValueError, 'cov12^2 must be <= var1 * var2'),
    ((0., 0., -1., 1., 0.), ValueError, 'var1 must be >= 0'),
    ((0., 0., 1., math.inf, 0.), ValueError, 'var2 must be finite'),
    ((math.nan, 0., 1., 1., 0.), ValueError, 'mu1 must be finite'),
    ((0., 0., 1., 1., math.nan), ValueError, 'cov12 must be finite'),
    ((torch.ones(2), torch.ones(3), 1., 1., 0.), ValueError, 'shapes do not broadcast'),
    ((torch.ones(2), torch.ones(2, device='meta'), 1., 1., 0.), ValueError, 'all tensors must be on one device'),
]


@pytest.mark.parametrize('args,exc,message', PAIR_BAD, ids=[m for _, _, m in PAIR_BAD])
def test_pair_bad_inputs(args, exc, message):
    with pytest.raises(exc) as info: relu_cross_moment(*args)
    assert message in str(info.value)
    if message.startswith('var1') or message.startswith('cov12^2'):
        with pytest.raises(exc): relu_cross_moment_zero_mean(*args[2:])


def test_round_off_beyond_rho_one_is_accepted_and_clamped():
    "cov12 = sqrt(var1 var2) (1 + 10 eps): round-off, accepted as rho = 1."
    a = relu_cross_moment(*t64(0.3, 0.3, 2., 2., 2. * (1 + 10 * EPS64)))
    assert a.item() == pytest.approx(relu_second_moment(*t64(0.3, 2.)).item(), rel=1e-14)


def test_one_variable_bad_inputs():
    for f in (relu_mean, relu_second_moment, relu_var):
        with pytest.raises(ValueError, match='var must be >= 0'): f(torch.zeros(2), -torch.ones(2))
        with pytest.raises(ValueError, match='mu must be finite'): f(torch.tensor([math.inf]), 1.)
        with pytest.raises(ValueError, match='shapes do not broadcast'): f(torch.zeros(2), torch.ones(3))


# ---------------------------------------------------------------------------------------------------------------------
# Devices and dtypes.

@pytest.mark.parametrize('dtype', [f32, f64])
def test_device_agrees_with_cpu(device, dtype):
    gen = torch.Generator().manual_seed(5)
    n = 3000
    s = torch.rand(n, 2, generator=gen, dtype=f64) * 2
    s[:20] = 0.
    rho = torch.rand(n, generator=gen, dtype=f64) * 2 - 1
    rho[20:40] = torch.tensor([1., -1.] * 10, dtype=f64)
    args = (torch.randn(n, generator=gen, dtype=f64) * 3, torch.randn(n, generator=gen, dtype=f64) * 3,
            s[:, 0] ** 2, s[:, 1] ** 2, rho * s[:, 0] * s[:, 1])
    args = [a.to(dtype) for a in args]
    cpu = relu_cross_moment(*args)
    out = relu_cross_moment(*(a.to(device) for a in args))
    assert (out.dtype, out.device.type) == (dtype, device)
    tol = (2 * ACC if dtype == f64 else 2e-6) * scale_q(*(a.double() for a in args[:4]))
    assert ((out.cpu().double() - cpu.double()).abs() <= tol).all()
    mean = torch.randn(4, 6, generator=gen, dtype=f64).to(dtype)
    L = torch.randn(6, 6, generator=gen, dtype=f64)
    cov = (L @ L.mT / 6).to(dtype)
    a, b = relu_moments(mean, cov), relu_moments(mean.to(device), cov.to(device))
    assert b.cov.device.type == device and b.cov.dtype == dtype
    assert_close(b.cov.cpu(), a.cov, rtol=0, atol=(1e-12 if dtype == f64 else 1e-5) * a.cov.abs().max().item())


# --- |rho| = 1 by rounding: the gradient of the clamped correlation, checked by Price's theorem -------------------

@pytest.mark.parametrize('point', [(.3, -.2, 3., 3., 3.), (.3, -.2, 3., 3., -3.), (.3, .3, 3., 3., 3.),
                                   (1e-3, 0., 1., 1., 1.), (-.5, .8, 2., .5, -1.), (.3, -.2, 2., 3., 6 ** .5)])
def test_cross_moment_gradient_at_rho_one(point):
    "At |rho| = 1 dE/dcov12 is Price's Phi2(h1, h2; rho) (Phi(min(h1, h2)) at rho = 1); d/dmu agree with differences."
    leaves = [x.requires_grad_() for x in t64(*point)]
    relu_cross_moment(*leaves).backward()
    mu1, mu2, var1, var2, cov12 = point
    h1, h2, rho = mu1 / var1 ** .5, mu2 / var2 ** .5, math.copysign(1., cov12)
    price = bvn_cdf(*t64(h1, h2, rho)).item()
    if rho == 1: assert price == pytest.approx(0.5 * math.erfc(-min(h1, h2) / 2 ** .5), abs=1e-12)
    assert all(torch.isfinite(x.grad) for x in leaves)
    assert leaves[4].grad.item() == pytest.approx(price, abs=1e-9)
    f = lambda *p: relu_cross_moment(*t64(*p)).item()
    for i in (0, 1):   # the means move freely at |rho| = 1: central differences
        up, down = list(point), list(point)
        up[i] += 1e-6; down[i] -= 1e-6
        assert leaves[i].grad.item() == pytest.approx((f(*up) - f(*down)) / 2e-6, abs=1e-7)
    inside = list(point); inside[4] -= math.copysign(1e-7, cov12)   # cov12 moves inward only: one-sided difference
    # (the difference converges like sqrt(1e-7) where h1 = h2: E has a (1 - rho^2)^(3/2) term there)
    assert leaves[4].grad.item() == pytest.approx((f(*point) - f(*inside)) / math.copysign(1e-7, cov12), abs=1e-4)


@given(st.floats(-3, 3), st.floats(-3, 3), st.floats(0.1, 3), st.floats(0.1, 3), st.sampled_from([-1., 1.]),
       st.floats(0, 1e-6))
def test_cross_moment_gradient_near_rho_one(mu1, mu2, s1, s2, sign, gap):
    "Just inside |rho| = 1 and on it (float64), and where cov12 / (s1 s2) rounds past 1 (float32): Price's theorem."
    rho = sign * (1 - gap)
    leaves = [x.requires_grad_() for x in t64(mu1, mu2, s1 * s1, s2 * s2, rho * s1 * s2)]
    relu_cross_moment(*leaves).backward()
    assert all(torch.isfinite(x.grad) for x in leaves)
    assert leaves[4].grad.item() == pytest.approx(bvn_cdf(*t64(mu1 / s1, mu2 / s2, rho)).item(), abs=1e-7)
    leaves32 = [torch.tensor(x, dtype=f32, requires_grad=True) for x in (mu1, mu2, s1 * s1, s2 * s2, sign * s1 * s2)]
    relu_cross_moment(*leaves32).backward()
    assert all(torch.isfinite(x.grad) for x in leaves32)
    assert leaves32[4].grad.item() == pytest.approx(bvn_cdf(*t64(mu1 / s1, mu2 / s2, sign)).item(), abs=1e-4)


def test_cross_moment_gradcheck_near_rho_one():
    "Finite differences (float64) just inside |rho| = 1."
    args = pair_args([(.3, -.2, 1.7, 1.2, 1 - 1e-5), (-.4, .9, .8, 1.5, -1 + 1e-5), (1., 1.2, 1., 1.1, 1 - 1e-4)])
    assert torch.autograd.gradcheck(relu_cross_moment, [x.clone().requires_grad_() for x in args], eps=1e-8, atol=1e-5)


def test_zero_mean_gradient_at_rho_one():
    "Lemma 3 at rho = +-1: dE/dcov12 = Phi2(0, 0; rho) = 1/2 or 0."
    for cov, want in ((3., 0.5), (-3., 0.)):
        leaves = [x.requires_grad_() for x in t64(3., 3., cov)]
        relu_cross_moment_zero_mean(*leaves).backward()
        assert leaves[2].grad.item() == pytest.approx(want, abs=1e-12)


# --- huge means and scales: the limits, never NaN ------------------------------------------------------------------

HUGE = {f32: [2e19, 1e30, 3e38], f64: [1e160, 1e200, 1e308]}


@pytest.mark.parametrize('dtype', [f32, f64])
def test_unit_moments_at_huge_means(dtype):
    "mean, second moment, variance at |mu| / s up to 1e38 / 1e308 and scales up to the largest float: never NaN."
    for m in HUGE[dtype]:
        for var in (1., 1e-30, torch.finfo(dtype).tiny, torch.finfo(dtype).max / 4):
            neg, pos = torch.tensor(-m, dtype=dtype), torch.tensor(m, dtype=dtype)
            if var < 1e30:   # |mu| / s huge: relu(mu) exactly
                assert relu_mean(neg, var).item() == 0 and relu_second_moment(neg, var).item() == 0
                assert relu_mean(pos, var).item() == pytest.approx(m, rel=1e-6)
                square = m * m if m * m <= torch.finfo(dtype).max else math.inf   # inf where m^2 overflows
                assert relu_second_moment(pos, var).item() == pytest.approx(square, rel=1e-6)
            for f in (relu_mean, relu_second_moment, relu_var):
                assert not torch.isnan(f(neg, var)) and not torch.isnan(f(pos, var)), (f.__name__, m, var)
    assert relu_second_moment(torch.tensor(-2e19), 1.).item() == 0
    assert relu_second_moment(torch.tensor(-1e160, dtype=f64), 1.).item() == 0


@pytest.mark.parametrize('dtype', [f32, f64])
def test_cross_moment_at_huge_means(dtype):
    "relu_cross_moment at huge means and scales, both signs: 0 when a mean is hugely negative, never NaN."
    fi = torch.finfo(dtype)
    means = [0., 1., *HUGE[dtype][:2], *(-x for x in HUGE[dtype][:2]), fi.max / 4, -fi.max / 4]
    for m1 in means:
        for m2 in means:
            for v1, v2 in ((1., 1.), (1., fi.max / 4), (fi.max / 4, fi.max / 4), (0., 1.), (fi.tiny, 1.)):
                for rho in (0., 1., -1., .5):
                    out = relu_cross_moment(*(torch.tensor(x, dtype=dtype) for x in (m1, m2, v1, v2, rho * v1 ** .5 * v2 ** .5)))
                    assert not torch.isnan(out), (m1, m2, v1, v2, rho)
                    if min(m1, m2) <= -1e18 and max(v1, v2) == 1.: assert out.item() == 0
                    if m1 > 1e18 and m2 > 1e18 and m1 * m2 > fi.max and v1 == v2 == 1.: assert out.item() == math.inf


def test_cross_moment_scale_invariance():
    "E[relu(a z1) relu(b z2)] = a b E[relu(z1) relu(z2)] for powers of two a, b far beyond the float32 range of a b."
    args = pair_args([(.3, -.5, 1.2, .7, .37), (-1., .8, .5, 2., -.9), (2., 1., 1.5, .5, 1.)])
    base = relu_cross_moment(*args)
    for a, b in ((2. ** 300, 2. ** -300), (2. ** 500, 2. ** 400), (2. ** -500, 2. ** -480)):
        scaled = relu_cross_moment(args[0] * a, args[1] * b, args[2] * a * a, args[3] * b * b, args[4] * a * b)
        assert_close(scaled / (a * b), base, rtol=1e-14, atol=0)


def test_relu_moments_huge_mean_covariance():
    "The layer covariance at means of 1e160 (1e30 in float32) is the input covariance, not inf - inf."
    for dtype, m in ((f64, 1e160), (f32, 1e30)):
        C = torch.tensor([[1., .5, .2], [.5, 2., .1], [.2, .1, 1.]], dtype=dtype)
        res = relu_moments(torch.tensor([m, m / 2, -3.], dtype=dtype), C)
        assert torch.isfinite(res.cov).all()
        assert_close(res.cov[:2, :2], C[:2, :2], rtol=1e-5, atol=0)
        assert res.cov[0, 2].item() == pytest.approx(.2 * 0.5 * math.erfc(3 / 2 ** .5), rel=1e-4)


# --- argument checks -----------------------------------------------------------------------------------------------

def test_empty_layers_are_refused():
    "A layer of 0 units is a ValueError; an empty batch is a valid, empty answer."
    with pytest.raises(ValueError, match=r'mean must have p >= 1 units; got shape \(0,\)'):
        relu_moments(torch.zeros(0), torch.zeros(0, 0))
    assert relu_second_moment(torch.zeros(2, dtype=f64), 1.).dtype == f64
    assert relu_mean(torch.zeros(0, 3), 1.).shape == (0, 3)   # an empty batch is a valid, empty answer


@given(st.sampled_from([math.nan, math.inf, -math.inf]), st.integers(0, 4))
def test_non_finite_arguments_are_named(bad, which):
    "A NaN or infinite argument of relu_cross_moment is refused by name."
    args = [0.3, -0.2, 1., 2., 0.5]
    args[which] = bad
    names = ('mu1', 'mu2', 'var1', 'var2', 'cov12')
    with pytest.raises(ValueError, match=f'{names[which]} must be finite'):
        relu_cross_moment(*t64(*args))


def test_messages_name_only_the_arguments_of_the_function_called():
    "relu_cross_moment_zero_mean has no means: its messages must not name mu1 or mu2; relu_moments names cov's batch."
    with pytest.raises(ValueError) as info: relu_cross_moment_zero_mean(torch.ones(2), torch.ones(3), 0.)
    assert 'shapes do not broadcast: var1 (2,), var2 (3,), cov12 ()' in str(info.value) and 'mu1' not in str(info.value)
    with pytest.raises(TypeError, match='found var1 float32, var2 float64'):
        relu_cross_moment_zero_mean(torch.ones(2), torch.ones(2, dtype=f64), 0.)
    with pytest.raises(ValueError, match=r'shapes do not broadcast: mean \(4, 3\), cov batch \(2, 3\)'):
        relu_moments(torch.zeros(4, 3), torch.eye(3).expand(2, 3, 3))
    with pytest.raises(ValueError, match=r'shapes do not broadcast: mean \(4, 3\), cov \(2, 3\)'):
        relu_moments(torch.zeros(4, 3), torch.ones(2, 3))
    assert relu_moments(torch.zeros(0, 3), torch.eye(3)).cov.shape == (0, 3, 3)


@pytest.mark.parametrize('m1,m2,want', [(-1e300, 2e299, 0.), (2e300, 8e299, 1.), (1e300, -4e299, 0.),
                                        (3e300, 0.5, 0.5 * math.erfc(-0.5 / 2 ** .5 / 2 ** .5)), (-60., 0.3, 0.)])
def test_cross_moment_gradient_beyond_h_50(m1, m2, want):
    "A unit with |h| > 50 is surely on or off: dE/dcov12 = P(both on) (Price) stays finite and right, also where E overflows."
    cov12 = torch.tensor(0.3, dtype=f64, requires_grad=True)
    out = relu_cross_moment(*t64(m1, m2, 1., 2.), cov12)
    assert not torch.isnan(out)
    g, = torch.autograd.grad(out, cov12)
    assert g.item() == pytest.approx(want, rel=1e-14, abs=1e-300)
