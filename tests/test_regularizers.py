"Properties of `netmoments.regularizers`: exact first-layer moments (MC within 4 SE), gradients, losses, errors."
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from conftest import DEVICE_PARAMS
from netmoments.linearize import seeded
from netmoments.montecarlo import mc_moments
from netmoments.regularizers import (AdversarialLoss, GaussianMomentLoss, GradientNormLoss, adversarial_examples,
                                     analytic_expected_logits, first_layer_moments, noisy_augmentation)

f64 = torch.float64


def bn2d_seeded(net, seed):
    "seeded() leaves BatchNorm2d alone: give it non-trivial statistics too."
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g, dtype=f64))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g, dtype=f64))
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g, dtype=f64))
                m.running_var.copy_((0.3 * torch.randn(m.running_var.shape, generator=g, dtype=f64)).exp())
    return net


NETS = {
    'linear': (lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3)), (1, 3, 4)),
    'linear+bn': (lambda: nn.Sequential(nn.Linear(12, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3)), (12,)),
    'conv': (lambda: nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2), nn.ReLU(),
                                   nn.Flatten(), nn.Linear(6 * 3 * 3, 3)), (4, 6, 6)),
    'conv+bn': (lambda: nn.Sequential(nn.Sequential(nn.Conv2d(2, 4, 3, stride=1, padding=2, dilation=2),
                                                    nn.BatchNorm2d(4)), nn.ReLU(), nn.Flatten(),
                                      nn.Linear(4 * 5 * 5, 3)), (2, 5, 5)),
}


@pytest.mark.parametrize('name', list(NETS))
@pytest.mark.parametrize('per_pixel', [False, True])
def test_first_layer_moments_equal_mc(name, per_pixel):
    build, shape = NETS[name]
    net = bn2d_seeded(seeded(build(), 3), 3)
    g = torch.Generator().manual_seed(1)
    x = torch.rand((1, *shape), generator=g, dtype=f64)
    sigma = (0.1 + 0.5 * torch.rand(shape, generator=g, dtype=f64)) if per_pixel else 0.4
    mean, var = first_layer_moments(net, x, sigma)
    first = net[:3] if name.startswith('linear') else net[:2]      # up to and including the first ReLU
    mc = mc_moments(lambda t: first(t).flatten(1), x[0], sigma ** 2, n=10_000, seed=5, full_cov=False)
    # a unit that is almost never positive is a rare event: there the sample SE is itself unreliable (too few
    # non-zero draws), so only units positive in at least 2% of 2000 draws are held to 4 SE
    draws = x + (sigma if per_pixel else torch.tensor(sigma)) * torch.randn((2000, *shape), generator=g, dtype=f64)
    with torch.no_grad(): often = (first(draws).flatten(1) > 0).double().mean(0) >= 0.02
    assert often.sum() >= 0.5 * len(often)
    assert ((mean.flatten() - mc.mean).abs() <= 4 * mc.mean_se)[often].all()
    assert ((var.flatten() - mc.var).abs() <= 4 * mc.var_se)[often].all()


def test_zero_sigma_is_the_first_block():
    build, shape = NETS['conv']
    net = seeded(build(), 0)
    x = torch.rand((3, *shape), dtype=f64, generator=torch.Generator().manual_seed(0))
    mean, var = first_layer_moments(net, x, 0.)
    assert_close(mean, net[:2](x)); assert var.abs().max() == 0
    assert_close(analytic_expected_logits(net, x, 0.), net(x))


