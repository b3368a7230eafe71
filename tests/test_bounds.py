"Lower bounds: exactness of the linear bound, Algorithm 4.1, soundness counts against the strongest attack, errors."
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import hessian, vmap
from hypothesis import given, settings, strategies as st

from conftest import DEVICE_PARAMS
from netmoments.bounds import (algorithm41, conv_spectral_norm, derivative_bounds, linear_bound, lipschitz_margin_bound,
                               mlp_bound, network_bound, pool_lipschitz, random_mlp, tight_example, _lrn_grad_norm)
from netmoments.minimal import minimal_l2, strongest
from netmoments.models import mnist_slice, pretrained


@settings(max_examples=10)
@given(st.integers(2, 10), st.integers(2, 6), st.integers(0, 2**31))
def test_linear_bound_is_exact(d, C, seed):
    g = torch.Generator().manual_seed(seed)
    clf = random_mlp((d, C), nn.Tanh, -1, 1, g)
    x = torch.randn(12, d, generator=g, dtype=torch.float64)
    delta = linear_bound(clf[0].weight, clf[0].bias, x)
    df = minimal_l2(clf, x, 'deepfool')
    assert df.success.all()
    assert (delta <= df.norm * (1 + 1e-9)).all()                       # sound: zero violations
    torch.testing.assert_close(df.norm, delta, rtol=1e-5, atol=1e-9)   # and attained


def test_tight_example():
    x = torch.rand(50, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    W, b, eta = tight_example(x)
    torch.testing.assert_close(eta.norm(dim=1), linear_bound(W, b, x))
    assert ((x + 1.0001 * eta).argmax(1) != x.argmax(1)).all()


@settings(max_examples=6)
@given(st.integers(0, 2**31), st.sampled_from([nn.Tanh, nn.Sigmoid, nn.Softplus]))
def test_algorithm41_bounds_hessians(seed, act):
    g = torch.Generator().manual_seed(seed)
    net = random_mlp((3, 5, 4, 2), act, -1, 1, g)
    pts = 3 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    hess = vmap(hessian(net[:-1]))(pts)
    assert hess.abs().sum((-1, -2)).max() <= algorithm41(net) * (1 + 1e-12)


def test_mlp_bound_smooth_zero_violations():
    g = torch.Generator().manual_seed(3)
    viol = attacked = 0
    for _ in range(3):
        net = random_mlp((2, 10, 10, 10, 5), nn.Tanh, -1, 1, g)
        x = 2 * torch.rand(10, 2, generator=g, dtype=torch.float64) - 1
        bd, att = mlp_bound(net, x).bound, strongest(net, x, steps=30)
        viol += int((bd[att.success] > att.norm[att.success]).sum()); attacked += int(att.success.sum())
    print(f'tanh MLPs: {viol} violations of {attacked}')
    assert attacked > 10 and viol == 0


def test_lipschitz_margin_bound_lenet_zero_violations():
    net = pretrained('lenet-mnist')
    x, _ = mnist_slice()
    x = x[:10]
    lip = lipschitz_margin_bound(net, x).bound
    att = strongest(net, x, steps=40)
    viol = int((lip > att.norm).sum())
    print(f'LeNet, 10 MNIST test images: Lipschitz-margin bound violated {viol} times of {int(att.success.sum())}')
    assert att.success.all() and viol == 0
    peck = network_bound(net, x)
    assert (peck.bound > 0).all() and peck.report[0][1] is peck.bound


def test_conv_spectral_norm_brackets_the_truth():
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    with torch.no_grad(): conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64))
    op = lambda t: F.conv2d(t, conv.weight, None, 2, 1)
    J = torch.autograd.functional.jacobian(op, torch.zeros(1, 2, 7, 7, dtype=torch.float64)).reshape(-1, 2 * 49)
    true = torch.linalg.matrix_norm(J, ord=2).item()
    assert conv_spectral_norm(conv, (2, 7, 7), 'power', iters=300, generator=g) <= true * (1 + 1e-9)
    assert true <= conv_spectral_norm(conv, (2, 7, 7)) * (1 + 1e-12)


def test_lrn_gradient_norm():
    lrn = nn.LocalResponseNorm(3, alpha=0.5, beta=0.6, k=1.5).double()
    x = torch.randn(1, 5, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lrn, x).reshape(x.numel(), x.numel())
    torch.testing.assert_close(_lrn_grad_norm(lrn, x), J.norm(dim=1).reshape(x.shape))


def test_network_bound_all_layer_types():
    g = torch.Generator().manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.LocalResponseNorm(3, k=2.),
                        nn.AvgPool2d(2), nn.Conv2d(4, 4, 3), nn.Tanh(), nn.LPPool2d(2, 2), nn.Flatten(),
                        nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 3), nn.Softmax(1)).double().eval()
    with torch.no_grad():
        for p in net.parameters(): p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        net[1].running_var.fill_(2.)
    net[1].weight.data.abs_()
    x = torch.randn(5, 1, 10, 10, generator=g, dtype=torch.float64)
    bd = network_bound(net, x)
    assert bd.bound.shape == (5,) and (bd.bound >= 0).all() and torch.isfinite(bd.bound).all()
    assert len(bd.report) == 9 + 2


