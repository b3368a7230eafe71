"Properties of `netmoments.survival`: orthant probabilities, the Cantelli bound, survival against Monte Carlo, errors."
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.testing import assert_close

from conftest import DEVICE_PARAMS
from netmoments.gaussian import normal_cdf
from netmoments.survival import (analytic_logits, cantelli_survival, fooling_map, margin_moments, noise_survival,
                                 noise_survival_mc, orthant_probability, survival_grid, topk_agreement,
                                 universal_perturbation)

f64, f32 = torch.float64, torch.float32
pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:DeprecationWarning')


def ara_net(n=6, p=8, d=4, seed=0, bias=0.1, dtype=f64, device='cpu'):
    "Linear-ReLU-Linear: its own two-stage linearization. bias=40 keeps the ReLU on: Gaussian logits for sigma <= 4."
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(n, p), nn.ReLU(), nn.Linear(p, d)).to(dtype)
    with torch.no_grad():
        for lin in (net[0], net[2]):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g, dtype=dtype) / lin.weight.shape[1] ** 0.5)
        net[0].bias.copy_(bias + 0.3 * torch.randn(p, generator=g, dtype=dtype))
        net[2].bias.copy_(0.3 * torch.randn(d, generator=g, dtype=dtype) - net[2].weight @ net[0].bias)   # no offset
    return net.to(device).eval().requires_grad_(False)


