"Properties of `mc_moments`: recovery within standard errors, calibrated SEs, seeds, chunks, errors, devices."
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.testing import assert_close

from conftest import DEVICE_PARAMS

from netmoments.montecarlo import LowRankCov, MCMoments, mc_moments
from helpers import within

f64 = torch.float64
PROFILE = settings(max_examples=25)  # on top of the derandomized profile of conftest.py
DEVICES = DEVICE_PARAMS
FORMS = ['scalar', 'variances', 'full', 'singular', 'low rank']


def gaussian(form, shape, seed, dtype=f64, device='cpu'):
    "A random mean of `shape` and a covariance in `form`, with its dense (N, N) matrix."
    gen = torch.Generator().manual_seed(seed)
    N = math.prod(shape)
    randn = lambda *size: torch.randn(*size, generator=gen, dtype=f64)
    mu = 3 * randn(*shape)
    if form == 'scalar':
        v = float(torch.rand(1, generator=gen, dtype=f64)) * 4 + 0.05
        cov, dense = v, v * torch.eye(N, dtype=f64)
    elif form == 'variances':
        var = torch.rand(*shape, generator=gen, dtype=f64) * 4 + 0.05
        cov, dense = var, var.reshape(-1).diag()
    elif form in ('full', 'singular'):
        A = randn(N, N if form == 'full' else max(N - 1, 1))
        cov = dense = A @ A.mT + (0.1 * torch.eye(N, dtype=f64) if form == 'full' else 0)
    else:
        factor, diag = randn(N, 2), torch.rand(N, generator=gen, dtype=f64) + 0.05
        cov, dense = LowRankCov(factor, diag.reshape(shape)), factor @ factor.mT + diag.diag()
    move = lambda x: x.to(dtype=dtype, device=device) if torch.is_tensor(x) else x
    cov = LowRankCov(*map(move, cov)) if isinstance(cov, LowRankCov) else move(cov)
    return move(mu), cov, move(dense)


@PROFILE
@given(form=st.sampled_from(FORMS), shape=st.sampled_from([(1,), (3,), (4,), (1, 2, 2)]),
       seed=st.integers(0, 2**31 - 1))
def test_identity_recovers_mean_and_cov(form, shape, seed):
    mu, cov, dense = gaussian(form, shape, seed)
    r = mc_moments(lambda x: x.flatten(1), mu, cov, 20_000, seed=seed)
    within(r.mean, mu.reshape(-1), r.mean_se, 5)
    within(r.cov, dense, r.cov_se, 5)
    assert torch.equal(r.var, r.cov.diagonal()) and torch.equal(r.var_se, r.cov_se.diagonal())


@PROFILE
@given(n=st.integers(2, 1500), chunk=st.integers(1, 3000), seed=st.integers(0, 2**31 - 1))
def test_chunk_size_changes_nothing(n, chunk, seed):
    mu, cov, _ = gaussian('full', (3,), seed)
    f = lambda x: torch.cat([x.relu(), x[:, :1] * x[:, 1:2]], 1)
    a, b = mc_moments(f, mu, cov, n, seed=seed, chunk=chunk), mc_moments(f, mu, cov, n, seed=seed)
    for x, y in zip(a[:6], b[:6]): assert torch.equal(x, y)


def spread_ratio(estimates, ses):
    "Spread of `estimates` over repetitions / RMS reported SE, and 4 standard errors of that ratio (kurtosis-aware)."
    centred = estimates - estimates.mean(0)
    kurtosis = (centred**4).mean(0) / (centred**2).mean(0)**2
    return estimates.std(0) / ses.pow(2).mean(0).sqrt(), 4 * ((kurtosis - 1) / (4 * len(estimates))).sqrt()


def test_standard_errors_match_the_spread_over_seeds():
    mu = torch.tensor([0.3, -0.5], dtype=f64)
    cov = torch.tensor([[1., .6], [.6, 2.]], dtype=f64)
    f = lambda x: torch.stack([x[:, 0].relu(), x[:, 0] * x[:, 1], x[:, 1].exp()], -1)
    runs = [mc_moments(f, mu, cov, 800, seed=seed) for seed in range(400)]
    for field, se in (('mean', 'mean_se'), ('cov', 'cov_se')):
        estimates, ses = torch.stack([getattr(r, field) for r in runs]), torch.stack([getattr(r, se) for r in runs])
        ratio, tol = spread_ratio(estimates, ses)
        assert bool(((ratio - 1).abs() <= tol).all()), f'{field}: spread / SE = {ratio}, tolerance {tol}'