def test_errors():
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match='tied'): linear_bound(torch.eye(2), torch.zeros(2), torch.ones(1, 2))
    with pytest.raises(ValueError, match='3 features'): linear_bound(torch.randn(2, 3), torch.zeros(2), torch.ones(1, 2))
    with pytest.raises(ValueError, match='unsupported activation GELU'):
        mlp_bound(nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)).double(), x)
    with pytest.raises(ValueError, match='unsupported layer Upsample'):
        network_bound(nn.Sequential(nn.Upsample(scale_factor=2), nn.Flatten(), nn.Linear(12, 2)).double(), x[:, None])
    with pytest.raises(ValueError, match='unsupported layer LocalResponseNorm'):
        lipschitz_margin_bound(nn.Sequential(nn.LocalResponseNorm(2), nn.Flatten(), nn.Linear(3, 2)).double(), x[:, :, None])
    with pytest.raises(ValueError, match='unsupported activation'): derivative_bounds(nn.ELU())


def _wbx(seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(4, 5, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    return W, b, torch.randn(6, 5, generator=g, dtype=torch.float64)


@pytest.mark.parametrize('k', [1e-300, 1e-170, 1e-25, 1e19, 1e170, 1e300])
def test_linear_bound_is_scale_free(k):
    # the bound is invariant to a common positive scale of (W, b); a norm must not under- or overflow
    W, b, x = _wbx()
    ref = linear_bound(W, b, x)
    assert torch.isfinite(ref).all() and (ref > 0).all()
    torch.testing.assert_close(linear_bound(W * k, b * k, x), ref, rtol=1e-12, atol=0)
    if 1e-30 < k < 1e30:   # within float32's range
        torch.testing.assert_close(linear_bound((W * k).float(), (b * k).float(), x.float()), ref.float(), rtol=1e-5, atol=0)


def test_linear_bound_power_of_two_scaling_is_exact():
    W, b, x = _wbx(1)
    assert torch.equal(linear_bound(W * 2.0**-40, b * 2.0**-40, x), linear_bound(W, b, x))


def test_linear_bound_refuses_non_finite_empty_and_mixed_dtypes():
    W, b, x = _wbx()
    for name, args in (('W', (W.index_fill(1, torch.tensor([0]), torch.nan), b, x)),
                       ('W', (W.index_fill(1, torch.tensor([2]), torch.inf), b, x)),
                       ('b', (W, b.index_fill(0, torch.tensor([1]), torch.nan), x)),
                       ('x', (W, b, x.index_fill(0, torch.tensor([3]), -torch.inf)))):
        with pytest.raises(ValueError, match=f'{name} must be finite'): linear_bound(*args)
    with pytest.raises(ValueError, match='at least one sample'): linear_bound(W, b, x[:0])
    with pytest.raises(ValueError, match='b must be a floating tensor'): linear_bound(W, b.tolist(), x)
    with pytest.raises(TypeError, match='found W float32, b float64'): linear_bound(W.float(), b, x)


def test_other_public_functions_refuse_bad_arguments():
    x = torch.randn(4, 3, dtype=torch.float64)
    mlp = random_mlp((3, 4, 2), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match='x must hold at least one sample'): tight_example(x[:0])
    with pytest.raises(ValueError, match='x must be finite'): tight_example(x * torch.nan)
    with pytest.raises(ValueError, match='relu_second'): derivative_bounds(nn.ReLU(), -1.0)
    with pytest.raises(ValueError, match='relu_second'): derivative_bounds(nn.ReLU(), float('nan'))
    with pytest.raises(ValueError, match='sizes'): random_mlp((3, 0, 2))
    with pytest.raises(ValueError, match='sizes'): random_mlp((3,))
    with pytest.raises(ValueError, match='low must be <= high'): random_mlp((3, 2), low=1.0, high=-1.0)
    with pytest.raises(ValueError, match='low must be a finite number'): random_mlp((3, 2), low=float('nan'))
    with pytest.raises(TypeError, match='dtype must be a floating'): random_mlp((3, 2), dtype=torch.int64)
    with pytest.raises(ValueError, match='act must be an activation module'): derivative_bounds('tanh')
    with pytest.raises(TypeError, match='m must be a 2-d max or average pooling'): pool_lipschitz(nn.ReLU(), (1, 4, 4))
    with pytest.raises(ValueError, match='input_shape'): pool_lipschitz(nn.AvgPool2d(2), (1, 4))
    with pytest.raises(ValueError, match='iters must be >= 1'): conv_spectral_norm(nn.Conv2d(1, 1, 3), (1, 4, 4), iters=0)
    with pytest.raises(ValueError, match='x must hold at least one sample'): mlp_bound(mlp, x[:0])
    with pytest.raises(ValueError, match='relu_second'): mlp_bound(mlp, x, relu_second=float('inf'))
    with pytest.raises(ValueError, match='x must be finite'): mlp_bound(mlp, x * torch.nan)
    with pytest.raises(ValueError, match='x must hold at least one sample'): network_bound(mlp, x[:0])
    with pytest.raises(ValueError, match='relu_second'): network_bound(mlp, x, relu_second=-2.0)


@pytest.mark.parametrize('device', DEVICE_PARAMS)
def test_device(device):
    net = random_mlp((3, 4, 2), nn.Tanh, -1, 1, torch.Generator().manual_seed(0)).to(device)
    x = torch.randn(6, 3, dtype=torch.float64, device=device)
    for f in (mlp_bound, network_bound, lipschitz_margin_bound):
        b = f(net, x).bound
        assert b.device.type == torch.device(device).type and b.shape == (6,)


def test_trained_uci_mlps_zero_violations():
    from netmoments.bound_experiments import check_bounds, tanh_mlp, train_classifier, uci_split
    for name, sizes in (('iris', (4, 5, 3)), ('wine', (13, 5, 3, 3))):
        xtr, ytr, xte, yte, xva, yva = uci_split(name)
        net = train_classifier(tanh_mlp(sizes), xtr, ytr, xva, yva, epochs=100).requires_grad_(False)
        v = check_bounds(net, xte, steps=30).violations()
        print(f'{name}: {v}')
        assert v['attacked'] >= 0.9 * len(xte) and v['bound'] == 0 and v['lipschitz'] == 0


# --- dtypes: one per call, the bound in float64 -----------------------------------------------------------------------

def _cnn(dtype=torch.float64):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3))
    with torch.no_grad(): net[0].weight.abs_(); net[0].bias.abs_()
    return net.to(dtype).eval()


