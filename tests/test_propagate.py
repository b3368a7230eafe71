"Properties of `netmoments.propagate`: exactness where the method is exact, affine maps against autograd, MC, errors."
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from netmoments.ara import ara_moments
from netmoments.linearize import seeded
from netmoments.montecarlo import LowRankCov, mc_moments
from netmoments.propagate import PropagatedMoments, propagate_moments
from netmoments.propagate import _affine, _clark_max, _maxpool
from helpers import within

f64, f32 = torch.float64, torch.float32


def ara_net(n=5, p=9, d=3, seed=0, dtype=f64):
    return seeded(nn.Sequential(nn.Linear(n, p), nn.ReLU(), nn.Linear(p, d)), seed, dtype)


def random_input(n, seed, form, dtype=f64):
    "mu (n,), the covariance in `form` and its dense matrix."
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, generator=gen, dtype=f64)
    L = torch.randn(n, n, generator=gen, dtype=f64) / n ** 0.5
    v = torch.rand(n, generator=gen, dtype=f64) + 0.1
    F_ = torch.randn(n, 2, generator=gen, dtype=f64) / 2
    cov, dense = {'full': (L @ L.mT, L @ L.mT), 'diag': (v, v.diag()), 'scalar': (0.4, 0.4 * torch.eye(n, dtype=f64)),
                  'lowrank': (LowRankCov(F_, v), F_ @ F_.mT + v.diag())}[form]
    move = lambda x: x.to(dtype) if torch.is_tensor(x) else LowRankCov(*(t.to(dtype) for t in x)) if isinstance(x, LowRankCov) else x
    return mu.to(dtype), move(cov), dense.to(dtype)


def conv_net(seed=0, dtype=f64):
    "Every supported layer: Conv2d, BatchNorm2d, ReLU, MaxPool2d, Conv2d, ReLU, AvgPool2d, Flatten, Linear, BN1d, ReLU, Dropout, Linear."
    net = seeded(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 2),
                               nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(24, 16), nn.BatchNorm1d(16),
                               nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3)), seed, dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        net[1].weight.copy_(1 + 0.2 * torch.randn(4, generator=gen)); net[1].bias.copy_(0.1 * torch.randn(4, generator=gen))
        net[1].running_mean.copy_(0.3 * torch.randn(4, generator=gen)); net[1].running_var.copy_((0.3 * torch.randn(4, generator=gen)).exp())
    return net


