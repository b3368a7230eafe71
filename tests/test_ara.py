"Properties of `netmoments.ara`: g(x) = B relu(Ax + c1) + c2 against Monte Carlo, methods, chunks, batches, errors."
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.testing import assert_close

from netmoments.ara import AraMoments, ara_moments, ara_second_moment_zero_mean
from netmoments.montecarlo import mc_moments
from helpers import within

f64, f32 = torch.float64, torch.float32
EPS64 = torch.finfo(f64).eps
ACC = 1e-12   # accuracy of relu_cross_moment relative to sqrt(Q_u Q_v), Q = mean^2 + var (tests/test_relu.py)


def random_net(n, p, d, seed, form='full', dtype=f64):
    "A seeded network with non-zero mu, c1, c2, and the input covariance in `form` with its dense matrix."
    gen = torch.Generator().manual_seed(seed)
    rn = lambda *shape: torch.randn(*shape, generator=gen, dtype=f64)
    A, c1, B, c2, mu = rn(p, n) / n ** 0.5, 0.5 * rn(p), rn(d, p) / p ** 0.5, rn(d), rn(n)
    if form == 'full':
        L = rn(n, n) / n ** 0.5
        cov = dense = L @ L.mT + 0.05 * torch.eye(n, dtype=f64)
    elif form == 'singular':
        L = rn(n, max(n - 1, 1)) / n ** 0.5
        cov = dense = L @ L.mT
    elif form == 'diag':
        cov = torch.rand(n, generator=gen, dtype=f64) + 0.1
        dense = cov.diag()
    else:
        cov = float(torch.rand(1, generator=gen, dtype=f64)) + 0.2
        dense = cov * torch.eye(n, dtype=f64)
    move = lambda x: x.to(dtype) if torch.is_tensor(x) else x
    return tuple(move(x) for x in (mu, cov, A, c1, B, c2)), dense.to(dtype)


def network(A, c1, B, c2):
    return lambda x: torch.relu(x @ A.mT + c1) @ B.mT + c2


def hidden(mu, dense, A, c1):
    "Hidden mean, covariance and Q = mean^2 + var, the scale of each pair moment (Cauchy-Schwarz)."
    mbar, Sbar = A @ mu + c1, A @ dense @ A.mT
    return mbar, Sbar, mbar ** 2 + Sbar.diagonal()


def rounding_scale(B, Q):
    "(|B| sqrt(Q))_i (|B| sqrt(Q))_j: the bound, entry by entry, on Cov[g] through pair moments each <= sqrt(Q_u Q_v)."
    b = B.abs() @ Q.sqrt()
    return b[:, None] * b[None, :]


# ---------------------------------------------------------------------------------------------------------------------
# Against Monte Carlo of the network itself.

@pytest.mark.parametrize('form,seed', [('full', 0), ('full', 1), ('singular', 2), ('diag', 3), ('scalar', 4)])
def test_against_monte_carlo(form, seed):
    (mu, cov, A, c1, B, c2), dense = random_net(5, 16, 3, seed, form)
    exact = ara_moments(mu, cov, A, c1, B, c2)
    mc = mc_moments(network(A, c1, B, c2), mu, dense, 100_000, seed=seed)
    within(exact.mean, mc.mean, mc.mean_se)
    within(exact.cov, mc.cov, mc.cov_se)
    assert torch.equal(exact.var, exact.cov.diagonal())


@settings(max_examples=12)
@given(n=st.integers(1, 4), p=st.integers(1, 6), d=st.integers(1, 3), seed=st.integers(0, 2**31 - 1),
       form=st.sampled_from(['full', 'singular', 'diag', 'scalar']))
def test_against_monte_carlo_small_networks(n, p, d, seed, form):
    (mu, cov, A, c1, B, c2), dense = random_net(n, p, d, seed, form)
    exact = ara_moments(mu, cov, A, c1, B, c2)
    mc = mc_moments(network(A, c1, B, c2), mu, dense, 40_000, seed=seed)
    within(exact.mean, mc.mean, mc.mean_se)
    within(exact.cov, mc.cov, mc.cov_se + 1e-15)   # + 1e-15: a unit that is never active is exactly constant


