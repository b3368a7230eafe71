"Properties of `netmoments.gaussian`: Phi and Phi2 against mpmath, float32, identities, gradients, errors, devices."
import itertools, math

import mpmath as mp
import pytest
import torch
from hypothesis import given, strategies as st
from torch.testing import assert_close

from netmoments.gaussian import _bvn_cdf_mp, bvn_cdf, bvn_pdf, normal_cdf, normal_pdf

f64, f32 = torch.float64, torch.float32
EPS64, EPS32 = torch.finfo(f64).eps, torch.finfo(f32).eps
# The accuracy claim of bvn_cdf in float64, absolute (Genz's errors are absolute): checked on the grid below. Every
# identity test derives its tolerance from it: two values each within ACC of the truth differ by at most 2 ACC.
ACC = 5e-16


def t64(*xs): return [torch.as_tensor(x, dtype=f64) for x in xs]


# ---------------------------------------------------------------------------------------------------------------------
# The dense grid against the 20-digit mpmath reference (~30 ms a point: the reference is computed once per unordered
# pair {h, k}, since Phi2 is symmetric, and bvn_cdf is checked at both orders: its code is not symmetric in h, k).

HK = [-8., -3.5, -1., 0., 0.7, 2.2, 8.]
SWITCHES = [0.3, 0.75, 0.925]                      # 6 -> 12 -> 20 nodes -> Genz's expansion around |rho| = 1
RHO_POS = [1., 1 - 1e-8, 0.999, *SWITCHES, *(math.nextafter(s, 0.) for s in SWITCHES)]   # both sides of each switch
RHOS = sorted({0., *RHO_POS, *(-r for r in RHO_POS)})


@pytest.fixture(scope='module')
def grid():
    "Points (h, k, rho) of the full grid, both orders of (h, k), and their reference values."
    ref = {}
    for (h, k), rho in itertools.product(itertools.combinations_with_replacement(HK, 2), RHOS):
        ref[h, k, rho] = ref[k, h, rho] = float(_bvn_cdf_mp(h, k, rho, dps=20))
    pts = torch.tensor(list(ref), dtype=f64)
    return pts, torch.tensor(list(ref.values()), dtype=f64)


def test_grid_against_mpmath_float64(grid):
    pts, ref = grid
    assert len(pts) == len(HK) ** 2 * len(RHOS) == 931
    err = (bvn_cdf(*pts.T) - ref).abs()
    worst = pts[err.argmax()].tolist()
    assert err.max() <= ACC, f'max |error| {err.max():.2e} at (h, k, rho) = {worst}'


def test_grid_float32_against_float64_at_the_rounded_inputs(grid):
    "float32 is judged at its own rounded inputs (rounding rho = 1 - 1e-8 to 1 changes the function, not the method)."
    pts32 = grid[0].float()
    out = bvn_cdf(*pts32.T)
    assert out.dtype == f32
    err = (out.double() - bvn_cdf(*pts32.double().T)).abs()
    assert err.max() <= 1e-6, f'max |error| {err.max():.2e} at {pts32[err.argmax()].tolist()}'


def test_infinite_limits_and_closed_forms():
    K = torch.tensor(HK + [math.inf, -math.inf], dtype=f64)
    Phi = normal_cdf
    for rho in (-1., -0.95, -0.5, 0., 0.3, 0.93, 1.):
        assert_close(bvn_cdf(math.inf, K, rho), Phi(K), rtol=0, atol=ACC)
        assert_close(bvn_cdf(K, math.inf, rho), Phi(K), rtol=0, atol=ACC)
        assert bool((bvn_cdf(-math.inf, K, rho) == 0).all()) and bool((bvn_cdf(K, -math.inf, rho) == 0).all())
    H, K2 = torch.meshgrid(K[:-2], K[:-2], indexing='ij')
    assert_close(bvn_cdf(H, K2, 0.), Phi(H) * Phi(K2), rtol=0, atol=ACC)
    assert_close(bvn_cdf(H, K2, 1.), Phi(torch.minimum(H, K2)), rtol=0, atol=ACC)
    assert_close(bvn_cdf(H, K2, -1.), (Phi(H) + Phi(K2) - 1).clamp(min=0), rtol=0, atol=ACC)
    rhos = torch.linspace(-1, 1, 201, dtype=f64)
    assert_close(bvn_cdf(0., 0., rhos), 0.25 + torch.asin(rhos) / (2 * math.pi), rtol=0, atol=ACC)


# ---------------------------------------------------------------------------------------------------------------------
# The univariate cdf: relative accuracy in the lower tail.