def image(seed=5, batch=(), dtype=f64):
    return torch.rand(*batch, 1, 12, 12, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Exact: Linear-ReLU-Linear is ara_moments.

@pytest.mark.parametrize('form', ['full', 'diag', 'scalar', 'lowrank'])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_full_mode_is_ara_moments(form, seed):
    net = ara_net(seed=seed)
    mu, cov, dense = random_input(5, seed, form)
    ours = propagate_moments(net, mu, cov)
    ref = ara_moments(mu, dense, net[0].weight, net[0].bias, net[2].weight, net[2].bias)
    assert isinstance(ours, PropagatedMoments)
    assert_close(ours.mean, ref.mean, rtol=1e-13, atol=1e-14)
    assert_close(ours.cov, ref.cov, rtol=1e-12, atol=1e-14)
    assert_close(ours.var, ref.var, rtol=1e-12, atol=1e-14)
    for mode, rank in (('lowrank', 2), ('diag', None)):       # the mean needs only the hidden variances: exact too
        assert_close(propagate_moments(net, mu, cov, mode, rank).mean, ref.mean, rtol=1e-13, atol=1e-14)


def test_batches_and_per_point_covariances():
    net = ara_net(seed=3)
    gen = torch.Generator().manual_seed(3)
    mus = torch.randn(4, 5, generator=gen, dtype=f64)
    L = torch.randn(4, 5, 5, generator=gen, dtype=f64) / 3
    covs = L @ L.mT
    batch = propagate_moments(net, mus, covs)
    assert batch.mean.shape == (4, 3) and batch.cov.shape == (4, 3, 3) and batch.var.shape == (4, 3)
    for i in range(4):
        ref = ara_moments(mus[i], covs[i], net[0].weight, net[0].bias, net[2].weight, net[2].bias)
        assert_close(batch.cov[i], ref.cov, rtol=1e-12, atol=1e-14)


def test_float32_follows_float64():
    net64, net32 = ara_net(seed=4), ara_net(seed=4, dtype=f32)
    mu, cov, _ = random_input(5, 4, 'full')
    r64, r32 = propagate_moments(net64, mu, cov), propagate_moments(net32, mu.float(), cov.float())
    assert r32.mean.dtype == r32.cov.dtype == r32.var.dtype == f32
    assert_close(r32.cov.double(), r64.cov, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Affine layers against the explicit Jacobian.

LAYERS = [
    (nn.Linear(6, 4), (6,)),
    (nn.Conv2d(2, 3, 3), (2, 5, 5)),
    (nn.Conv2d(2, 4, 3, stride=2, padding=1), (2, 5, 6)),
    (nn.Conv2d(4, 4, 2, groups=2, dilation=2, padding=1, padding_mode='circular'), (4, 4, 4)),
    (nn.AvgPool2d(2), (3, 4, 4)),
    (nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), (2, 6, 7)),
    (nn.AvgPool2d(3, 2, 1, divisor_override=5), (1, 5, 5)),
    (nn.BatchNorm1d(5), (5,)),
    (nn.BatchNorm2d(3), (3, 3, 2)),
    (nn.BatchNorm2d(3, affine=False), (3, 2, 2)),
    (nn.Flatten(), (2, 3, 2)),
    (nn.Dropout(0.5), (4,)),
    (nn.Identity(), (3,)),
]


@pytest.mark.parametrize('layer,shape', LAYERS, ids=[f'{type(m).__name__}-{i}' for i, (m, _) in enumerate(LAYERS)])
def test_affine_maps_against_autograd_jacobian(layer, shape):
    gen = torch.Generator().manual_seed(0)
    m = layer.double().eval()
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
        m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
        if m.affine:
            with torch.no_grad(): m.weight.copy_(torch.randn(m.num_features, generator=gen))
    x = torch.randn(shape, generator=gen, dtype=f64)
    J = torch.autograd.functional.jacobian(lambda v: m(v.reshape(1, *shape)).flatten(), x.flatten())
    n = x.numel()
    L = torch.randn(n, n, generator=gen, dtype=f64)
    cov = L @ L.mT / n
    v = torch.rand(1, n, generator=gen, dtype=f64)
    with torch.no_grad():
        dense = _affine(m, cov[None], shape)[0]
        Ut, d = _affine(m, (L.mT[None], v), shape)
    assert_close(dense, J @ cov @ J.mT, rtol=1e-12, atol=1e-13)
    assert_close(Ut[0], (J @ L).mT, rtol=1e-12, atol=1e-13)
    assert_close(d[0], (J * J) @ v[0], rtol=1e-12, atol=1e-13)    # the squared rule: exact for independent inputs


# ---------------------------------------------------------------------------------------------------------------------
# Against Monte Carlo: exact with one ReLU; Clark's pair; the max of a zero-variance window.


@pytest.mark.parametrize('seed', [0, 1])
def test_one_relu_conv_net_is_exact(seed):
    "Conv2d, BatchNorm2d, ReLU, AvgPool2d, Flatten, Linear: full mode within 4 SE of every mean and covariance entry."
    base = conv_net(seed)
    net = nn.Sequential(base[0], base[1], base[2], nn.AvgPool2d(2), nn.Flatten(), seeded(nn.Linear(100, 4), seed + 7))
    mu, sigma2 = image(seed), 0.02
    exact = propagate_moments(net, mu, sigma2)
    mc = mc_moments(net, mu, sigma2, n=40_000, seed=seed)
    within(exact.mean, mc.mean, mc.mean_se)
    within(exact.cov, mc.cov, mc.cov_se)
    assert torch.linalg.eigvalsh(exact.cov).min() >= -1e-12 * exact.cov.abs().max()


def test_linear_relu_linear_against_monte_carlo():
    net = ara_net(n=4, p=8, d=3, seed=5)
    mu, cov, dense = random_input(4, 5, 'full')
    exact = propagate_moments(net, mu, cov)
    mc = mc_moments(net, mu, dense, n=50_000, seed=2)
    within(exact.mean, mc.mean, mc.mean_se)
    within(exact.cov, mc.cov, mc.cov_se)


def test_clark_pair_is_exact():
    mu = torch.tensor([0.3, -0.1, 1.], dtype=f64)
    L = torch.tensor([[1., 0., 0.], [0.7, 0.5, 0.], [-0.4, 0.3, 0.8]], dtype=f64)
    cov = L @ L.mT
    mc = mc_moments(lambda x: torch.stack([x[:, :2].amax(1), x[:, 2]], -1), mu, cov, n=100_000, seed=1)
    mean, var, P, Q = _clark_max(mu[0], cov[0, 0], mu[1], cov[1, 1], cov[0, 1])
    within(mean, mc.mean[0], mc.mean_se[0])
    within(var, mc.var[0], mc.var_se[0])
    within(P * cov[0, 2] + Q * cov[1, 2], mc.cov[0, 1], mc.cov_se[0, 1])


@pytest.mark.parametrize('pool', [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(3, 2, 1, ceil_mode=True),
                                  nn.MaxPool2d((2, 3), (1, 2), dilation=(2, 1)), nn.MaxPool2d(2, 3, ceil_mode=True)])
def test_zero_variance_max_pool_is_the_max(pool):
    x = torch.randn(2, 3, 7, 6, generator=torch.Generator().manual_seed(0), dtype=f64)
    D = x[0].numel()
    for cov in (torch.zeros(1, D, D, dtype=f64), (torch.zeros(1, 0, D, dtype=f64), torch.zeros(1, D, dtype=f64))):
        mean, _, out_shape = _maxpool(pool, x.flatten(1), cov, x.shape[1:])
        assert torch.equal(mean.reshape(2, *out_shape), pool(x))


def test_max_pool_network_against_monte_carlo():
    "Approximate (Clark's chain): the mean within 2% of the output's sd, the variance within 10%, on a Conv-ReLU-MaxPool net."
    net = seeded(nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(48, 2)), 3)
    mu = image(3, dtype=f64)[:, :10, :10]
    res = propagate_moments(net, mu, 0.01)
    mc = mc_moments(net, mu, 0.01, n=50_000, seed=0, full_cov=False)
    assert ((res.mean - mc.mean).abs() / mc.var.sqrt()).max() < 0.02
    assert ((res.var - mc.var).abs() / mc.var).max() < 0.1