@given(n=st.integers(1, 5), p=st.integers(1, 12), d=st.integers(1, 5), seed=st.integers(0, 2**31 - 1),
       form=st.sampled_from(['full', 'singular', 'diag', 'scalar']), method=st.sampled_from(['exact', 'zero_mean', 'series']))
def test_output_covariance_is_symmetric_psd(n, p, d, seed, form, method):
    """Cov[g] = B C B^T with C = Cov[relu(z)] PSD. C's entries are within (ACC + 4 eps) sqrt(Q_u Q_v) of the truth
    (tests/test_relu.py), so B's image of the error is at most (ACC + 4 eps)(|B| sqrt Q)_i (|B| sqrt Q)_j entrywise;
    its spectral norm, the bound on a negative eigenvalue, is at most the trace (ACC + 4 eps) sum_i ((|B| sqrt Q)_i)^2.
    The series and the zero-mean covariance are PSD exactly too (a truncated series of PSD kernels; a covariance)."""
    (mu, cov, A, c1, B, c2), dense = random_net(n, p, d, seed, form)
    out = ara_moments(mu, cov, A, c1, B, c2, method=method, terms=20)
    assert isinstance(out, AraMoments) and out.cov.shape == (d, d) and out.mean.shape == (d,)
    assert torch.equal(out.cov, out.cov.mT)
    if method == 'exact':
        Q = hidden(mu, dense, A, c1)[2]
        tol = (ACC + 4 * p * EPS64) * rounding_scale(B, Q).diagonal().sum()
        assert torch.linalg.eigvalsh(out.cov).min() >= -tol


# ---------------------------------------------------------------------------------------------------------------------
# The methods against each other.

@given(n=st.integers(1, 5), p=st.integers(1, 10), d=st.integers(1, 4), seed=st.integers(0, 2**31 - 1),
       form=st.sampled_from(['full', 'singular', 'diag', 'scalar']))
def test_zero_mean_method_is_exact_at_zero_mean_and_bias(n, p, d, seed, form):
    "At mu = 0, c1 = 0 the papers' Theorem 2 covariance is exact: each pair within 2 ACC s_u s_v of the other method."
    (mu, cov, A, c1, B, c2), dense = random_net(n, p, d, seed, form)
    mu, c1 = torch.zeros_like(mu), torch.zeros_like(c1)
    old, exact = (ara_moments(mu, cov, A, c1, B, c2, method=m) for m in ('zero_mean', 'exact'))
    assert torch.equal(old.mean, exact.mean)
    Q = hidden(mu, dense, A, c1)[2]                   # = the hidden variances s_u^2 here
    assert ((old.cov - exact.cov).abs() <= (2 * ACC + 8 * p * EPS64) * rounding_scale(B, Q)).all()


def test_zero_mean_method_ignores_the_means():
    "Away from zero mean the 'old' covariance is that of the zero-mean network (the mean returned is still exact)."
    (mu, cov, A, c1, B, c2), dense = random_net(4, 8, 2, 5)
    old = ara_moments(mu, cov, A, c1, B, c2, method='zero_mean')
    centred = ara_moments(torch.zeros_like(mu), cov, A, torch.zeros_like(c1), B, c2)
    assert_close(old.cov, centred.cov, rtol=0, atol=1e-12 * centred.cov.abs().max().item())
    assert torch.equal(old.mean, ara_moments(mu, cov, A, c1, B, c2).mean)
    assert (old.cov - ara_moments(mu, cov, A, c1, B, c2).cov).abs().max() > 1e-3   # so the check above can fail