def test_errors_against_the_relu_closed_form():
    "Errors against E[relu(z)] and Var[relu(z)] over seeds: no bias, and their RMS is the reported SE."
    m = torch.tensor([-1., 0., 0.8], dtype=f64)
    s = torch.tensor([0.5, 1., 2.], dtype=f64)
    h = m / s
    Phi, phi = 0.5 * torch.erfc(-h / math.sqrt(2)), torch.exp(-h**2 / 2) / math.sqrt(2 * math.pi)
    mean = m * Phi + s * phi
    var = (m**2 + s**2) * Phi + m * s * phi - mean**2
    R = 300
    runs = [mc_moments(torch.relu, m, s**2, 1000, seed=seed, full_cov=False) for seed in range(R)]
    for truth, field, se in ((mean, 'mean', 'mean_se'), (var, 'var', 'var_se')):
        err = torch.stack([getattr(r, field) - truth for r in runs])
        ses = torch.stack([getattr(r, se) for r in runs])
        assert bool((err.mean(0).abs() <= 4 * err.std(0) / math.sqrt(R)).all()), f'{field} biased: {err.mean(0)}'
        ratio = err.pow(2).mean(0).sqrt() / ses.pow(2).mean(0).sqrt()
        kurtosis = (err**4).mean(0) / (err**2).mean(0)**2
        tol = 4 * ((kurtosis - 1) / (4 * R)).sqrt()
        assert bool(((ratio - 1).abs() <= tol).all()), f'{field}: RMS error / SE = {ratio}, tolerance {tol}'


def test_shift_avoids_cancellation():
    "A mean 1e8 times the spread: raw sums about 0 would lose every digit of the variance in float64."
    mu = torch.full((2,), 1e8, dtype=f64)
    cov = torch.tensor([[1., .5], [.5, 2.]], dtype=f64)
    r = mc_moments(lambda x: x, mu, cov, 20_000)
    within(r.cov, cov, r.cov_se, 5)
    within(r.mean, mu, r.mean_se, 5)


def test_diagonal_only_agrees_with_full():
    mu, cov, _ = gaussian('full', (4,), 3)
    f = lambda x: torch.cat([x.relu(), x.tanh()], 1)
    full, diag = mc_moments(f, mu, cov, 5000), mc_moments(f, mu, cov, 5000, full_cov=False)
    assert diag.cov is None and diag.cov_se is None
    assert torch.equal(full.mean, diag.mean)
    assert_close(diag.var, full.var, rtol=1e-12, atol=0)
    assert_close(diag.var_se, full.var_se, rtol=1e-10, atol=0)


def test_seeds_generators_and_global_state():
    mu, cov, _ = gaussian('low rank', (3,), 0)
    state = torch.random.get_rng_state()
    a, b = mc_moments(torch.relu, mu, cov, 1000, seed=7), mc_moments(torch.relu, mu, cov, 1000, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a[:6], b[:6]))
    assert not torch.equal(mc_moments(torch.relu, mu, cov, 1000, seed=8).mean, a.mean)
    c = mc_moments(torch.relu, mu, cov, 1000, seed=123, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a[:6], c[:6]))


def test_output_shapes_and_indicators():
    mu = torch.zeros(1, 3, 3, dtype=f64)
    r = mc_moments(lambda x: x.reshape(-1, 3, 3)[:, :2], mu, 1., 2000)   # (m, 2, 3) -> d = 6
    assert r.mean.shape == (6,) and r.cov.shape == (6, 6) and r.n == 2000 and isinstance(r, MCMoments)
    p = mc_moments(lambda x: x.flatten(1)[:, 0] > 0, mu, 1., 20_000)  # booleans: a probability, P = 1/2
    within(p.mean, torch.tensor([0.5], dtype=f64), p.mean_se, 4)
    assert_close(p.mean_se, (p.mean * (1 - p.mean) / (p.n - 1)).sqrt(), rtol=1e-9, atol=0)