def test_gradcheck_expected_logits():
    build, shape = NETS['conv']
    net = seeded(build(), 1).requires_grad_(True)
    x = torch.rand((2, *shape), dtype=f64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    sigma = torch.full(shape, 0.3, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s: analytic_expected_logits(net, x, s), (x, sigma), fast_mode=True)
    w = net[0].weight
    assert torch.autograd.gradcheck(lambda w_: analytic_expected_logits(
        nn.Sequential(_Swap(net[0], w_), *net[1:]), x.detach(), 0.3), (w.detach().clone().requires_grad_(True),), fast_mode=True)


class _Swap(nn.Conv2d):
    "The conv `m` with weight `w` (so gradcheck can vary it)."
    def __init__(self, m, w):
        nn.Module.__init__(self)
        self.__dict__.update({k: v for k, v in m.__dict__.items() if k not in ('_parameters', '_buffers', '_modules')})
        self._parameters, self._buffers, self._modules = {'bias': m.bias}, {}, {}
        self.weight = w


def test_per_sample_sigma():
    build, shape = NETS['linear']
    net = seeded(build(), 0)
    x = torch.rand((2, *shape), dtype=f64)
    s = torch.stack([torch.full(shape, 0.1, dtype=f64), torch.full(shape, 0.5, dtype=f64)])
    m, v = first_layer_moments(net, x, s)
    for i, si in enumerate((0.1, 0.5)):
        mi, vi = first_layer_moments(net, x[i:i + 1], si)
        assert_close(m[i:i + 1], mi); assert_close(v[i:i + 1], vi)


def test_errors():
    build, shape = NETS['conv']
    net = seeded(build(), 0)
    x = torch.rand((2, *shape), dtype=f64)
    with pytest.raises(ValueError, match='sigma must be >= 0'): first_layer_moments(net, x, -0.1)
    with pytest.raises(ValueError, match='sigma must be a number'): first_layer_moments(net, x, torch.ones(5, 5, dtype=f64))
    with pytest.raises(TypeError, match='x and sigma must share one floating dtype'):
        first_layer_moments(net, x, torch.ones(6, 6))
    with pytest.raises(ValueError, match='does not fit'): first_layer_moments(net, torch.rand(2, 3, 6, 6, dtype=f64), 0.1)
    bad = nn.Sequential(nn.Conv2d(4, 6, 3), nn.MaxPool2d(2), nn.ReLU())
    with pytest.raises(ValueError, match='first block of model must be'): first_layer_moments(bad, x, 0.1)
    bn = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.ReLU())
    with pytest.raises(ValueError, match='eval mode'): GaussianMomentLoss(0.1)(bn.train(), torch.rand(4, 3), torch.zeros(4).long())
    with pytest.raises(TypeError, match='nn.Sequential'): first_layer_moments(nn.Linear(3, 3), torch.rand(4, 3), 0.1)
    with pytest.raises(ValueError, match='as many samples'): GaussianMomentLoss(0.1)(net, x, torch.zeros(3).long())
    with pytest.raises(ValueError, match='folds'): noisy_augmentation(x, torch.zeros(2).long(), 0.1, 0)
    with pytest.raises(ValueError, match='p must be'): GradientNormLoss(0.1, 3)


@pytest.mark.parametrize('device', DEVICE_PARAMS)
def test_device_dtype_kept_and_losses(device):
    build, shape = NETS['conv']
    for dtype in (torch.float32, f64):
        net = seeded(build(), 0, dtype).to(device).requires_grad_(True)
        x = torch.rand((5, *shape), dtype=dtype, device=device)
        y = torch.randint(0, 3, (5,), device=device)
        m, v = first_layer_moments(net, x, 0.2)
        assert m.dtype == v.dtype == dtype and m.device.type == device
        want = F.cross_entropy(net(x), y) + 2 * F.cross_entropy(analytic_expected_logits(net, x, 0.2), y)
        assert_close(GaussianMomentLoss(0.2, 2.)(net, x, y), want)
        for p in (1, 2, float('inf')):
            loss = GradientNormLoss(0.1, p)(net, x, y)
            loss.backward()
            assert torch.isfinite(net[0].weight.grad).all()
            xa = adversarial_examples(net, x, y, 0.1, p)
            assert_close(torch.linalg.vector_norm((xa - x).flatten(1), p, dim=1),
                         torch.full((5,), 0.1, dtype=dtype, device=device))
            AdversarialLoss(0.1, p)(net, x, y).backward()


def test_augmentation_fresh_noise():
    x, y = torch.zeros(200, 2, 3, 3, dtype=f64), torch.arange(200)
    xa, ya = noisy_augmentation(x, y, 0.3, 4, torch.Generator().manual_seed(0))
    assert xa.shape == (800, 2, 3, 3) and (ya == y.repeat(4)).all()
    noise = xa[200:].reshape(3, 200, -1)
    assert (noise[0] != noise[1]).all() and (noise[:, 0] != noise[:, 1]).all()
    se = 0.3 ** 2 * (2 / noise.numel()) ** 0.5
    assert abs(noise.var().item() - 0.09) <= 4 * se


# --- the fused first ReLU of the regularized loss -------------------------------------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402

from netmoments.regularizers import _relu_pair  # noqa: E402
from netmoments.relu import _relu_mean  # noqa: E402


def _composed(mu, var):
    return torch.cat([mu.relu(), _relu_mean(mu, var.expand_as(mu))])