def inputs(N=12, n=6, seed=1, dtype=f64, device='cpu'):
    return torch.rand(N, n, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


# ---------------------------------------------------------------------------------------------------------------------
# Orthant probabilities and the Cantelli bound on given moments.

@settings(max_examples=25)
@given(st.floats(-3, 3), st.floats(0.05, 3))
def test_one_margin_is_normal_cdf(m, s):
    res = orthant_probability(torch.tensor([m], dtype=f64), torch.tensor([[s * s]], dtype=f64))
    assert res.se.item() == 0
    assert_close(res.probability, normal_cdf(torch.tensor(m / s, dtype=f64)), rtol=0, atol=1e-7)


@pytest.mark.parametrize('K', [2, 4, 9])
def test_orthant_against_gaussian_sampling(K):
    g = torch.Generator().manual_seed(K)
    W = torch.randn(5, K, K + 2, generator=g, dtype=f64)
    C, m = W @ W.mT / (K + 2), 0.5 + torch.randn(5, K, generator=g, dtype=f64)
    res = orthant_probability(m, C, samples=2048)
    draws = m[:, None, :] + torch.randn(5, 200_000, K, generator=g, dtype=f64) @ torch.linalg.cholesky(C).mT
    p = (draws > 0).all(-1).to(f64).mean(-1)
    se = (p * (1 - p) / 200_000).sqrt()
    assert_close(res.probability, p, rtol=0, atol=(4 * (se**2 + res.se**2).sqrt()).max().item() + 1e-9)


def test_orthant_singular_and_zero_cov():
    m = torch.tensor([[1.0, 2.0, 0.5], [1.0, -0.1, 3.0]], dtype=f64)
    res = orthant_probability(m, torch.zeros(2, 3, 3, dtype=f64))
    assert_close(res.probability, torch.tensor([1.0, 0.0], dtype=f64))
    C = torch.ones(3, 3, dtype=f64)                    # rank one: D = m + t (1, 1, 1), so P = P(t > -min m) = Phi(min m)
    res = orthant_probability(m[:1], C[None])
    assert_close(res.probability, normal_cdf(torch.tensor([0.5], dtype=f64)), rtol=0, atol=4 * res.se.item() + 1e-6)


def test_cantelli_is_below_gaussian_orthant():
    g = torch.Generator().manual_seed(7)
    W = torch.randn(200, 5, 7, generator=g, dtype=f64)
    C, m = W @ W.mT / 7, 3 * torch.rand(200, 5, generator=g, dtype=f64)
    res = orthant_probability(m, C)
    low = cantelli_survival(m, C.diagonal(dim1=-2, dim2=-1))
    assert ((low >= 0) & (low <= 1)).all()
    assert (low <= res.probability + 4 * res.se + 1e-9).all()


def test_margin_moments_direct():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(4, 5, 5, generator=g, dtype=f64)
    mean, cov, c = torch.randn(4, 5, generator=g, dtype=f64), W @ W.mT, torch.tensor([0, 4, 2, 2])
    mm, mc = margin_moments(mean, cov, c)
    for r in range(4):
        ks = [k for k in range(5) if k != c[r]]
        M = torch.zeros(4, 5, dtype=f64)
        M[:, c[r]] = 1
        M[range(4), ks] = -1
        assert_close(mm[r], M @ mean[r])
        assert_close(mc[r], M @ cov[r] @ M.T)


# ---------------------------------------------------------------------------------------------------------------------
# noise_survival against Monte Carlo through the real network.

@pytest.mark.parametrize('device', DEVICE_PARAMS)
def test_two_classes_is_exact_normal_cdf(device):
    net, x = ara_net(d=2, seed=3, device=device), inputs(device=device)
    res = noise_survival(net, x, 0.4)
    assert (res.se == 0).all()
    assert_close(res.probability, normal_cdf(res.margin_mean[:, 0] / res.margin_var[:, 0].sqrt()), rtol=0, atol=1e-7)


@pytest.mark.parametrize('device', DEVICE_PARAMS)
def test_gaussian_logits_gaussian_equals_mc_and_cantelli_below(device):
    "With the ReLU always on, the logits are exactly Gaussian: 'gaussian' = MC within 4 SE, 'cantelli' <= MC."
    net, x = ara_net(bias=40., device=device), inputs(N=16, device=device)
    sigma = torch.linspace(0.2, 4.0, 16, dtype=f64, device=device)   # bias 40 stays > 6 hidden sds from 0
    ga = noise_survival(net, x, sigma, 'gaussian', samples=2048)
    ca = noise_survival(net, x, sigma, 'cantelli')
    mc = noise_survival_mc(net, x, sigma, samples=20_000, seed=5)
    assert ga.probability.device.type == device
    assert (mc.probability < 0.999).sum() >= 4          # the check is not vacuous
    assert (ga.probability - mc.probability).abs().le(4 * (ga.se**2 + mc.se**2).sqrt() + 1e-9).all()
    assert (ca.probability <= mc.probability + 4 * mc.se + 1e-9).all()
    assert_close(ga.margin_mean, mc.margin_mean, rtol=0, atol=(4 * (mc.margin_var / 20_000).sqrt()).max().item())


@pytest.mark.parametrize('device', DEVICE_PARAMS)
def test_active_relu_network_moments_match_mc(device):
    "On an Affine-ReLU-Affine net (linearization exact), the analytic margin moments are those of the real net."
    net, x = ara_net(n=5, p=10, d=3, bias=0.0, seed=9, device=device), inputs(N=8, n=5, device=device)
    ga = noise_survival(net, x, 0.5, samples=2048)
    mc = noise_survival_mc(net, x, 0.5, samples=20_000, seed=3)
    se_m = (mc.margin_var / 20_000).sqrt()
    assert_close(ga.margin_mean, mc.margin_mean, rtol=0, atol=(4 * se_m).max().item())
    assert_close(ga.margin_var, mc.margin_var, rtol=0.06, atol=1e-6)   # variance SE ~ var sqrt(2/n) = 1% here
    # the Cantelli bound uses only these exact moments, so it bounds the real survival
    ca = cantelli_survival(ga.margin_mean, ga.margin_var)
    assert (ca <= mc.probability + 4 * mc.se + 1e-9).all()


@pytest.mark.parametrize('device', DEVICE_PARAMS)
def test_dtype_device_per_pixel_sigma_and_shift(device):
    net, x = ara_net(dtype=f32, device=device), inputs(dtype=f32, device=device)
    res = noise_survival(net, x, torch.full((6,), 0.3, device=device), 'cantelli')
    assert res.probability.dtype == f32 and res.probability.device.type == device and res.probability.shape == (12,)
    same = noise_survival(net, x, 0.3, 'cantelli')
    assert_close(res.probability, same.probability)
    zero = noise_survival(net, x, 0.0, 'gaussian')
    assert_close(zero.probability, torch.ones(12, device=device))
    shifted = analytic_logits(net, x, 1e-3, shift=torch.full((6,), 0.2, device=device))
    assert_close(shifted, net(x + 0.2), rtol=1e-3, atol=1e-3)


def test_errors():
    net, x = ara_net(), inputs()
    with pytest.raises(ValueError, match='sigma must be >= 0'): noise_survival(net, x, -0.1)
    with pytest.raises(ValueError, match='sigma must be >= 0'): noise_survival_mc(net, x, torch.full((12,), -1.0, dtype=f64))
    with pytest.raises(ValueError, match='sigma must be a number, one per sample'): noise_survival(net, x, torch.ones(5, dtype=f64))
    with pytest.raises(ValueError, match="method must be 'gaussian' or 'cantelli'"): noise_survival(net, x, 0.1, 'mc')
    with pytest.raises(ValueError, match='x must be a batch'): noise_survival(net, x[0], 0.1)
    with pytest.raises(ValueError, match='does not broadcast'): noise_survival(net, x, 0.1, shift=torch.ones(3, dtype=f64))
    with pytest.raises(ValueError, match='0 ReLU modules'): noise_survival(nn.Sequential(nn.Linear(6, 2)).double(), x, 0.1)
    with pytest.raises(ValueError, match='samples must be >= 2'): noise_survival_mc(net, x, 0.1, samples=1)
    with pytest.raises(TypeError, match='sigma must be a number or a tensor'): noise_survival(net, x, 'big')
    with pytest.raises(ValueError, match='cov must be'): orthant_probability(torch.zeros(3), torch.eye(2))


# ---------------------------------------------------------------------------------------------------------------------
# Universal perturbation, top-k agreement and fooling maps on a small conv net.

def conv_net(seed=0):
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(),
                        nn.Linear(16, 4)).double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=f64) * (2 / m.weight[0].numel()) ** 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g, dtype=f64))
    return net.eval().requires_grad_(False)