def correlated_input(n, seed, max_rho=0.5):
    "A covariance whose correlations are at most max_rho in magnitude: a shrunk random correlation matrix, rescaled."
    gen = torch.Generator().manual_seed(seed)
    L = torch.randn(n, n, generator=gen, dtype=f64)
    R = L @ L.mT
    R = R / torch.outer(R.diagonal().sqrt(), R.diagonal().sqrt())
    R = max_rho * R + (1 - max_rho) * torch.eye(n, dtype=f64)
    s = torch.rand(n, generator=gen, dtype=f64) * 1.2 + 0.5
    return R * torch.outer(s, s), gen


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_series_matches_exact_away_from_the_disjunction(seed):
    """A diagonal A makes the hidden correlations the input ones, here |rho| <= 0.5, far from 1/sqrt2. There 50 terms
    of Lemma 4 are within 1e-13 (1 + s_u s_v) of the exact pair moment (tests/test_relu_series.py), which is within
    ACC s_u s_v of the truth: Cov[g] differs by at most 1e-12 ((|B| 1)_i (|B| 1)_j + (|B| s)_i (|B| s)_j)."""
    n = 6
    cov, gen = correlated_input(n, seed)
    A = torch.diag(torch.rand(n, generator=gen, dtype=f64) + 0.5)
    mu, c1 = torch.randn(n, generator=gen, dtype=f64), 0.5 * torch.randn(n, generator=gen, dtype=f64)
    B, c2 = torch.randn(3, n, generator=gen, dtype=f64), torch.randn(3, generator=gen, dtype=f64)
    Sbar = A @ cov @ A.mT
    rho = Sbar / torch.outer(Sbar.diagonal().sqrt(), Sbar.diagonal().sqrt())
    assert (rho - torch.eye(n, dtype=f64)).abs().max() <= 0.5 + 1e-12
    series, exact = (ara_moments(mu, cov, A, c1, B, c2, method=m, terms=50) for m in ('series', 'exact'))
    one, s = B.abs().sum(1), B.abs() @ Sbar.diagonal().sqrt()
    bound = 1e-12 * (torch.outer(one, one) + torch.outer(s, s))
    assert ((series.cov - exact.cov).abs() <= bound).all(), (series.cov - exact.cov).abs().max()
    assert torch.equal(series.mean, exact.mean)
    five = ara_moments(mu, cov, A, c1, B, c2, method='series', terms=1)
    assert (five.cov - exact.cov).abs().max() > 1e3 * bound.max()     # truncation shows: the check above can fail


def test_series_falls_back_at_singular_pairs():
    "A singular input (|rho| = 1 between hidden units) and a dead unit (zero variance): the series method stays exact."
    (mu, cov, A, c1, B, c2), dense = random_net(2, 6, 2, 9, 'singular')
    A = A.clone()
    A[0] = 0.
    series, exact = (ara_moments(mu, cov, A, c1, B, c2, method=m, terms=50) for m in ('series', 'exact'))
    assert torch.isfinite(series.cov).all()
    Q = hidden(mu, dense, A, c1)[2]
    assert ((series.cov - exact.cov).abs() <= 1e-2 * rounding_scale(B, Q)).all()


# ---------------------------------------------------------------------------------------------------------------------
# Chunks, the variance-only mode, covariance forms, batches, dtypes, gradients.

@pytest.mark.parametrize('method', ['exact', 'series', 'zero_mean'])
def test_chunks_and_variance_only_change_nothing(method):
    "Only the order of the sums over hidden units changes: within 2 p eps of (|B| |C| |B|^T)."
    (mu, cov, A, c1, B, c2), dense = random_net(5, 13, 4, 6)
    p = A.shape[0]
    ref = ara_moments(mu, cov, A, c1, B, c2, method=method)
    mbar, Sbar, Q = hidden(mu, dense, A, c1)
    tol = 2 * p * EPS64 * rounding_scale(B, Q) + 1e-300
    for chunk in (1, 3, p, p + 5):
        out = ara_moments(mu, cov, A, c1, B, c2, method=method, chunk=chunk)
        assert ((out.cov - ref.cov).abs() <= tol).all(), chunk
        assert torch.equal(out.mean, ref.mean)
        var = ara_moments(mu, cov, A, c1, B, c2, method=method, chunk=chunk, full=False)
        assert var.cov is None
        assert ((var.var - ref.var).abs() <= tol.diagonal()).all(), chunk


