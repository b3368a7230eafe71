"Minimal-norm L2 attacks: exactness on linear classifiers, float64 verification, errors, devices."
import copy
import pytest
import torch
from torch import nn
from hypothesis import given, settings, strategies as st

from conftest import DEVICE_PARAMS
from netmoments.minimal import METHODS, as_float64, minimal_l2, min_over, predict, ray_search, strongest


def _linear(d, c, seed, device='cpu'):
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, c).double().requires_grad_(False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(c, d, generator=gen)); lin.bias.copy_(torch.randn(c, generator=gen))
    x = torch.randn(16, d, generator=gen, dtype=torch.float64)
    return lin.to(device), x.to(device)


def _exact(lin, x):
    W, b = lin.weight, lin.bias
    c = (x @ W.T + b).argmax(1)
    dw = W[None] - W[c][:, None]; db = b[None] - b[c][:, None]
    dist = ((dw @ x[:, :, None]).squeeze(2) + db).abs() / dw.norm(dim=2).where(dw.norm(dim=2) > 0, torch.ones(()))
    return dist.masked_fill(dw.norm(dim=2) == 0, torch.inf).min(1).values


@settings(max_examples=8)
@given(st.integers(2, 12), st.integers(2, 6), st.integers(0, 2**31))
def test_linear_no_attack_beats_the_exact_minimum(d, c, seed):
    lin, x = _linear(d, c, seed)
    exact = _exact(lin, x)
    for m in METHODS:
        r = minimal_l2(lin, x, m, steps=30)
        assert r.success.all()
        assert (r.norm >= exact * (1 - 1e-9)).all(), m
    torch.testing.assert_close(minimal_l2(lin, x, 'deepfool').norm, exact, rtol=1e-6, atol=0)


def test_verification_in_float64():
    lin, x = _linear(6, 4, 3)
    r = strongest(lin, x, steps=30)
    with torch.no_grad():
        assert (lin(x + r.perturbation).argmax(1) != r.label).all()
    torch.testing.assert_close(r.perturbation.flatten(1).norm(dim=1), r.norm)
    assert r.perturbation.dtype == torch.float64 and r.norm.dtype == torch.float64


def test_float32_model_result_is_float64_verified():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).requires_grad_(False)
    x = torch.randn(32, 5)
    r = minimal_l2(net, x, 'ddn', steps=40)
    net64 = as_float64(net)
    with torch.no_grad():
        flipped = net64(x.double() + r.perturbation).argmax(1)
    assert ((flipped != r.label) | ~r.success).all()
    assert r.success.float().mean() > 0.9


def test_failure_is_inf_and_min_over():
    lin, x = _linear(3, 3, 1)
    r = minimal_l2(lin, x, 'fgs', eps_max=1e-6)
    assert (~r.success).all() and torch.isinf(r.norm).all() and (r.perturbation == 0).all()
    best = min_over([r, minimal_l2(lin, x, 'deepfool')])
    assert best.success.all()


def test_errors():
    lin, x = _linear(2, 2, 0)
    with pytest.raises(ValueError, match='method must be one of'): minimal_l2(lin, x, 'cw')
    with pytest.raises(ValueError, match='batch dimension'): minimal_l2(lin, x[0])
    with pytest.raises(ValueError, match='finite'): minimal_l2(lin, x * torch.nan)
    with pytest.raises(TypeError, match='nn.Module'): minimal_l2(lambda t: t, x)
    eye = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad(): eye.weight.copy_(torch.eye(2))
    with pytest.raises(ValueError, match='tied'): predict(eye, torch.tensor([[2., 2.]]))


@pytest.mark.parametrize('kwargs, match', [
    (dict(method='fgs', eps_min=0.), 'eps_min'), (dict(method='fgv', eps_min=0.), 'eps_min'),
    (dict(method='fgs', eps_min=-1.), 'eps_min'), (dict(method='fgv', eps_min=float('nan')), 'eps_min'),
    (dict(method='fgs', eps_max=float('inf')), 'eps_max'), (dict(method='fgv', eps_max=0.), 'eps_max'),
    (dict(method='fgs', eps_max=-1.), 'eps_max'), (dict(method='fgs', eps_max=float('nan')), 'eps_max'),
    (dict(method='ddn', steps=-3), 'steps must be a positive integer'), (dict(method='deepfool', steps=0), 'steps'),
    (dict(steps=2.5), 'steps'), (dict(steps=True), 'steps'),
    (dict(ray_steps=0), 'ray_steps'), (dict(method='fgs', ray_steps=-1), 'ray_steps'),
    (dict(batch_size=0), 'batch_size'), (dict(batch_size=-5), 'batch_size'),
    (dict(method='deepfool', overshoot=-0.1), 'overshoot'), (dict(method='deepfool', overshoot=float('nan')), 'overshoot'),
    (dict(gamma=0.), 'gamma'), (dict(gamma=1.), 'gamma'), (dict(alpha=0.), 'alpha'), (dict(alpha=float('inf')), 'alpha'),
    (dict(init_norm=0.), 'init_norm'), (dict(init_norm=-1.), 'init_norm'),
])
def test_bad_parameters_raise_before_any_work(kwargs, match):
    # eps_min=0 used to loop forever, steps=-3 returned inf norms with no error
    lin, x = _linear(3, 3, 0)
    with pytest.raises(ValueError, match=match): minimal_l2(lin, x, **kwargs)