def test_progress_bar_gives_the_same_result(capsys):
    a = mc_moments(torch.relu, torch.zeros(2, dtype=f64), 1., 3000, chunk=500, progress=True)
    b = mc_moments(torch.relu, torch.zeros(2, dtype=f64), 1., 3000, chunk=500)
    assert all(torch.equal(x, y) for x, y in zip(a[:6], b[:6]))
    assert '6/6' in capsys.readouterr().err


def test_large_n_streams():
    "2e5 samples in chunks of 1000: bounded memory, and the 1/sqrt(n) precision it buys."
    mu, cov, dense = gaussian('full', (3,), 11)
    r = mc_moments(lambda x: x, mu, cov, 2e5, chunk=1000)
    within(r.mean, mu, r.mean_se, 5)
    within(r.cov, dense, r.cov_se, 5)
    assert r.n == 200_000


BAD = [
    (dict(cov=-1.), ValueError, 'cov must be >= 0; smallest entry is -1'),
    (dict(cov=torch.tensor([1., -0.5, 1.])), ValueError, 'cov must be >= 0'),
    (dict(cov=torch.tensor([[1., 2., 0.], [2., 1., 0.], [0., 0., 1.]])), ValueError, 'cov must be positive semi-def'),
    (dict(cov=torch.tensor([[1., .5, 0.], [0., 1., 0.], [0., 0., 1.]])), ValueError, 'cov must be symmetric'),
    (dict(cov=torch.tensor([1., float('nan'), 1.])), ValueError, 'cov must be finite; it holds NaN'),
    (dict(cov=torch.ones(2, 2)), ValueError, 'cov must be a number, variances of shape (3,), an (3, 3) matrix'),
    (dict(cov=LowRankCov(torch.ones(2, 1), torch.ones(3))), ValueError, 'factor of cov must have shape (3, r)'),
    (dict(cov=LowRankCov(torch.ones(3, 1), torch.ones(4))), ValueError, 'diag of cov must have shape (3,)'),
    (dict(cov=LowRankCov(torch.ones(3, 1), -torch.ones(3))), ValueError, 'diag of cov must be >= 0'),
    (dict(cov=LowRankCov(torch.ones(3, 1), torch.ones(3, dtype=torch.float64))), TypeError,
     'found mu float32, factor of cov float32, diag of cov float64'),
    (dict(cov=torch.ones(3, dtype=torch.float64)), TypeError, 'found mu float32, cov float64'),
    (dict(cov=torch.ones(3, device='meta')), ValueError, 'all tensors must be on one device'),
    (dict(cov='1'), TypeError, 'cov must be a tensor or a number'),
    (dict(mu=torch.tensor([0., float('inf'), 0.])), ValueError, 'mu must be finite'),
    (dict(n=1), ValueError, 'n must be >= 2; got 1'),
    (dict(n=10.5), TypeError, 'n must be an int'),
    (dict(chunk=0), ValueError, 'chunk must be >= 1'),
    (dict(f=lambda x: x[:1]), ValueError, 'f must map a batch of 10 inputs to a tensor with 10 rows; got (1, 3)'),
    (dict(f=lambda x: 1.), ValueError, 'got float'),
    (dict(f=lambda x: x.log()), ValueError, 'f(x) must be finite; it holds NaN'),
]


@pytest.mark.parametrize('bad,exc,message', BAD, ids=[m for _, _, m in BAD])
def test_bad_inputs_raise_clear_errors(bad, exc, message):
    args = dict(f=torch.relu, mu=torch.tensor([1., -2., 0.5]), cov=1., n=10) | bad
    with pytest.raises(exc) as info: mc_moments(**args)
    assert message in str(info.value)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, f64])