@settings(deadline=None, max_examples=60)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1e-3, 1., 30., 1e4]), st.floats(0, 0.5))
def test_relu_pair_is_the_composed_moment(seed, scale, zero_fraction):
    "Value and gradients equal the composed formulas in float64, from |h| ~ 0 to far in the tails, zero variances too."
    g = torch.Generator().manual_seed(seed)
    mu = (scale * torch.randn(4, 3, 5, generator=g, dtype=f64)).requires_grad_()
    var = torch.rand(1, 3, 5, generator=g, dtype=f64)
    var = var.where(torch.rand(var.shape, generator=g, dtype=f64) >= zero_fraction, 0).requires_grad_()
    got, want = _relu_pair(mu, var), _composed(mu, var)
    assert_close(got, want, atol=1e-14 * scale, rtol=1e-12)
    assert (got[4:] >= got[:4]).all()                              # T >= relu(mu): Jensen, exactly
    w = torch.randn(got.shape, generator=g, dtype=f64)
    g_got, g_want = torch.autograd.grad((got * w).sum(), (mu, var)), torch.autograd.grad((want * w).sum(), (mu, var))
    assert_close(g_got[0], g_want[0], atol=1e-13, rtol=1e-12)
    assert_close(g_got[1], g_want[1], atol=1e-12 * max(1., scale), rtol=1e-10)


def test_relu_pair_second_derivatives():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, generator=g, dtype=f64).requires_grad_()
    var = (0.05 + torch.rand(1, 4, generator=g, dtype=f64)).requires_grad_()
    assert torch.autograd.gradcheck(_relu_pair, (mu, var))
    assert torch.autograd.gradgradcheck(_relu_pair, (mu, var))


@pytest.mark.parametrize('device', DEVICE_PARAMS)
@pytest.mark.parametrize('dtype', [torch.float32, f64])
def test_relu_pair_float_kinds_and_extremes(device, dtype):
    "dtype and device kept; finite values and gradients at var = 0, mu = 0 and |mu / s| far beyond the cap."
    mu = torch.tensor([[0., 1e-30, -1e-30, 3., -3., 1e6, -1e6]], dtype=dtype, device=device).repeat(2, 1)
    var = torch.tensor([[1e-40 if dtype == f64 else 1e-30, 0., 1., 0., 1e-12, 1., 1e-12]], dtype=dtype, device=device)
    mu.requires_grad_(); var.requires_grad_()
    out = _relu_pair(mu, var)
    assert out.dtype == dtype and out.device.type == device and out.shape == (4, 7)
    assert torch.isfinite(out).all() and (out[2:] >= out[:2]).all()
    assert_close(out[:2], mu.detach().relu())
    assert_close(out[2:].double(), _composed(mu.detach().double(), var.detach().double())[2:], atol=1e-6, rtol=1e-5)
    out.sum().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(var.grad).all()


def test_train_mode_batch_norm_sees_each_half_alone():
    "With a training-mode BatchNorm after the first ReLU, relu(mu2) and mu3 are normalized by their own statistics."
    net = seeded(nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)), 0)
    net.train()
    x = torch.rand(6, 2, 6, 6, dtype=f64, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (6,), generator=torch.Generator().manual_seed(1))
    got = GaussianMomentLoss(0.3, 2.)(net, x, y)
    mean, _ = first_layer_moments(net, x, 0.3)
    want = F.cross_entropy(net(x), y) + 2 * F.cross_entropy(net[2:](mean), y)
    assert_close(got, want)


# --- models in training mode, empty batches, refusals ---------------------------------------------------------------

def bn_net(seed=0):
    "Linear, BatchNorm1d (non-trivial running statistics), ReLU, Dropout, Linear, float64."
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 3)).double()
    with torch.no_grad(): net[1].running_mean.uniform_(-0.5, 0.5); net[1].running_var.uniform_(0.5, 2.)
    return net


def state(net):
    return [m.training for m in net.modules()], {k: v.clone() for k, v in net.state_dict().items()}


def same(a, b):
    return a[0] == b[0] and all(torch.equal(v, b[1][k]) for k, v in a[1].items())