def test_bounds_of_float32_networks_are_float64():
    "A float32 network on float32 inputs gets its bound in float64 (a certificate is not rounded to float32)."
    mlp = random_mlp((3, 4, 2), generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cnn, img = _cnn(), torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for f, net, inp in ((mlp_bound, mlp, x), (network_bound, cnn, img), (lipschitz_margin_bound, cnn, img)):
        want = f(net, inp).bound
        got = f(copy.deepcopy(net).float(), inp.float()).bound
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-4, atol=0)


@pytest.mark.parametrize('f', [mlp_bound, network_bound, lipschitz_margin_bound])
def test_bounds_refuse_a_network_of_another_dtype(f):
    mlp = random_mlp((3, 4, 2), generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match='model has float32 parameters but x is float64'):
        f(copy.deepcopy(mlp).float(), torch.randn(2, 3, dtype=torch.float64))


def test_experiments_refuse_mixed_dtypes_and_name_the_argument():
    from netmoments.bound_experiments import check_bounds, cnn_table, margin_delta, tanh_mlp, train_classifier
    net, x = tanh_mlp((3, 4, 2)), torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1])
    with pytest.raises(TypeError, match='net has float64 parameters but x is float32'): check_bounds(net, x.float())
    with pytest.raises(TypeError, match='net has float32 parameters but x is float64'):
        cnn_table(_cnn(torch.float32), torch.rand(2, 1, 4, 4, dtype=torch.float64), eps_cap=0.5)
    with pytest.raises(TypeError, match='out has float64 parameters but h is float32'): margin_delta(net[-1], torch.randn(2, 4))
    with pytest.raises(TypeError, match='x_val float32'): train_classifier(net, x, y, x.float(), y, epochs=1)
    with pytest.raises(ValueError, match='y_val must hold class indices in \\[0, 2\\)'):
        train_classifier(net, x, y, x, y + 1, epochs=1)
    with pytest.raises(ValueError, match='net must have finite parameters'):
        bad = tanh_mlp((3, 4, 2))
        with torch.no_grad(): bad[0].bias[1] = torch.nan
        train_classifier(bad, x, y, x, y, epochs=1)


BAD_SEEDS = [-1, 2.5, True, '3', None, float('nan')]


@pytest.mark.parametrize('seed', BAD_SEEDS)
def test_seeds_are_counts(seed):
    "Every seed of the experiments is an int >= 0 (the fuzz suite cannot give a case's `seed` argument the counts role)."
    from netmoments.bound_experiments import lenet_lrn, lrn_table, penalty_curve, small_cnn, tanh_mlp, uci_split
    calls = [lambda: tanh_mlp((3, 2), seed), lambda: uci_split('iris', seed), lambda: small_cnn(seed),
             lambda: lenet_lrn((1,), seed), lambda: penalty_curve('iris', (4, 3), (0.,), epochs=1, seed=seed),
             lambda: lrn_table(10, 1, 2, seed)]
    for call in calls:
        with pytest.raises((TypeError, ValueError), match='seed must be'): call()


def test_cnn_table_without_attacked_images_reports_none():
    "Statistics over no image are None, not NaN: an FGS capped below every flip succeeds nowhere."
    from netmoments.bound_experiments import cnn_table, show_cnn
    t = cnn_table(_cnn(), torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                  eps_cap=1e-3, steps=2)
    assert t['fgs_rate'] == 0 and t['fgs_norm'] is None
    assert all(v is None or not math.isnan(v) for v in t.values())
    assert 'FGS norm' in str(show_cnn('net', t))