def test_normal_cdf_tail_relative_accuracy():
    """Rounding x / sqrt2 perturbs x by ~eps |x| and d log Phi / dx ~ |x| in the lower tail, so the relative error is
    ~x^2 eps (plus a few ulps of erfc): bound 2 (1 + x^2) eps. The (1 + erf) / 2 form loses everything there."""
    x = torch.tensor([-37.5, -37., -30., -25., -20., -12.3, -10., -8., -5.3, -3., -1., -0.1, 0., 0.5, 2., 5., 8.3], dtype=f64)
    with mp.workdps(40):
        ref = [mp.ncdf(mp.mpf(v)) for v in x.tolist()]
        rel = torch.tensor([float(abs(mp.mpf(g) / r - 1)) for g, r in zip(normal_cdf(x).tolist(), ref)], dtype=f64)
    assert bool((rel <= 2 * (1 + x * x) * EPS64).all()), rel / EPS64
    x32 = x[(x >= -12.3)].float()   # Phi(-12.3) ~ 4e-35 is still a normal float32 number
    with mp.workdps(40):
        rel32 = torch.tensor([float(abs(mp.mpf(g) / mp.ncdf(mp.mpf(v)) - 1)) for g, v in
                              zip(normal_cdf(x32).tolist(), x32.tolist())], dtype=f64)
    assert bool((rel32 <= 2 * (1 + x32.double() ** 2) * EPS32).all()), rel32 / EPS32
    assert normal_cdf(torch.tensor(-math.inf)).item() == 0 and normal_cdf(torch.tensor(math.inf)).item() == 1


def test_normal_pdf_and_bvn_pdf_against_mpmath():
    x = torch.tensor([-30., -5., -1., 0., 0.3, 7.], dtype=f64)
    with mp.workdps(30):
        ref = torch.tensor([float(mp.npdf(v)) for v in x.tolist()], dtype=f64)
    assert_close(normal_pdf(x), ref, rtol=(1 + x * x).max().item() * EPS64, atol=0)
    pts = torch.tensor([[0.3, -1.2, 0.5], [2., 2., 0.999999], [1., -1.00001, -0.9999999999], [0.5, 0.1, 0.]], dtype=f64)
    with mp.workdps(30):
        f = lambda h, k, r: mp.exp(-(h * h - 2 * r * h * k + k * k) / (2 * (1 - r * r))) / (2 * mp.pi * mp.sqrt(1 - r * r))
        ref = torch.tensor([float(f(*map(mp.mpf, p))) for p in pts.tolist()], dtype=f64)
    # 1 - rho^2 = 2e-10 at the third point: its rounding, relative 1e-16 / 2e-10, is amplified by the exponent ~1
    assert_close(bvn_pdf(*pts.T), ref, rtol=1e-9, atol=0)
    assert bvn_pdf(*t64(1., 1., 1.)).item() == 0 and bvn_pdf(*t64(1., -1., -1.)).item() == 0


# ---------------------------------------------------------------------------------------------------------------------
# Identities (hypothesis).

hk = st.one_of(st.floats(-9, 9), st.sampled_from([-math.inf, math.inf, 0., -40., 40.]))
rho = st.one_of(st.floats(-1, 1), st.sampled_from([-1., 1., 0., 0.3, -0.925, 1 - 1e-12]))


@given(h=hk, k=hk, r=rho)
def test_symmetric_in_h_and_k(h, k, r):
    a, b = bvn_cdf(*t64(h, k, r)).item(), bvn_cdf(*t64(k, h, r)).item()
    assert abs(a - b) <= 2 * ACC, (a, b)


@given(h=hk, k=hk, r=rho)
def test_complement_in_k(h, k, r):
    "P(X <= h, Y <= k) + P(X <= h, Y > k) = Phi(h), with P(X <= h, Y > k) = Phi2(h, -k; -rho)."
    total = bvn_cdf(*t64(h, k, r)).item() + bvn_cdf(*t64(h, -k, -r)).item()
    assert abs(total - normal_cdf(torch.tensor(h, dtype=f64)).item()) <= 2 * ACC + EPS64, total


@given(h=hk, k=hk, r1=rho, r2=rho)
def test_monotone_in_rho(h, k, r1, r2):
    "dPhi2/drho = phi2 >= 0 (Plackett)."
    lo, hi = sorted((r1, r2))
    assert bvn_cdf(*t64(h, k, lo)).item() <= bvn_cdf(*t64(h, k, hi)).item() + 2 * ACC