def test_empty_batch_non_finite_init_and_bad_methods():
    lin, x = _linear(3, 3, 0)
    for m in METHODS:                                  # no samples: empty results of the right shapes, float64
        r = minimal_l2(lin, x[:0], m)
        assert r.perturbation.shape == (0, 3) and r.norm.shape == r.success.shape == r.label.shape == (0,)
        assert r.perturbation.dtype == r.norm.dtype == torch.float64
    with pytest.raises(ValueError, match='init must be finite'): minimal_l2(lin, x, 'ddn', init=x * torch.inf)
    with pytest.raises(ValueError, match='methods must be'): strongest(lin, x, methods=())
    with pytest.raises(ValueError, match='methods must be'): strongest(lin, x, methods=('deepfool', 'cw'))
    with pytest.raises(ValueError, match='methods must be'): strongest(lin, x, methods='ddn')


def _bn_net(seed=0):
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double().requires_grad_(False)
    with torch.no_grad():
        for p in net.parameters(): p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
        net[1].running_mean.copy_(torch.randn(6, generator=gen)); net[1].running_var.uniform_(0.5, 2, generator=gen)
    return net, torch.randn(12, 5, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize('attack', ['fgs', 'fgv', 'deepfool', 'ddn', 'strongest'])
def test_batchnorm_in_training_mode_attacks_the_eval_network_and_changes_nothing(attack):
    net, x = _bn_net()
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    run = (lambda n: strongest(n, x, steps=30)) if attack == 'strongest' else (lambda n: minimal_l2(n, x, attack, steps=30))
    r = run(net)
    assert net.training and net[1].training                              # the mode flags are as they were
    for k, v in net.state_dict().items(): assert torch.equal(v, state[k]), k   # and the buffers, bit for bit
    ref = run(copy.deepcopy(net).eval())
    assert torch.equal(r.norm, ref.norm) and torch.equal(r.perturbation, ref.perturbation)
    with torch.no_grad():                                                 # verified on the eval-mode network
        ev = copy.deepcopy(net).eval()
        assert (ev(x + r.perturbation).argmax(1)[r.success] != r.label[r.success]).all()
    assert r.success.any()


@pytest.mark.parametrize('device', DEVICE_PARAMS)
def test_device(device):
    lin, x = _linear(4, 3, 2, device)
    r = minimal_l2(lin, x, 'deepfool')
    assert r.perturbation.device.type == torch.device(device).type and r.success.all()


def test_inputs_are_checked_and_models_left_unchanged():
    lin, x = _linear(3, 3, 0)
    with pytest.raises(TypeError, match='convert one'): minimal_l2(lin, x.float())          # no silent conversion
    with pytest.raises(ValueError, match='x must be finite'): predict(lin, x * torch.nan)
    with pytest.raises(TypeError, match='model64 has float32 parameters'): predict(copy.deepcopy(lin).float(), x)
    bad = copy.deepcopy(lin)
    with torch.no_grad(): bad.weight[0, 0] = torch.inf
    with pytest.raises(ValueError, match='model must have finite parameters'): as_float64(bad)
    with pytest.raises(ValueError, match='model must have finite parameters'): minimal_l2(bad, x)
    with pytest.raises(ValueError, match='results must be a non-empty list'): min_over([])
    r = minimal_l2(lin, x, 'deepfool')
    with pytest.raises(ValueError, match='results must come from the same inputs'): min_over([r, minimal_l2(lin, x[:3], 'deepfool')])
    net, xb = _bn_net()
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    label = predict(net, xb)                                          # eval mode for the prediction, flags restored
    u = torch.randn(xb.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ray_search(net, as_float64(net), xb, u, torch.full((len(xb),), 4., dtype=torch.float64), label)
    assert net.training and net[1].training
    for k, v in net.state_dict().items(): assert torch.equal(v, state[k]), k


def test_ray_search_checks_its_arguments():
    lin, x = _linear(3, 3, 0)
    lab, u, hi = predict(lin, x), torch.ones_like(x), torch.ones(len(x), dtype=torch.float64)
    with pytest.raises(TypeError, match='hi float32'): ray_search(lin, as_float64(lin), x, u, hi.float(), lab)
    with pytest.raises(ValueError, match='hi must not be NaN'): ray_search(lin, as_float64(lin), x, u, hi * torch.nan, lab)
    with pytest.raises(ValueError, match='u must be finite'): ray_search(lin, as_float64(lin), x, u * torch.inf, hi, lab)
    with pytest.raises(ValueError, match='label must be classes'): ray_search(lin, as_float64(lin), x, u, hi, lab + 3)
    t = ray_search(lin, as_float64(lin), x, u, torch.full_like(hi, -torch.inf), lab)   # no known scale: skipped
    assert torch.isinf(t).all()