def test_mean_is_exact_with_zero_covariance():
    net = conv_net(1)
    mu = image(2, batch=(2,))
    for mode, rank in (('full', None), ('lowrank', 3), ('diag', None)):
        res = propagate_moments(net, mu, 0., mode, rank)
        assert_close(res.mean, net(mu), rtol=1e-13, atol=1e-14)
        assert_close(res.var, torch.zeros_like(res.var), rtol=0, atol=1e-30)


# ---------------------------------------------------------------------------------------------------------------------
# Modes.

def test_modes_agree_where_they_should():
    net, mu = conv_net(2), image(4)
    full = propagate_moments(net, mu, 0.01)
    diag = propagate_moments(net, mu, 0.01, 'diag')
    assert diag.cov is None
    assert_close(propagate_moments(net, mu, 0.01, 'lowrank', 0).var, diag.var, rtol=1e-14, atol=0)
    low = propagate_moments(net, mu, 0.01, 'lowrank', 8)
    assert isinstance(low.cov, LowRankCov) and low.cov.factor.shape == (3, 3) and low.cov.diag.shape == (3,)
    assert_close((low.cov.factor ** 2).sum(-1) + low.cov.diag, low.var, rtol=1e-14, atol=0)
    assert torch.equal(full.cov, full.cov.mT) and torch.equal(full.var, full.cov.diagonal())
    # before the first ReLU all modes carry the covariance exactly
    head = nn.Sequential(net[0], net[1])
    ref = propagate_moments(head, mu, 0.01)
    for mode, rank in (('lowrank', 2), ('diag', None)):
        assert_close(propagate_moments(head, mu, 0.01, mode, rank).var, ref.var, rtol=1e-12, atol=1e-15)