@given(h=hk, k=hk, r=rho)
def test_bounds(h, k, r):
    "max(0, Phi(h) + Phi(k) - 1) <= Phi2 <= min(Phi(h), Phi(k)) (Frechet), the values at rho = -1 and 1."
    h_, k_, r_ = t64(h, k, r)
    p = bvn_cdf(h_, k_, r_).item()
    upper = min(normal_cdf(h_).item(), normal_cdf(k_).item())
    lower = max(0., normal_cdf(h_).item() + normal_cdf(k_).item() - 1)
    assert lower - 2 * ACC <= p <= upper + 2 * ACC, (lower, p, upper)


# ---------------------------------------------------------------------------------------------------------------------
# Gradients: closed forms through a custom autograd.Function.

INTERIOR = [  # h, k, rho: rho = 0 exactly (d/drho there once lost), each quadrature branch, both sides of |rho| = 0.5
    (0.4, -0.3, 0.), (-1.2, 0.8, 0.), (0., 0., 0.), (-1.3, 0.4, -0.95), (0.2, -0.7, 0.3), (2.5, 2.4, 0.97),
    (0., 0., 0.5), (0.6, 1.1, -0.49), (-0.8, -0.2, 0.51), (1.5, -2., 0.8), (-0.4, 0.9, -0.93), (0.1, 0.2, 0.2)]


def _leaves(rows):
    return [x.clone().requires_grad_() for x in torch.tensor(rows, dtype=f64).T]


def test_gradcheck_interior_including_rho_zero():
    assert torch.autograd.gradcheck(bvn_cdf, _leaves(INTERIOR), eps=1e-6, atol=1e-8)


