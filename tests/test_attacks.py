"Gaussian attacks and the gradient family: eps(p) identities, expected logits against Monte Carlo and finite differences."
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from conftest import DEVICE_PARAMS
from netmoments.attacks import (ExpectedLogits, class_margin, expected_logits, gaussian_sparse_pixels,
                                gaussian_sparse_smooth, gaussian_targeted, gradient_perturbation, lp_perturbation,
                                sample_success, total_variation)
from netmoments.linearize import seeded


def small_net(device='cpu', dtype=torch.float64, seed=0):
    net = seeded(nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 12), nn.ReLU(),
                               nn.Linear(12, 4)), seed, dtype)
    return net.to(device)


def points(n=3, device='cpu', dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


@settings(max_examples=60)
@given(p=st.one_of(st.floats(1.05, 40.), st.sampled_from([1., 2., math.inf])),
       seed=st.integers(0, 10_000), sigma=st.floats(0.01, 10.))
def test_dual_norm_identity(p, seed, sigma):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(4, 17, generator=gen, dtype=torch.float64)
    eps = lp_perturbation(g, sigma, p)
    torch.testing.assert_close(torch.linalg.vector_norm(eps, p, dim=1), torch.full((4,), sigma, dtype=torch.float64),
                               rtol=1e-9, atol=0)
    assert ((eps * g) >= 0).all()                                  # always an ascent direction
    torch.testing.assert_close((eps * g).sum(1), sigma * torch.linalg.vector_norm(g, p / (p - 1) if 1 < p < math.inf
                               else (math.inf if p == 1 else 1), dim=1), rtol=1e-8, atol=0)   # Hoelder: <eps, g> = sigma ||g||_p*


@given(seed=st.integers(0, 10_000))
def test_limits(seed):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(3, 2, 5, generator=gen, dtype=torch.float64)
    assert torch.equal(lp_perturbation(g, 0.3, math.inf), 0.3 * g.sign())
    torch.testing.assert_close(lp_perturbation(g, 0.3, 2), 0.3 * g / g.flatten(1).norm(dim=1).view(3, 1, 1))
    one = lp_perturbation(g, 0.3, 1).flatten(1)
    top = g.flatten(1).abs().argmax(1)
    assert torch.equal((one != 0).sum(1), torch.ones(3, dtype=torch.long))
    torch.testing.assert_close(one[torch.arange(3), top], 0.3 * g.flatten(1)[torch.arange(3), top].sign())
    gap = g.flatten(1).clone()
    gap[torch.arange(3), top] *= 1.5                               # a clear largest entry: p -> 1 converges fast
    torch.testing.assert_close(lp_perturbation(gap, 0.3, 1 + 1e-3), lp_perturbation(gap, 0.3, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(lp_perturbation(g, 0.3, 1e5), lp_perturbation(g, 0.3, math.inf), atol=1e-3, rtol=0)


def test_ties_and_errors():
    g = torch.tensor([[2., -2., 1.]])
    assert torch.equal(lp_perturbation(g, 1., 1), torch.tensor([[0.5, -0.5, 0.]]))
    with pytest.raises(ValueError, match=r'p must be a number in \[1, inf\]'): lp_perturbation(g, 1., 0.9)
    with pytest.raises(ValueError, match='sigma must be >= 0'): lp_perturbation(g, -1., 2)


@pytest.mark.parametrize('device', DEVICE_PARAMS)
def test_fgsm_exact_and_clip(device):
    net, x = small_net(device), points(5, device)
    y = torch.arange(5, device=device) % 4
    xg = x.clone().requires_grad_(True)
    F.cross_entropy(net(xg), y).backward()
    eps = gradient_perturbation(net, x, y, 0.05, math.inf)
    assert eps.device == x.device and eps.dtype == x.dtype
    assert torch.equal(eps, 0.05 * xg.grad.sign())
    e2 = gradient_perturbation(net, x, y, 0.7, 2)
    torch.testing.assert_close(e2, 0.7 * xg.grad / xg.grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    ec = gradient_perturbation(net, x, y, 0.5, math.inf, clip=(0., 1.))
    assert (x + ec).min() >= 0 and (x + ec).max() <= 1


@pytest.mark.parametrize('device', DEVICE_PARAMS)
def test_expected_logits_mc(device):
    "Expected logits of the linearized net equal its Monte Carlo mean within 4 SE, per logit."
    net, M = small_net(device), points(3, device)
    E = ExpectedLogits(net, M)
    gen = torch.Generator(device=device).manual_seed(2)
    mu = 0.2 * torch.randn(M.shape, generator=gen, dtype=M.dtype, device=device)
    sigma = 0.3 * torch.rand(M.shape[1:], generator=gen, dtype=M.dtype, device=device)   # per pixel
    draws = M + mu + sigma * torch.randn((20_000, *M.shape), generator=gen, dtype=M.dtype, device=device)
    out = E.lin(draws.flatten(2))
    se = out.std(0) / 20_000**0.5
    assert ((E(mu, sigma) - out.mean(0)).abs() <= 4 * se).all()


def test_expected_logits_gradcheck():
    net, M = small_net(), points(2)
    E = ExpectedLogits(net, M)
    gen = torch.Generator().manual_seed(3)
    mu = (0.1 * torch.randn(M.shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
    sigma = torch.tensor([0.2, 0.4], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, s: E(m, s), (mu, sigma))
    sig_pix = (0.1 + 0.3 * torch.rand(M.shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: E(mu.detach(), s), (sig_pix,))


def test_propagate_agrees_at_small_sigma():
    net, M = small_net(), points(2)
    lin = expected_logits(net, M, 0., 1e-3)
    prop = expected_logits(net, M, 0., 1e-3, method='propagate')
    torch.testing.assert_close(prop, lin, atol=1e-3, rtol=0)
    torch.testing.assert_close(lin, net(M), atol=1e-3, rtol=0)


def test_attacks_recheck_by_sampling():
    "Reported sampled rates are reproduced by an independent sampling of the returned distributions."
    net, M = small_net(), points(4)
    src = net(M).argmax(1)
    target = (src + 1) % 4
    r = gaussian_targeted(net, M, target, 0.5, steps=60, samples=200, seed=3)
    assert r.mu.abs().max() <= 0.5 + 1e-12 and (r.sigma**2 <= 2 / 255**2 + 1e-15).all() and (r.sigma > 0).all()
    again = sample_success(net, M, r.mu, r.sigma, src, target, samples=200, seed=4)
    se = (r.sampled_success_rate * (1 - r.sampled_success_rate) / 200).sqrt().clamp(min=1 / 200)
    assert ((again - r.sampled_success_rate).abs() <= 4 * 2**0.5 * se + 1e-12).all()
    # the expected margin reported is the one of the returned distribution
    torch.testing.assert_close(r.expected_margin, -class_margin(ExpectedLogits(net, M)(r.mu, r.sigma), target))
    a = gaussian_sparse_pixels(net, M, 25, 1., steps=40, samples=50, relinearize=1)
    assert a.iterations == 80
    assert ((a.mu != 0).flatten(1).sum(1) <= 16).all()
    s = gaussian_sparse_smooth(net, M, 0.5, steps=100, samples=50)
    torch.testing.assert_close(s.objective, s.mu.abs().flatten(1).sum(1) + total_variation(s.mu))
    assert torch.equal(s.success, s.expected_margin <= -0.5)


def test_attack_errors():
    net, M = small_net(), points(2)
    src = net(M).argmax(1)
    with pytest.raises(ValueError, match='target equals the class'): gaussian_targeted(net, M, src, 0.1)
    with pytest.raises(ValueError, match='beta must be > 0'): gaussian_targeted(net, M, (src + 1) % 4, 0.)
    with pytest.raises(ValueError, match=r'alpha must be in \(0, 100\]'): gaussian_sparse_pixels(net, M, 0., 1.)
    with pytest.raises(ValueError, match=r'alpha must be in \(0, 100\]'): gaussian_sparse_pixels(net, M, 150., 1.)
    with pytest.raises(ValueError, match='gamma must be >= 0'): gaussian_sparse_smooth(net, M, -1.)
    with pytest.raises(ValueError, match='relinearize must be >= 0'): gaussian_targeted(net, M, (src + 1) % 4, 0.1, relinearize=-1)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).double()
    with pytest.raises(ValueError, match='no ReLU'): gaussian_targeted(linear, M, 0, 0.1)
    with pytest.raises(ValueError, match='no ReLU'): expected_logits(linear, M, 0., 0.1)


# ---------------------------------------------------------------------------------------------------------------------
# Invalid inputs raise instead of returning a plausible number; the caller's model is left as it was.

def lenet_and_digits():
    from netmoments.models import mnist_slice, pretrained
    x, y = mnist_slice()
    return pretrained('lenet-mnist'), x[:4], y[:4]


def test_nan_arguments_raise():
    net, x, y = lenet_and_digits()
    src = net(x).argmax(1)
    with pytest.raises(ValueError, match='mu must be finite'):
        sample_success(net, x, torch.full_like(x, float('nan')), 0.1, src, samples=5)
    with pytest.raises(ValueError, match='M must be finite'): sample_success(net, x * float('nan'), torch.zeros_like(x), 0.1, src)
    for p in (1, 2, math.inf):
        with pytest.raises(ValueError, match='x must be finite'): gradient_perturbation(net, x * float('nan'), y, 0.1, p)
        with pytest.raises(ValueError, match='g must be finite'): lp_perturbation(torch.tensor([[1., float('nan'), .5]]), 1., p)
    with pytest.raises(ValueError, match='sigma must be finite'): lp_perturbation(torch.ones(1, 3), float('nan'), 2)


def test_counts_and_classes_checked():
    net, M = small_net(), points(2)
    src = net(M).argmax(1)
    with pytest.raises(ValueError, match='samples must be'): sample_success(net, M, torch.zeros_like(M), 0.1, src, samples=0)
    with pytest.raises(ValueError, match='chunk must be'): sample_success(net, M, torch.zeros_like(M), 0.1, src, chunk=0)
    with pytest.raises(ValueError, match=r'target must be classes in \[0, 4\)'):
        sample_success(net, M, torch.zeros_like(M), 0.1, src, target=torch.full((2,), 4))
    with pytest.raises(ValueError, match=r'source must be classes in \[0, 4\)'):
        sample_success(net, M, torch.zeros_like(M), 0.1, torch.full((2,), -1))
    with pytest.raises(ValueError, match=r'y must be classes in \[0, 4\)'):
        gradient_perturbation(net, M, torch.full((2,), 7), 0.1, 2)


def test_sample_success_batchnorm_eval_mode_model_unchanged():
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 4)).double()
    with torch.no_grad():
        for p in m.parameters(): p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    M = points(6)
    m.train()(M)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    src = m.eval()(M).argmax(1)
    m.train()
    rate = sample_success(m, M, torch.zeros_like(M), 0., src, samples=5)
    assert m.training and all(mod.training for mod in m.modules())
    for k, v in m.state_dict().items(): assert torch.equal(v, state[k]), k
    assert torch.equal(rate, torch.zeros(6, dtype=torch.float64))    # no noise in eval mode: never fooled


# ---------------------------------------------------------------------------------------------------------------------
# Limits: zero input variance, huge sigma, empty batches, models with trainable weights.

def test_propagate_gradient_at_zero_input_variance_is_finite_and_correct():
    "Noise in a 5 x 5 window only: max pooling leaves hidden variances near 1e-315, whose ReLU is saturated."
    net, x, _ = lenet_and_digits()
    net, M = net.double(), x[:2].double()
    sig = torch.zeros(M.shape[1:], dtype=torch.float64)
    sig[0, 10:15, 10:15] = 0.3
    s = sig.clone().requires_grad_(True)
    f = lambda t: expected_logits(net, M, 0., t, method='propagate').sum()
    g, = torch.autograd.grad(f(s), s)
    assert torch.isfinite(g).all()
    assert (g[sig == 0] == 0).all()                       # d(sigma^2)/d sigma = 0 at sigma = 0: no path there
    d = torch.randn(sig.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * (sig > 0)
    h = 1e-5
    with torch.no_grad(): fd = (f(sig + h * d) - f(sig - h * d)) / (2 * h)
    torch.testing.assert_close((g * d).sum(), fd, rtol=1e-5, atol=1e-8)


def test_expected_logits_huge_sigma_scales_exactly():
    "sigma^2 overflows float64 past 1.3e154: the linearized net is evaluated at scale 1/2^k, E = k B E[relu(z/k)] + c2."
    net, M = small_net(), points(2)
    E = ExpectedLogits(net, M)
    big, bigger = E(0., 1e200), E(0., 1e210)
    assert torch.isfinite(big).all() and torch.isfinite(bigger).all()
    torch.testing.assert_close(bigger / big, torch.full_like(big, 1e10), rtol=1e-9, atol=0)   # linear in sigma there
    with pytest.raises(ValueError, match='sigma is too large'): expected_logits(net, M, 0., 1e200, method='propagate')


def test_empty_batches_give_empty_results():
    net, M = small_net(), points(2)
    assert expected_logits(net, M[:0], 0., 0.1).shape == (0, 4)
    assert expected_logits(net, M[:0], 0., 0.1, method='propagate').shape == (0, 4)
    assert sample_success(net, M[:0], 0., 0.1, torch.zeros(0, dtype=torch.long)).shape == (0,)
    a = gaussian_sparse_pixels(net, M[:0], 10., 0.5)
    assert a.mu.shape == (0, 1, 8, 8) and a.sigma.shape == a.success.shape == (0,)
    assert gaussian_targeted(net, M[:0], 1, 0.5).target.shape == (0,)
    assert gradient_perturbation(net, M[:0], torch.zeros(0, dtype=torch.long), 0.1, 2).shape == (0, 1, 8, 8)
    assert lp_perturbation(torch.zeros(0, 5), 1., 2).shape == (0, 5)


def test_attacks_on_a_model_with_trainable_weights():
    "The linearization is detached: an attack's many backward passes never reach the weights (nor fail on them)."
    net = small_net().requires_grad_(True)
    M = points(2)
    src = net(M).argmax(1)
    r = gaussian_targeted(net, M, (src + 1) % 4, 0.5, steps=5)
    assert torch.isfinite(r.expected_margin).all()
    s = gaussian_sparse_smooth(net, M, 0.1, steps=5, relinearize=1)
    assert s.iterations == 10 and torch.isfinite(s.mu).all() and all(p.grad is None for p in net.parameters())
    mu = torch.zeros_like(M, requires_grad=True)
    g, = torch.autograd.grad(expected_logits(net, M, mu, 0.1).sum(), mu)
    assert torch.isfinite(g).all()


def test_mixed_dtypes_and_bad_layers_are_refused():
    net, M = small_net(), points(2)
    with pytest.raises(TypeError, match='M is float32 but model has float64'): expected_logits(net, M.float(), 0., 0.1)
    with pytest.raises(TypeError, match='sigma float32'): expected_logits(net, M, 0., torch.tensor(0.1))
    with pytest.raises(TypeError, match='mu float32'): sample_success(net, M, torch.zeros(M.shape), 0.1, net(M).argmax(1))
    with pytest.raises(ValueError, match=r'layer must be in \[1, 2\]'): expected_logits(net, M, 0., 0.1, layer=3)
    with pytest.raises(TypeError, match='layer must be an int'): expected_logits(net, M, 0., 0.1, layer=1.5)
    with pytest.raises(ValueError, match='beta must be > 0 and finite'): gaussian_targeted(net, M, 0, float('inf'))
    with pytest.raises(ValueError, match=r'target must be classes in \[0, 4\)'): gaussian_targeted(net, M, 4, 0.1)


def test_refusals_name_the_argument_and_train_mode_models_come_back():
    net, M = small_net(), points(3)
    src = net(M).argmax(1)
    sig = torch.full(M.shape[1:], 0.1, dtype=torch.float64)
    sig[0, 0, 0] = float('nan')                                      # a per-pixel sigma was not checked
    with pytest.raises(ValueError, match='sigma must be finite'): sample_success(net, M, 0., sig, src)
    with pytest.raises(ValueError, match='logits must be finite'): class_margin(torch.tensor([[1., float('nan')]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r'c must be classes in \[0, 2\)'): class_margin(torch.tensor([[1., 2.]]), torch.tensor([2]))
    with pytest.raises(ValueError, match='steps must be >= 0'): gaussian_sparse_pixels(net, M, 10., 0.5, steps=-1)
    with pytest.raises(TypeError, match='x is float32 but model has float64'): gradient_perturbation(net, M.float(), src, 0.1, 2)
    bad = small_net()
    with torch.no_grad(): bad[0].weight[0, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match='model must have finite parameters'): gradient_perturbation(bad, M, src, 0.1, 2)
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)).double()
    with torch.no_grad():
        for p in m.parameters(): p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    m.train()(M)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    gaussian_sparse_pixels(m, M, 10., 0.5, steps=3); gradient_perturbation(m, M, src, 0.1, 2)
    expected_logits(m, M, 0., 0.1, method='propagate')
    assert m.training and all(mod.training for mod in m.modules())
    for k, v in m.state_dict().items(): assert torch.equal(v, state[k]), k