def test_batch_is_its_points():
    net, mus = conv_net(3), image(6, batch=(3,))
    for mode, rank in (('full', None), ('lowrank', 5), ('diag', None)):
        together = propagate_moments(net, mus, 0.02, mode, rank)
        for i in range(3):
            alone = propagate_moments(net, mus[i], 0.02, mode, rank)
            assert_close(together.mean[i], alone.mean, rtol=1e-13, atol=1e-15)
            assert_close(together.var[i], alone.var, rtol=1e-12, atol=1e-15)


def test_gradients_flow_to_the_input_mean():
    net = conv_net(4)
    mu = image(1).requires_grad_()
    res = propagate_moments(net, mu, 0.01)
    (res.mean.sum() + res.var.sum()).backward()
    assert mu.grad is not None and torch.isfinite(mu.grad).all()


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1), width=st.integers(1, 12), pool=st.sampled_from([2, 3]), scale=st.floats(0.01, 3.))
def test_output_covariance_is_symmetric_psd(seed, width, pool, scale):
    """Full mode: affine maps and the exact ReLU moments keep a covariance PSD; Clark's variance at least the gain
    projection's keeps G cov G^T + its diagonal correction PSD (not guaranteed along a chain: checked here)."""
    net = seeded(nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.MaxPool2d(pool, 1), nn.Flatten(),
                               nn.Linear(2 * (6 - pool) ** 2, width), nn.ReLU(), nn.Linear(width, 3)), seed % 1000)
    mu = torch.randn(1, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=f64)
    res = propagate_moments(net, mu, scale ** 2)
    assert torch.equal(res.cov, res.cov.mT)
    assert torch.linalg.eigvalsh(res.cov).min() >= -1e-12 * res.cov.abs().max()
    low = propagate_moments(net, mu, scale ** 2, 'lowrank', 2)
    assert (low.cov.diag >= 0).all() and (low.var >= 0).all()


# ---------------------------------------------------------------------------------------------------------------------
# Errors.

def test_errors():
    net, mu = conv_net(), image()
    with pytest.raises(ValueError, match=r'module 1 of the model \(Tanh\) is not supported'):
        propagate_moments(nn.Sequential(nn.Linear(3, 4), nn.Tanh()).double(), torch.zeros(3, dtype=f64), 1.)
    with pytest.raises(ValueError, match=r'module 1 of the model \(BatchNorm2d\) is in training mode'):
        propagate_moments(conv_net().train(), mu, 1.)
    with pytest.raises(ValueError, match='has no running statistics'):
        propagate_moments(nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)).double().eval(), torch.zeros(3, dtype=f64), 1.)
    with pytest.raises(ValueError, match='returns indices'):
        propagate_moments(nn.Sequential(nn.MaxPool2d(2, return_indices=True)).double(), torch.zeros(1, 4, 4, dtype=f64), 1.)
    with pytest.raises(ValueError, match="mode must be"): propagate_moments(net, mu, 1., mode='exact')
    with pytest.raises(ValueError, match="needs rank"): propagate_moments(net, mu, 1., mode='lowrank')
    with pytest.raises(ValueError, match="needs rank"): propagate_moments(net, mu, 1., mode='lowrank', rank=-1)
    with pytest.raises(ValueError, match="rank is used by mode='lowrank' only"): propagate_moments(net, mu, 1., rank=3)
    with pytest.raises(ValueError, match='mu must have the shape of one input'): propagate_moments(net, mu[0], 1.)
    with pytest.raises(ValueError, match='does not fit module'): propagate_moments(net, mu[:, :8], 1.)
    with pytest.raises(ValueError, match='cov must be a number'): propagate_moments(net, mu, torch.ones(5, 5, dtype=f64))
    with pytest.raises(ValueError, match='cov must be >= 0'): propagate_moments(net, mu, -1.)
    with pytest.raises(ValueError, match='positive semi-definite'):
        bad = torch.eye(144, dtype=f64); bad[0, 1] = bad[1, 0] = 2.
        propagate_moments(net, mu, bad)
    with pytest.raises(ValueError, match='mu must be finite'): propagate_moments(net, mu * float('nan'), 1.)
    with pytest.raises(TypeError, match='mu is torch.float32 but the model is torch.float64'): propagate_moments(net, mu.float(), 1.)
    with pytest.raises(TypeError, match='model must be an nn.Sequential'): propagate_moments(nn.LSTM(3, 2), torch.zeros(3), 1.)