def test_universal_perturbation_bounded_and_fools():
    net = conv_net()
    x = torch.rand(20, 1, 10, 10, generator=torch.Generator().manual_seed(0), dtype=f64)
    for p, xi in ((2, 2.0), (float('inf'), 0.3)):
        u = universal_perturbation(net, x, xi=xi, p=p, target=0.5, passes=3)
        assert torch.linalg.vector_norm(u.v.flatten(), ord=p) <= xi * (1 + 1e-9)
        assert u.fooling_rate == (net(x + u.v).argmax(-1) != net(x).argmax(-1)).double().mean().item()
        assert u.fooling_rate > 0
    with pytest.raises(ValueError, match='xi must be > 0'): universal_perturbation(net, x, xi=0.0)
    with pytest.raises(ValueError, match='p must be 2'): universal_perturbation(net, x, xi=1.0, p=1)


def test_topk_agreement():
    a = torch.tensor([[4., 3., 2., 1.], [1., 2., 3., 4.]])
    assert topk_agreement(a, a.flip(0).flip(0), 4).item() == 1.0
    assert topk_agreement(a, a.flip(-1), 1).item() == 0.0


def test_fooling_map_matches_masked_analytic_logits_and_mc():
    net = conv_net(1)
    x = torch.rand(2, 1, 10, 10, generator=torch.Generator().manual_seed(4), dtype=f64)
    fm = fooling_map(net, x, 0.5, window=3, layer=1)
    assert fm.expected_margin.shape == (2, 8, 8) and fm.fooled.dtype == torch.bool
    clean = net(x)
    top2 = clean.topk(2, -1).values
    assert_close(fm.margin_drop + fm.expected_margin, (top2[:, 0] - top2[:, 1])[:, None, None].expand(2, 8, 8))
    for i, j in [(0, 0), (3, 5), (7, 7)]:
        mask = torch.zeros(1, 1, 10, 10, dtype=f64)
        mask[..., i:i + 3, j:j + 3] = 0.5
        z = analytic_logits(net, x, mask.expand(2, 1, 10, 10), layer=1)
        c = fm.prediction
        zc = z.gather(-1, c[:, None])[:, 0]
        assert_close(fm.expected_margin[:, i, j], zc - z.scatter(-1, c[:, None], float('-inf')).amax(-1))
    with pytest.raises(ValueError, match='window must be in'): fooling_map(net, x, 0.5, window=11)
    with pytest.raises(ValueError, match='images'): fooling_map(net, x.flatten(1), 0.5)