def test_gradgradcheck_interior_including_rho_zero():
    assert torch.autograd.gradgradcheck(bvn_cdf, _leaves(INTERIOR), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize('h,k', [(0.4, -0.3), (0., 0.), (-2., 1.5)])
def test_rho_derivative_at_zero_is_the_density(h, k):
    "Plackett: dPhi2/drho = phi2(h, k; rho); at rho = 0 that is phi(h) phi(k). Also d/dh = phi(h) Phi(k) there."
    hh, kk, rr = _leaves([(h, k, 0.)])
    dh, dk, dr = torch.autograd.grad(bvn_cdf(hh, kk, rr).sum(), (hh, kk, rr))
    ph, pk = normal_pdf(hh.detach()), normal_pdf(kk.detach())
    assert_close(dr, ph * pk, rtol=4 * EPS64, atol=0)
    assert_close(dh, ph * normal_cdf(kk.detach()), rtol=4 * EPS64, atol=0)
    assert_close(dk, pk * normal_cdf(hh.detach()), rtol=4 * EPS64, atol=0)


def test_gradients_finite_at_the_edges():
    "|rho| = 1 (on and off the line h = rho k) and h, k = +-inf: finite gradients, no NaN."
    rows = [(0.3, 1., 1.), (0.3, 1., -1.), (0.5, 0.5, 1.), (0.5, -0.5, -1.), (0., 0., 1.), (math.inf, 0.2, 0.4),
            (-math.inf, 0.2, 0.4), (0.2, math.inf, -1.), (0.2, -math.inf, 1.), (math.inf, -math.inf, 0.),
            (40., -40., 0.99), (1e3, 2., 0.)]
    leaves = _leaves(rows)
    out = bvn_cdf(*leaves)
    assert torch.isfinite(out).all()
    grads = torch.autograd.grad(out.sum(), leaves, create_graph=True)
    assert all(torch.isfinite(g).all() for g in grads)
    second = torch.autograd.grad(sum(g.sum() for g in grads), leaves, allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in second)


# ---------------------------------------------------------------------------------------------------------------------
# Shapes, dtypes, errors, devices.

def test_broadcast_shape_and_dtype():
    out = bvn_cdf(torch.zeros(4, 1), torch.zeros(3), torch.tensor(0.5))
    assert (out.shape, out.dtype) == ((4, 3), f32)
    out = bvn_cdf(torch.zeros(2, 1, dtype=f64), 0., torch.linspace(-1, 1, 5, dtype=f64))
    assert (out.shape, out.dtype) == ((2, 5), f64)
    with pytest.raises(TypeError, match='found h float64, rho float32'):
        bvn_cdf(torch.zeros(2, 1, dtype=f64), 0., torch.linspace(-1, 1, 5))
    h = torch.tensor([0.3, -0.2], dtype=f64)
    before = h.clone()
    bvn_cdf(h, h, 0.4)
    assert torch.equal(h, before)


@pytest.mark.parametrize('args,exc,message', [
    ((0., 0., 1.2), ValueError, 'rho must be in [-1, 1]; largest |rho| is 1.2'),
    ((0., 0., -1.0000001), ValueError, 'rho must be in [-1, 1]'),
    ((0., 0., math.nan), ValueError, 'rho must be finite'),
    ((0., 0., math.inf), ValueError, 'rho must be finite'),
    ((math.nan, 0., 0.), ValueError, 'h must not be NaN'),
    ((0., torch.tensor([0., math.nan]), 0.), ValueError, 'k must not be NaN'),
    ((torch.ones(2), torch.ones(3), 0.), ValueError, 'shapes do not broadcast'),
    ((torch.zeros(2), torch.zeros(2, device='meta'), 0.), ValueError, 'all tensors must be on one device'),
    ((torch.zeros(2, dtype=torch.complex64), 0., 0.), TypeError, 'h must be a real floating tensor'),
    (('0', 0., 0.), TypeError, 'h must be a tensor or a number'),
])
def test_bad_inputs_raise_clear_errors(args, exc, message):
    with pytest.raises(exc) as info: bvn_cdf(*args)
    assert message in str(info.value)


@pytest.mark.parametrize('dtype', [f32, f64])
def test_device_agrees_with_cpu(device, dtype):
    gen = torch.Generator().manual_seed(1)
    h, k = (torch.randn(2000, generator=gen, dtype=f64) * 3).to(dtype), (torch.randn(2000, generator=gen, dtype=f64) * 3).to(dtype)
    r = (torch.rand(2000, generator=gen, dtype=f64) * 2 - 1).to(dtype)
    r[:8] = torch.tensor([-1., 1., 0., 0.3, 0.75, 0.925, -0.925, 1 - 1e-7], dtype=dtype)
    cpu = bvn_cdf(h, k, r)
    out = bvn_cdf(h.to(device), k.to(device), r.to(device))
    assert (out.dtype, out.device.type) == (dtype, device)
    # same algorithm, different libm: each within its accuracy of the truth (float32: 1e-6 at its inputs, above)
    assert_close(out.cpu(), cpu, rtol=0, atol=2 * ACC if dtype == f64 else 2e-6)
    leaves = [x.to(device).requires_grad_() for x in (h[:50], k[:50], r[:50])]
    grads = torch.autograd.grad(bvn_cdf(*leaves).sum(), leaves)
    assert all(torch.isfinite(g).all() and g.device.type == device for g in grads)


def test_univariate_limits_and_nan():
    "+-inf are the limits 0 and 1 with zero (finite) gradients; NaN is refused by name; numbers are accepted."
    x = torch.tensor([-math.inf, math.inf, 0.], dtype=f64, requires_grad=True)
    assert normal_pdf(x).tolist()[:2] == [0., 0.] and normal_cdf(x).tolist()[:2] == [0., 1.]
    for f in (normal_pdf, normal_cdf):
        g, = torch.autograd.grad(f(x).sum(), x)
        assert torch.isfinite(g).all() and g[:2].tolist() == [0., 0.]
        with pytest.raises(ValueError, match=r'x must not be NaN; it holds NaN \(1 of 3 entries\)'):
            f(torch.tensor([0., math.nan, 1.]))
        assert f(0.5).dtype == torch.get_default_dtype()
        assert f(torch.zeros(0, 3)).shape == (0, 3)


def test_bvn_pdf_limits_and_bad_inputs():
    "An infinite coordinate gives 0 with finite gradients; NaN, |rho| > 1, infinite rho and two dtypes are refused."
    h = torch.tensor([math.inf, -math.inf, 0.3, 0.2], dtype=f64, requires_grad=True)
    k = torch.tensor([0.5, 0.1, -math.inf, math.inf], dtype=f64, requires_grad=True)
    out = bvn_pdf(h, k, torch.tensor(0.4, dtype=f64))
    assert out.tolist() == [0.] * 4
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(out.sum(), (h, k)))
    for args, exc, message in (((math.nan, 0., 0.), ValueError, 'h must not be NaN'),
                               ((0., torch.tensor([0., math.nan]), 0.), ValueError, 'k must not be NaN'),
                               ((0., 0., 1.5), ValueError, 'rho must be in [-1, 1]; largest |rho| is 1.5'),
                               ((0., 0., -math.inf), ValueError, 'rho must be finite'),
                               ((torch.zeros(2), torch.zeros(2, dtype=f64), 0.), TypeError, 'found h float32, k float64'),
                               ((torch.ones(2), torch.ones(3), 0.), ValueError, 'shapes do not broadcast')):
        with pytest.raises(exc) as info: bvn_pdf(*args)
        assert message in str(info.value)