# ---------------------------------------------------------------------------------------------------------------------
# Devices: results stay where mu is (the CUDA run is skipped without a GPU).

def test_device_and_dtype_are_kept(device):
    for dtype in (f32, f64):
        net = conv_net(dtype=dtype).to(device)
        mu = image(dtype=dtype).to(device)
        for mode, rank in (('full', None), ('lowrank', 4), ('diag', None)):
            res = propagate_moments(net, mu, 0.01, mode, rank)
            assert res.mean.device.type == res.var.device.type == torch.device(device).type
            assert res.mean.dtype == res.var.dtype == dtype
        if device != 'cpu':
            ref = propagate_moments(conv_net(dtype=dtype), image(dtype=dtype), 0.01)
            assert_close(propagate_moments(net, mu, 0.01).var.cpu(), ref.var, rtol=1e-4 if dtype == f32 else 1e-10, atol=0)


# --- zero variances, overflow, bad parameters ------------------------------------------------------------------------

def _ara_net():
    return seeded(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)), 2)


@pytest.mark.parametrize('mode,rank', [('full', None), ('lowrank', 2), ('lowrank', 8), ('diag', None)])
@pytest.mark.parametrize('zeros', [[0, 1, 2, 3, 4], [0, 2, 4]])
def test_gradients_finite_at_zero_variance(mode, rank, zeros):
    "Gradients with respect to mu and cov are finite where input variances are 0, in every mode."
    mu = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    var = torch.full((5,), 0.5, dtype=torch.float64)
    var[zeros] = 0
    var.requires_grad_()
    out = propagate_moments(_ara_net(), mu, var, mode, rank)
    (out.mean.sum() + out.var.sum()).backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(var.grad).all()


def test_bad_parameters_and_overflow_are_named():
    "An infinite parameter names itself; moments that overflow on the way say so; an empty batch gives empty moments."
    net = _ara_net()
    with torch.no_grad(): net[0].weight[0, 0] = math.inf
    with pytest.raises(ValueError, match='the model parameter 0.weight must be finite'):
        propagate_moments(net, torch.zeros(5, dtype=torch.float64), 1.)
    net = _ara_net()
    with torch.no_grad(): net[0].weight.mul_(1e160)
    for mode in ('full', 'diag'):
        with pytest.raises(ValueError, match='the moments reaching a ReLU overflow float64'):
            propagate_moments(net, torch.ones(5, dtype=torch.float64), 1., mode)
    for mode, rank in (('full', None), ('lowrank', 2), ('diag', None)):
        none = propagate_moments(_ara_net(), torch.zeros(0, 5, dtype=torch.float64), 1., mode, rank)
        one = propagate_moments(_ara_net(), torch.zeros(1, 5, dtype=torch.float64), 1., mode, rank)
        assert none.mean.shape == (0, *one.mean.shape[1:]) and none.var.shape == (0, *one.var.shape[1:])
        if mode == 'full': assert none.cov.shape == (0, *one.cov.shape[1:])
        if mode == 'lowrank': assert none.cov.factor.shape == (0, *one.cov.factor.shape[1:])
    per_point = torch.zeros(0, 5, 5, dtype=torch.float64)          # one (empty) covariance per (empty) mean
    assert propagate_moments(_ara_net(), torch.zeros(0, 5, dtype=torch.float64), per_point).cov.shape[0] == 0
    with pytest.raises(ValueError, match='cov must be >= 0'):     # the covariance is still checked
        propagate_moments(_ara_net(), torch.zeros(0, 5, dtype=torch.float64), -1.)