@pytest.mark.parametrize('form', FORMS)
def test_devices_and_dtypes(device, dtype, form):
    mu, cov, dense = gaussian(form, (3,), 5, dtype=dtype, device=device)
    r = mc_moments(lambda x: x, mu, cov, 20_000, seed=2)
    assert {x.dtype for x in r[:6]} == {dtype} and {x.device.type for x in r[:6]} == {device}
    within(r.mean, mu, r.mean_se, 5)
    within(r.cov, dense, r.cov_se, 5)
    again = mc_moments(lambda x: x, mu, cov, 20_000, generator=torch.Generator(device=device).manual_seed(2))
    assert all(torch.equal(x, y) for x, y in zip(r[:6], again[:6]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA')
def test_cuda_generator_must_match_device():
    with pytest.raises(ValueError, match='generator must be on the device of mu'):
        mc_moments(torch.relu, torch.zeros(2, device='cuda'), 1., 10, generator=torch.Generator())


# --- scale safety: outputs up to 1e200 and beyond -------------------------------------------------------------------

@pytest.mark.parametrize('full_cov', [True, False])
def test_power_of_two_scale_is_exact(full_cov):
    "Scaling f by 2^k scales the mean, SEs and covariance exactly (bit for bit) while the result is representable."
    mu, var = torch.tensor([0.5, -1., 2.], dtype=f64), torch.tensor([1., 2., 0.5], dtype=f64)
    f = lambda x: torch.cat([torch.relu(x), x[:, :1] * x[:, 1:2]], 1)
    base = mc_moments(f, mu, var, 3000, full_cov=full_cov)
    for k in (400, 60):
        big = mc_moments(lambda x: f(x) * 2.**k, mu, var, 3000, full_cov=full_cov)
        assert torch.equal(big.mean, base.mean * 2.**k) and torch.equal(big.mean_se, base.mean_se * 2.**k)
        assert torch.equal(big.var, base.var * 4.**k) and torch.equal(big.var_se, base.var_se * 4.**k)
        if full_cov: assert torch.equal(big.cov, base.cov * 4.**k)


@pytest.mark.parametrize('dtype,scale', [(f64, 1e200), (torch.float32, 1e30)])
def test_huge_outputs_give_no_nan(dtype, scale):
    "Outputs of 1e200 (float32: 1e30): the mean and its SE are right; moments that overflow are inf, never NaN."
    mu, var = torch.tensor([1., -2.], dtype=dtype), torch.tensor([1., .25], dtype=dtype)
    for full_cov in (True, False):
        r = mc_moments(lambda x: x * scale, mu, var, 5000, full_cov=full_cov)
        for x in r[:-1]:
            if x is not None: assert not torch.isnan(x).any()
        ref = mc_moments(lambda x: x, mu, var, 5000, full_cov=full_cov)
        assert_close(r.mean / scale, ref.mean, rtol=1e-5, atol=0)
        assert_close(r.mean_se / scale, ref.mean_se, rtol=1e-5, atol=0)
        assert torch.isinf(r.var).all()


def test_scale_jump_midstream():
    "Outputs that grow by 1e150 after the first chunk: the sums are rescaled, the moments match a direct computation."
    seen = []
    def f(x):
        y = x * (1. if not seen else 1e150)
        seen.append(y)
        return y
    r = mc_moments(f, torch.zeros(2, dtype=f64), torch.tensor([1., 4.], dtype=f64), 4096, chunk=1024)
    Y = torch.cat(seen) / 1e150
    assert_close(r.mean / 1e150, Y.mean(0), rtol=1e-10, atol=1e-12)
    assert_close(r.cov / 1e300, Y.T.cov(), rtol=1e-10, atol=1e-12)
    assert torch.isfinite(r.cov_se).all()


def test_argument_checks_empty_and_counts():
    "An empty mu and non-positive counts are a ValueError naming the argument."
    with pytest.raises(ValueError, match=r'mu must have at least one entry; got shape \(0,\)'):
        mc_moments(lambda x: x, torch.zeros(0), 1., n=10)
    for kwargs, message in (({'n': 0}, 'n must be >= 2'), ({'n': -5}, 'n must be >= 2'), ({'n': 10, 'chunk': -1}, 'chunk must be >= 1')):
        with pytest.raises(ValueError, match=message): mc_moments(lambda x: x, torch.zeros(2), 1., **kwargs)