def test_covariance_forms_agree():
    (mu, cov, A, c1, B, c2), dense = random_net(4, 9, 3, 12, 'diag')
    Q = hidden(mu, dense, A, c1)[2]
    tol = 4 * 9 * EPS64 * rounding_scale(B, Q)
    for a, b in ((cov, dense), (0.7, 0.7 * torch.eye(4, dtype=f64)), (torch.tensor(0.7, dtype=f64), torch.full((4,), 0.7, dtype=f64))):
        x, y = ara_moments(mu, a, A, c1, B, c2), ara_moments(mu, b, A, c1, B, c2)
        assert ((x.cov - y.cov).abs() <= tol * (1 if a is cov else 2)).all()


def test_batches_broadcast():
    "A batch of networks (2, 1, ...) against a batch of inputs (3, ...): each entry is the unbatched result."
    gen = torch.Generator().manual_seed(8)
    n, p, d = 3, 7, 2
    rn = lambda *s: torch.randn(*s, generator=gen, dtype=f64)
    A, c1, B, c2 = rn(2, 1, p, n), rn(p), rn(2, 1, d, p), rn(d)
    mu = rn(3, n)
    L = rn(3, n, n)
    cov = L @ L.mT / n
    out = ara_moments(mu, cov, A, c1, B, c2)
    assert (out.mean.shape, out.cov.shape, out.var.shape) == ((2, 3, d), (2, 3, d, d), (2, 3, d))
    for i in range(2):
        for j in range(3):
            one = ara_moments(mu[j], cov[j], A[i, 0], c1, B[i, 0], c2)
            assert_close(out.mean[i, j], one.mean, rtol=0, atol=8 * EPS64 * one.mean.abs().max().item())
            assert_close(out.cov[i, j], one.cov, rtol=0, atol=8 * p * EPS64 * one.cov.abs().max().item())
    v = ara_moments(mu, cov.diagonal(dim1=-2, dim2=-1), A, c1, B, c2, full=False, chunk=2)
    assert v.var.shape == (2, 3, d) and v.cov is None
    s = ara_moments(mu[0], 0.5, A, c1, B, c2)
    assert s.cov.shape == (2, 1, d, d)


def test_float32_follows_float64():
    args, dense = random_net(5, 16, 3, 0)
    ref = ara_moments(*args)
    out = ara_moments(*(x.float() if torch.is_tensor(x) else x for x in args))
    assert out.cov.dtype == f32 and out.mean.dtype == f32
    assert_close(out.cov.double(), ref.cov, rtol=0, atol=1e-5 * ref.cov.abs().max().item())
    assert_close(out.mean.double(), ref.mean, rtol=0, atol=1e-5 * ref.mean.abs().max().item())


@pytest.mark.parametrize('method', ['exact', 'series', 'zero_mean'])
@pytest.mark.parametrize('form', ['full', 'singular', 'diag', 'scalar'])
def test_gradients_reach_every_parameter(method, form):
    args, _ = random_net(3, 6, 2, 13, form)
    leaves = [torch.as_tensor(x, dtype=f64).clone().requires_grad_() for x in args]
    out = ara_moments(*leaves, method=method, terms=10)
    grads = torch.autograd.grad(out.mean.sum() + out.cov.sum(), leaves, allow_unused=True)
    for name, g in zip(('mu', 'cov', 'A', 'c1', 'B', 'c2'), grads):
        if method == 'zero_mean' and name in ('mu', 'c1'):
            assert g is not None and torch.isfinite(g).all()     # through the mean only
            continue
        assert g is not None and torch.isfinite(g).all(), (name, g)


def test_gradcheck_exact():
    "float64 finite differences, the covariance through a factor (a perturbed cov would not be symmetric)."
    (mu, cov, A, c1, B, c2), _ = random_net(3, 4, 2, 14)
    L = torch.linalg.cholesky(cov)
    leaves = [x.clone().requires_grad_() for x in (mu, L, A, c1, B, c2)]
    def f(mu, L, *rest):
        out = ara_moments(mu, L @ L.mT, *rest)
        return out.mean, out.cov
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------------
# Bibi et al. 2018, Theorem 2 as published and corrected.