def test_moments_of_a_training_mode_model_are_the_eval_mode_moments():
    "first_layer_moments and analytic_expected_logits evaluate the eval-mode network and leave modes and buffers alone."
    net, x = bn_net(), torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=f64)
    want = first_layer_moments(net.eval(), x, 0.2), analytic_expected_logits(net, x, 0.2)
    net.train()
    before = state(net)
    got = first_layer_moments(net, x, 0.2), analytic_expected_logits(net, x, 0.2)
    assert same(before, state(net))
    assert_close(got[0][0], want[0][0], rtol=0, atol=0); assert_close(got[0][1], want[0][1], rtol=0, atol=0)
    assert_close(got[1], want[1], rtol=0, atol=0)


@pytest.mark.parametrize('p', [1, 2, float('inf')])
def test_adversarial_loss_attacks_in_eval_mode(p):
    """AdversarialLoss crafts the attack on the eval-mode network (running statistics, no dropout) without touching
    the batch norm's statistics, then computes the training loss in the model's own mode: a training-mode model
    updates its statistics once, from the forward pass on the clean and adversarial batch."""
    net = bn_net()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 6, generator=g, dtype=f64), torch.randint(0, 3, (8,), generator=g)
    net.train()
    before = state(net)
    xa = adversarial_examples(net, x, y, 0.3, p)
    assert same(before, state(net))                               # the attack: no statistics moved, modes restored
    ref = bn_net().eval()
    g_ref = torch.autograd.grad(F.cross_entropy(ref(x.requires_grad_()), y, reduction='sum'), x)[0]
    x = x.detach()
    from netmoments.attacks import lp_perturbation
    assert_close(xa, x + lp_perturbation(g_ref, 0.3, p))          # the eval-mode network's attack
    twin = bn_net().train()
    torch.manual_seed(5); loss = AdversarialLoss(0.3, p, 0.25)(net, x, y)
    torch.manual_seed(5); out = twin(torch.cat([x, xa]))          # the same dropout mask
    assert_close(loss, 0.25 * F.cross_entropy(out[:8], y) + 0.75 * F.cross_entropy(out[8:], y))
    assert net.training and net[1].num_batches_tracked.item() == 1     # one training forward pass
    assert_close(net[1].running_mean, twin[1].running_mean); assert_close(net[1].running_var, twin[1].running_var)


def test_empty_batches():
    "Maps from items to items give empty results; losses, which average over the batch, refuse an empty batch."
    net, x, y = bn_net().eval(), torch.zeros(0, 6, dtype=f64), torch.zeros(0, dtype=torch.long)
    xa, ya = noisy_augmentation(x, y, 0.1, 3)
    assert xa.shape == (0, 6) and ya.shape == (0,)
    assert adversarial_examples(net, x, y, 0.1).shape == (0, 6)
    assert first_layer_moments(net, x, 0.1)[0].shape == (0, 5)
    for loss in (GaussianMomentLoss(0.1), GradientNormLoss(0.1), AdversarialLoss(0.1)):
        with pytest.raises(ValueError, match='x must hold at least one sample'): loss(net, x, y)


def test_losses_refuse_non_finite_weights_that_leave_the_logits_finite():
    "A -inf bias before a ReLU gives finite logits; the losses still name the model."
    net = bn_net().eval()
    with torch.no_grad(): net[0].bias[0] = -torch.inf
    x, y = torch.randn(4, 6, dtype=f64), torch.zeros(4, dtype=torch.long)
    assert torch.isfinite(net(x)).all()
    for loss in (GaussianMomentLoss(0.1), GradientNormLoss(0.1), AdversarialLoss(0.1)):
        with pytest.raises(ValueError, match='model must have finite parameters'): loss(net, x, y)


def test_extreme_noise_gives_the_limits():
    "A huge sigma gives finite means and no NaN (the variance overflows only where the true one does); a tiny one, the noise-free block."
    net, x = bn_net().eval(), torch.randn(3, 6, generator=torch.Generator().manual_seed(3), dtype=f64)
    mean, var = first_layer_moments(net, x, 1e300)
    assert torch.isfinite(mean).all() and not torch.isnan(var).any()
    ratio = (mean / first_layer_moments(net, x, 1e290)[0])     # E relu(z) ~ s phi(0) for s >> |mu|: scales with sigma
    assert_close(ratio, torch.full_like(ratio, 1e10))
    assert_close(first_layer_moments(net, x, 1e-300)[0], net[:3](x))
    assert torch.isfinite(GaussianMomentLoss(1e300)(net, x, torch.zeros(3, dtype=torch.long)))
    assert torch.isfinite(noisy_augmentation(x, torch.zeros(3, dtype=torch.long), 1e300, 2)[0]).all()