# ---------------------------------------------------------------------------------------------------------------------
# Invalid counts raise before any work; a model in train mode is evaluated in eval mode and left as it was.

def test_counts_checked():
    net, x = ara_net(), inputs(4)
    with pytest.raises(ValueError, match='chunk must be >= 1'): noise_survival_mc(net, x, 0.1, samples=10, chunk=0)
    with pytest.raises(ValueError, match='samples must be >= 2'): noise_survival_mc(net, x, 0.1, samples=-3)
    with pytest.raises(ValueError, match='sigmas must hold at least one'): survival_grid(net, x, [])
    with pytest.raises(ValueError, match='samples must be >= 2'): survival_grid(net, x, [0.1], samples=0)
    with pytest.raises(ValueError, match='sigmas must be >= 0'): survival_grid(net, x, [0.1, -0.1])
    with pytest.raises(ValueError, match='shift must be finite'): noise_survival_mc(net, x, 0.1, shift=torch.tensor(float('nan'), dtype=f64))


def test_mc_batchnorm_eval_mode_model_unchanged():
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 4)).double()
    with torch.no_grad():
        for p in m.parameters(): p.copy_(torch.randn(p.shape, generator=g, dtype=f64))
    x = inputs(5)
    m.train()(x)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    mc = noise_survival_mc(m, x, 0., samples=4)
    assert m.training and all(mod.training for mod in m.modules())
    for k, v in m.state_dict().items(): assert torch.equal(v, state[k]), k
    assert torch.equal(mc.probability, torch.ones(5, dtype=f64))     # no noise in eval mode: the prediction survives
    m.eval(); expected = noise_survival_mc(m, x, 0.2, samples=50, seed=3); m.train()
    assert torch.equal(noise_survival_mc(m, x, 0.2, samples=50, seed=3).probability, expected.probability)


# ---------------------------------------------------------------------------------------------------------------------
# Limits and refusals: a huge sigma, empty batches, variances that cannot go negative, models in train mode.

def bn_net(seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)).double()
    with torch.no_grad():
        for p in m.parameters(): p.copy_(torch.randn(p.shape, generator=g, dtype=f64))
        m[1].running_var.uniform_(0.5, 2., generator=g)
    return m


def test_huge_sigma_is_the_scale_free_limit():
    "Past sigma = 2^256 the linearized net is scaled by a power of two: sigma^2 never overflows, the answer is exact."
    net, x = ara_net(), inputs(4)
    for s in (1e100, 1e200):
        r = noise_survival(net, x, s)
        assert torch.isfinite(r.probability).all() and torch.isfinite(r.margin_mean).all()
        z = analytic_logits(net, x, s)
        assert torch.isfinite(z).all()
    a, b = analytic_logits(net, x, 1e100), analytic_logits(net, x, 1e110)
    assert_close(b / a, torch.full_like(a, 1e10), rtol=1e-9, atol=0)       # linear in sigma: E relu(sigma z) = sigma E relu(z)
    assert_close(noise_survival(net, x, 1e100, method='cantelli').probability,
                 noise_survival(net, x, 1e120, method='cantelli').probability, rtol=0, atol=1e-12)