def theorem2_net():
    gen = torch.Generator().manual_seed(2018)
    n, p, d = 4, 12, 3
    A = torch.randn(p, n, generator=gen, dtype=f64)
    B = torch.randn(d, p, generator=gen, dtype=f64) / p ** 0.5
    c2 = torch.tensor([0.5, -2., 3.], dtype=f64)
    return 0.3 * torch.eye(n, dtype=f64), A, B, c2


def test_theorem2_published_minus_corrected_is_c2_minus_c2_squared():
    cov, A, B, c2 = theorem2_net()
    printed = ara_second_moment_zero_mean(cov, A, B, c2, published=True)
    fixed = ara_second_moment_zero_mean(cov, A, B, c2)
    assert_close(printed - fixed, c2 - c2 ** 2, rtol=0, atol=64 * EPS64 * fixed.abs().max().item())


def test_theorem2_corrected_agrees_with_monte_carlo_and_the_exact_moments():
    cov, A, B, c2 = theorem2_net()
    n = A.shape[1]
    zero_n, zero_p = torch.zeros(n, dtype=f64), torch.zeros(A.shape[0], dtype=f64)
    fixed = ara_second_moment_zero_mean(cov, A, B, c2)
    mc = mc_moments(lambda x: (torch.relu(x @ A.mT) @ B.mT + c2) ** 2, zero_n, cov, 100_000, seed=1, full_cov=False)
    within(fixed, mc.mean, mc.mean_se)
    exact = ara_moments(zero_n, cov, A, zero_p, B, c2)
    assert_close(fixed, exact.var + exact.mean ** 2, rtol=1e-12, atol=0)
    for form in (0.3, torch.full((n,), 0.3, dtype=f64)):   # number and variances give the same
        assert_close(ara_second_moment_zero_mean(form, A, B, c2), fixed, rtol=1e-13, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Errors.

def bad_cases():
    (mu, cov, A, c1, B, c2), _ = random_net(4, 6, 3, 0)
    not_psd = torch.eye(4, dtype=f64)
    not_psd[0, 1] = not_psd[1, 0] = 2.
    asym = cov + torch.triu(torch.ones(4, 4, dtype=f64), 1)
    base = dict(mu=mu, cov=cov, A=A, c1=c1, B=B, c2=c2)
    return base, [
        (dict(mu=mu[:3]), ValueError, 'mu does not fit A'),
        (dict(mu=torch.tensor(1., dtype=f64)), ValueError, 'mu does not fit A'),
        (dict(c1=c1[:5]), ValueError, 'c1 does not fit A'),
        (dict(B=B[:, :5]), ValueError, 'B does not fit A'),
        (dict(c2=c2[:2]), ValueError, 'c2 does not fit A'),
        (dict(A=A[0]), ValueError, 'A and B must be matrices'),
        (dict(B=B[0]), ValueError, 'A and B must be matrices'),
        (dict(cov=cov[:3, :3]), ValueError, 'cov must be a number, variances (..., 4) or a matrix (..., 4, 4)'),
        (dict(cov=torch.ones(5, dtype=f64)), ValueError, 'cov must be a number, variances (..., 4)'),
        (dict(cov=not_psd), ValueError, 'cov must be positive semi-definite'),
        (dict(cov=asym), ValueError, 'cov must be symmetric'),
        (dict(cov=-cov), ValueError, 'cov must have a non-negative diagonal'),
        (dict(cov=-1.), ValueError, 'cov must be >= 0'),
        (dict(cov=torch.tensor([1., -0.5, 1., 1.], dtype=f64)), ValueError, 'cov must be >= 0'),
        (dict(cov=torch.full((4,), math.nan, dtype=f64)), ValueError, 'cov must be finite'),
        (dict(mu=torch.full((4,), math.inf, dtype=f64)), ValueError, 'mu must be finite'),
        (dict(A=A.clone().fill_(math.nan)), ValueError, 'A must be finite'),
        (dict(c2=c2.to('meta')), ValueError, 'all tensors must be on one device'),
        (dict(A=A.to('meta')), ValueError, 'all tensors must be on one device'),
        (dict(method='lemma5'), ValueError, "method must be 'exact', 'series' or 'zero_mean'; got 'lemma5'"),
        (dict(chunk=0), ValueError, 'chunk must be >= 1; got 0'),
        (dict(chunk=-3), ValueError, 'chunk must be >= 1'),
        (dict(cov='1'), TypeError, 'cov must be a tensor or a number'),
    ]


BASE, BAD = bad_cases()


@pytest.mark.parametrize('bad,exc,message', BAD, ids=[f'{list(b)[0]}: {m}' for b, _, m in BAD])
def test_bad_inputs_raise_clear_errors(bad, exc, message):
    with pytest.raises(exc) as info: ara_moments(**(BASE | bad))
    assert message in str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# Devices.

@pytest.mark.parametrize('dtype', [f32, f64])
@pytest.mark.parametrize('method', ['exact', 'series', 'zero_mean'])
def test_device_agrees_with_cpu(device, dtype, method):
    args, _ = random_net(6, 40, 5, 21, 'full', dtype)
    cpu = ara_moments(*args, method=method, chunk=7)
    out = ara_moments(*(x.to(device) if torch.is_tensor(x) else x for x in args), method=method, chunk=7)
    assert (out.cov.dtype, out.cov.device.type, out.mean.device.type) == (dtype, device, device)
    tol = (1e-12 if dtype == f64 else 1e-5) * cpu.cov.abs().max().item()
    assert_close(out.cov.cpu(), cpu.cov, rtol=0, atol=tol)
    assert_close(out.mean.cpu(), cpu.mean, rtol=0, atol=tol)


# --- huge means, zero variances, overflow ----------------------------------------------------------------------------

def _net(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(4, 3, dtype=dtype, generator=g), torch.randn(2, 4, dtype=dtype, generator=g)
    return A, torch.zeros(4, dtype=dtype), B, torch.zeros(2, dtype=dtype)


@pytest.mark.parametrize('dtype,scale', [(torch.float64, 1e160), (torch.float32, 1e30)])
def test_huge_mean_covariance(dtype, scale):
    "Hidden means of +-1e160 (float32: 1e30): the covariance is the linear one through the active units, not NaN."
    A, c1, B, c2 = _net(dtype)
    mu = torch.tensor([1., 0., 0.], dtype=dtype) * scale          # hidden means A[:, 0] * scale: both signs
    active = (A[:, 0] > 0).to(dtype)
    want = (B * active) @ A @ A.mT @ (B * active).mT               # the units that are on pass z; the others give 0
    for method in ('exact', 'series'):
        res = ara_moments(mu, 1., A, c1, B, c2, method=method)
        assert torch.isfinite(res.cov).all() and torch.isfinite(res.mean).all()
        if method == 'exact': assert_close(res.cov, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('method', ['exact', 'series', 'zero_mean'])
def test_gradients_finite_at_zero_variance(method):
    "Gradients with respect to mu and the input variances are finite at zero variance, for every method."
    A, c1, B, c2 = _net()
    mu = torch.tensor([0.3, -1., 0.5], dtype=torch.float64, requires_grad=True)
    for var0 in ([0., 0., 0.], [0., 1., 0.]):
        var = torch.tensor(var0, dtype=torch.float64, requires_grad=True)
        res = ara_moments(mu, var, A, c1, B, c2, method=method)
        (res.mean.sum() + res.cov.sum()).backward()
        assert torch.isfinite(var.grad).all() and torch.isfinite(mu.grad).all(), (method, var.grad)
        mu.grad = None


def test_overflow_gives_the_limits():
    """Hidden moments beyond the float range (A of 2^530: variances of 2^1060; means of 1e308) give the limits, +-inf
    or the finite values they are, never NaN (they used to be refused with an error)."""
    A, c1, B, c2 = _net()
    mu = torch.ones(3, dtype=torch.float64)
    for method in ('exact', 'series', 'zero_mean'):
        base = ara_moments(mu, 1., A, c1, B, c2, method=method)
        wide = ara_moments(mu, 1., A * 2. ** 530, c1, B, c2, method=method)     # relu is positively homogeneous
        assert_close((wide.mean - c2) / 2. ** 530, base.mean - c2, rtol=1e-14, atol=0)
        assert torch.equal(wide.cov, base.cov.sign() * math.inf), method
        far = ara_moments(torch.full((3,), 1e308, dtype=torch.float64), 0., A, c1, B, c2, method=method)
        want = 1e308 * (B @ (A @ mu).clamp(min=0))                                # no noise: B relu(A mu), overflowing
        assert_close(far.mean, want + c2, rtol=1e-13, atol=0)
        assert torch.equal(far.cov, torch.zeros_like(far.cov))
    second = ara_second_moment_zero_mean(1., A * 1e160, B, c2)
    assert torch.equal(second, torch.full_like(second, math.inf))
    with pytest.raises(ValueError, match='mu must be finite; it holds infinite values'):
        ara_moments(torch.full((3,), math.inf, dtype=torch.float64), 1., A, c1, B, c2)


def test_argument_checks():
    "Empty layers and non-integer or non-positive counts are refused by name, before any work."
    A, c1, B, c2 = _net()
    mu = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match='A and B must have at least one row and column'):
        ara_moments(mu, 1., A[:0], c1[:0], B[:, :0], c2)
    with pytest.raises(TypeError, match='chunk must be an int; got float'):
        ara_moments(mu, 1., A, c1, B, c2, chunk=2.5)
    for kwargs, message in (({'chunk': 0}, 'chunk must be >= 1; got 0'), ({'chunk': -3}, 'chunk must be >= 1'),
                            ({'method': 'series', 'terms': 0}, 'terms must be >= 1; got 0')):
        with pytest.raises(ValueError, match=message): ara_moments(mu, 1., A, c1, B, c2, **kwargs)
    assert ara_moments(torch.zeros(0, 3, dtype=torch.float64), 1., A, c1, B, c2).mean.shape == (0, 2)


@given(st.sampled_from([math.nan, math.inf]), st.sampled_from(['mu', 'cov', 'A', 'c1', 'B', 'c2']))
def test_non_finite_arguments_are_named(bad, name):
    "A NaN or infinite entry in any argument is refused with that argument's name."
    A, c1, B, c2 = _net()
    args = dict(mu=torch.zeros(3, dtype=torch.float64), cov=torch.ones(3, dtype=torch.float64), A=A, c1=c1, B=B, c2=c2)
    args[name] = args[name].clone()
    args[name].view(-1)[0] = bad
    with pytest.raises(ValueError, match=f'{name} must be finite'): ara_moments(**args)


def test_batch_and_dtype_messages_name_the_arguments():
    "cov's batch is checked with the others; Theorem 2's messages name no mean or c1 (it has neither argument)."
    A, c1, B, c2 = _net()
    mu = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r'batch dimensions do not broadcast: mu \(2,\), cov \(5,\)'):
        ara_moments(mu, torch.ones(5, 3, dtype=torch.float64), A, c1, B, c2)
    with pytest.raises(ValueError) as info:
        ara_second_moment_zero_mean(torch.ones(5, 3, dtype=torch.float64), A.expand(2, 4, 3), B, c2)
    assert str(info.value) == 'batch dimensions do not broadcast: cov (5,), A (2,), B (), c2 ()'
    with pytest.raises(TypeError) as info: ara_second_moment_zero_mean(1., A, B.float(), c2)
    assert 'found A float64, B float32, c2 float64' in str(info.value) and ' mu ' not in str(info.value)
    assert ara_moments(mu[:0], torch.ones(3, dtype=torch.float64), A, c1, B, c2).cov.shape == (0, 2, 2)
    assert ara_second_moment_zero_mean(torch.ones(0, 3, dtype=torch.float64), A, B, c2).shape == (0, 2)