def test_empty_batches_give_empty_results():
    net, x = ara_net(), inputs(4)
    r = noise_survival(net, x[:0], 0.2)
    assert r.probability.shape == (0,) and r.margin_cov.shape == (0, 3, 3)
    assert noise_survival_mc(net, x[:0], 0.2, samples=5).margin_var.shape == (0, 3)
    assert analytic_logits(net, x[:0], 0.2).shape == (0, 4)
    assert survival_grid(net, x[:0], [0.1], samples=5)[0.1]['mc'].shape == (0,)
    img = torch.zeros(0, 1, 10, 10, dtype=f64)
    assert fooling_map(conv_net(), img, 0.5, window=3, layer=1).expected_margin.shape == (0, 8, 8)
    with pytest.raises(ValueError, match='x must be a non-empty batch'): universal_perturbation(conv_net(), img, xi=1.)


def test_mc_margin_variance_is_never_negative():
    "The block-wise merge of means and squared deviations has no cancellation: no noise, exactly zero variance."
    net, x = ara_net(), inputs(6)
    r = noise_survival_mc(net, x, 0., samples=50, chunk=7)
    assert (r.margin_var == 0).all() and torch.isfinite(r.margin_var).all()
    lin = ara_net(bias=40.)                          # ReLUs always on: margins linear in the noise, variances known
    s = noise_survival_mc(lin, x, 0.3, samples=2000, chunk=64, seed=1)
    J = lin[2].weight @ lin[0].weight
    others = torch.stack([torch.tensor([k for k in range(4) if k != c]) for c in s.prediction.tolist()])
    exact = 0.09 * ((J[s.prediction][:, None, :] - J[others]) ** 2).sum(-1)
    assert ((s.margin_var / exact - 1).abs() < 0.16).all()            # 5 standard errors of a 2000-sample variance


def test_models_in_train_mode_are_left_unchanged():
    net, x = bn_net(), inputs(5)
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    noise_survival(net, x, 0.2); analytic_logits(net, x, 0.2); survival_grid(net, x, [0.2], samples=5)
    universal_perturbation(net, x, xi=1., passes=1, steps=2)
    assert net.training and all(m.training for m in net.modules())
    for k, v in net.state_dict().items(): assert torch.equal(v, state[k]), k


def test_bad_arguments_name_themselves():
    net, x = ara_net(), inputs(4)
    with pytest.raises(TypeError, match='sigma float32'): noise_survival(net, x, torch.ones(()))
    with pytest.raises(TypeError, match='shift float32'): analytic_logits(net, x, 0.1, shift=torch.ones(6))
    with pytest.raises(TypeError, match='convert one'): noise_survival_mc(net, x.float(), 0.1)
    with pytest.raises(ValueError, match='layer must be between 1 and 1'): noise_survival(net, x, 0.1, layer=2)
    with pytest.raises(ValueError, match='chunk must be >= 1'): analytic_logits(net, x, 0.1, chunk=0)
    with pytest.raises(ValueError, match='passes must be >= 1'): universal_perturbation(net, x, xi=1., passes=0)
    with pytest.raises(ValueError, match='window must be >= 1'): fooling_map(conv_net(), x.reshape(4, 1, 2, 3), 0.1, window=0)
    with pytest.raises(ValueError, match='sigmas must be finite'): survival_grid(net, x, [float('nan')])
    with pytest.raises(ValueError, match='randomizations must be >= 2'): orthant_probability(x[:, :3], torch.eye(3, dtype=f64), randomizations=1)
    nan_net = ara_net()
    with torch.no_grad(): nan_net[0].weight[0, 0] = float('nan')
    with pytest.raises(ValueError, match='model must have finite parameters'): noise_survival(nan_net, x, 0.1)
