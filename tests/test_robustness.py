"Properties of `netmoments.robustness`: the noise metric (seeded, fresh Gaussian noise) and Lyu's model."
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from conftest import DEVICE_PARAMS
from netmoments.robustness import (minimum_perturbations, misclassification_rate, noise_robustness,
                                   predicted_misclassification)

f64 = torch.float64


def sign_model(device='cpu', dtype=f64):
    "x -> (x, -x): at x = 0 the prediction stays 0 exactly when the noise is positive."
    m = nn.Sequential(nn.Linear(1, 2, bias=False)).to(device, dtype)
    with torch.no_grad(): m[0].weight.copy_(torch.tensor([[1.], [-1.]]))
    return m


@pytest.mark.parametrize('device', DEVICE_PARAMS)
@pytest.mark.parametrize('fixed_norm', [False, True])
def test_fresh_noise_per_sample(device, fixed_norm):
    x = torch.zeros(5000, 1, dtype=f64, device=device)
    for m in (1, 2, 4):
        r = noise_robustness(sign_model(device), x, [0.2, 0.4], samples=m, fixed_norm=fixed_norm, batch_size=700)
        p = 2.0 ** -m
        assert ((r.robustness - p).abs() <= 4 * (p * (1 - p) / len(x)) ** 0.5).all()
        assert r.robustness.device.type == device


def test_reproducible_and_seed_dependent():
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):        # the net's initialization must not depend on earlier tests
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x = torch.rand(400, 1, 4, 4, generator=g, dtype=f64)
    a = noise_robustness(net, x, samples=2, seed=7)
    b = noise_robustness(net, x, samples=2, seed=7)
    c = noise_robustness(net, x, samples=2, seed=8)
    assert torch.equal(a.robustness, b.robustness) and not torch.equal(a.robustness, c.robustness)
    assert a.robustness[0] == 1 and len(a.sigmas) == 30
    assert_close(a.mean, a.robustness.mean())
    assert 0 <= a.auc <= 1


def test_label_mode_and_clip():
    net = sign_model()
    x = torch.full((100, 1), 0.5, dtype=f64)
    y = torch.zeros(100, dtype=torch.long)
    assert noise_robustness(net, x, [0.], mode='label', y=y).robustness.item() == 1
    assert noise_robustness(net, x, [0.], mode='label', y=1 - y).robustness.item() == 0
    # clipped to [0, 1], x + n >= 0 keeps class 0 (ties go to the first index)
    assert noise_robustness(net, x, [5.], clip=True).robustness.item() == 1


def test_errors():
    net, x = sign_model(), torch.zeros(10, 1, dtype=f64)
    with pytest.raises(ValueError, match='sigmas must be >= 0'): noise_robustness(net, x, [-1.])
    with pytest.raises(ValueError, match='needs the labels'): noise_robustness(net, x, mode='label')
    with pytest.raises(ValueError, match='y must be labels'): noise_robustness(net, x, mode='label', y=torch.zeros(3).long())
    with pytest.raises(ValueError, match='samples must be'): noise_robustness(net, x, samples=0)
    with pytest.raises(ValueError, match='x must be'): noise_robustness(net, torch.zeros(10), [0.1])
    with pytest.raises(ValueError, match='sigma must be >= 0'): misclassification_rate(0.1, 0.3, 0.1, -0.1)


def test_published_table_viii():
    for (pm, ma, sa), want in (((0.0602, 0.2744, 0.1511), (12.12, 25.47)), ((0.0629, 0.4722, 0.2531), (10.16, 17.01)),
                               ((0.0893, 1.2718, 0.6654), (11.61, 12.63))):
        got = 100 * misclassification_rate(pm, ma, sa, torch.tensor([0.1, 0.3], dtype=f64))
        assert_close(got, torch.tensor(want, dtype=f64), atol=0.01, rtol=0)


def test_line_search_matches_closed_form_for_softmax():
    g = torch.Generator().manual_seed(3)
    soft = nn.Linear(30, 4).double()
    with torch.no_grad(): soft.weight.copy_(torch.randn(4, 30, generator=g, dtype=f64))
    x = torch.rand(300, 30, generator=g, dtype=f64)
    y = soft(x).argmax(1).detach()
    y[:50] = (y[:50] + 1) % 4                                      # 50 misclassified points
    a = minimum_perturbations(soft, x, y, max_norm=10., steps=100)
    xg = x.clone().requires_grad_(True)
    gr, = torch.autograd.grad(F.cross_entropy(soft(xg), y, reduction='sum'), xg)
    wd = (gr / gr.norm(dim=1, keepdim=True)) @ soft.weight.mT
    z = soft(x).detach()
    rate, gap = wd - wd.gather(1, y[:, None]), z.gather(1, y[:, None]) - z
    t = torch.where(rate > 0, gap / rate.clamp(min=1e-300), torch.full_like(gap, float('inf'))).amin(1)
    assert a[:50].isnan().all()
    ok = a.isfinite()
    assert ok.sum() > 200
    assert_close(a[ok], t[ok], atol=1e-6, rtol=0)
    assert (t[~ok & ~a.isnan()] > 10 - 1e-9).all()


def test_predicted_beside_measured():
    g = torch.Generator().manual_seed(0)
    soft = nn.Linear(10, 3).double()
    x = torch.rand(500, 10, generator=g, dtype=f64)
    y = soft(x).argmax(1).detach()
    r = predicted_misclassification(soft, x, y, [0., 0.5], max_norm=20.)
    assert r.p_miss == 0 and r.measured[0] == 0 and r.found == 500
    assert_close(r.predicted, misclassification_rate(r.p_miss, r.mu_a, r.s_a, r.sigmas.double()))
    assert r.measured[1] > 0


# ---------------------------------------------------------------------------------------------------------------------
# Invalid inputs raise instead of returning a plausible number; the caller's model is left as it was.

def lenet_and_digits():
    from netmoments.models import mnist_slice, pretrained
    x, y = mnist_slice()
    return pretrained('lenet-mnist'), x[:20], y[:20]


def test_nan_input_or_weight_raises():
    net, x, _ = lenet_and_digits()
    with pytest.raises(ValueError, match='x must be finite'): noise_robustness(net, x * float('nan'), sigmas=[.1, .3])
    with torch.no_grad(): next(net.parameters()).view(-1)[0] = float('nan')
    with pytest.raises(ValueError, match=r"model parameter '.*weight' must be finite"): noise_robustness(net, x, [.1, .3])


def test_misclassification_rate_arguments():
    with pytest.raises(ValueError, match='p_miss must be a probability'): misclassification_rate(2., 1., 1., .5)
    with pytest.raises(ValueError, match='p_miss must be a probability'): misclassification_rate(-0.1, 1., 1., .5)
    with pytest.raises(ValueError, match='p_miss must be finite'): misclassification_rate(float('nan'), 1., 1., .5)
    with pytest.raises(ValueError, match='mu_a must be >= 0'): misclassification_rate(0.1, -1., 1., .5)
    with pytest.raises(ValueError, match='s_a must be >= 0'): misclassification_rate(0.1, 1., -1., .5)
    with pytest.raises(ValueError, match='sigma and s_a must not both be 0'): misclassification_rate(0.1, 1., 0., 0.)
    g = torch.Generator().manual_seed(0)
    p, m, s, sig = torch.rand(4, 2000, generator=g, dtype=f64) * torch.tensor([[1.], [3.], [2.], [2.]], dtype=f64)
    r = misclassification_rate(p, m, s, sig)
    assert ((r >= 0) & (r <= 1)).all() and (r >= p).all()
    assert misclassification_rate(1., 0., 1., 1.).item() == 1


def test_counts_and_labels_checked_before_work():
    net, x = sign_model(), torch.zeros(10, 1, dtype=f64)
    with pytest.raises(ValueError, match='sigmas must hold at least one'): noise_robustness(net, x, [])
    with pytest.raises(ValueError, match='batch_size must be'): noise_robustness(net, x, [0.1], batch_size=0)
    with pytest.raises(ValueError, match='samples must be'): noise_robustness(net, x, [0.1], samples=-2)
    with pytest.raises(ValueError, match='x must be'): noise_robustness(net, x[:0], [0.1])
    y = torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match=r'y must be classes in \[0, 2\)'): noise_robustness(net, x, [0.1], mode='label', y=y + 2)
    with pytest.raises(ValueError, match=r'y must be classes in \[0, 2\)'): noise_robustness(net, x, [0.1], mode='label', y=y - 1)
    with pytest.raises(ValueError, match='y must be integer'): noise_robustness(net, x, [0.1], mode='label', y=y.double())
    with pytest.raises(ValueError, match='steps must be'): minimum_perturbations(net, x, y, steps=0)
    with pytest.raises(ValueError, match='y must be classes'): minimum_perturbations(net, x, y + 5)
    with pytest.raises(ValueError, match='draws must be'): predicted_misclassification(net, x, y, [0.1], draws=0)
    with pytest.raises(ValueError, match='sigma must hold at least one'): predicted_misclassification(net, x, y, [])


def bn_model():
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10))
    with torch.no_grad():
        for p in m.parameters(): p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m.train()


def test_batchnorm_model_evaluated_in_eval_mode_and_left_unchanged():
    _, x, _ = lenet_and_digits()
    m = bn_model()
    m(x)                                                             # running statistics away from their defaults
    state = {k: v.clone() for k, v in m.state_dict().items()}
    r = noise_robustness(m, x, [0., 0.1])
    assert m.training and all(mod.training for mod in m.modules())
    for k, v in m.state_dict().items(): assert torch.equal(v, state[k]), k
    assert r.robustness[0] == 1                                      # eval mode: sigma = 0 reproduces the prediction
    m.eval(); expected = noise_robustness(m, x, [0., 0.1]); m.train()
    assert torch.equal(r.robustness, expected.robustness)
    m[2].eval()                                                      # mixed modes come back as they were
    noise_robustness(m, x, [0.1])
    assert m.training and not m[2].training and m[4].training


def test_dtypes_limits_and_refusals():
    # one floating dtype per call: tensors decide it, numbers alone give float64 as before
    assert misclassification_rate(0.1, 0.3, 0.2, torch.tensor([0.1, 0.2])).dtype == torch.float32
    assert misclassification_rate(0.1, 0.3, 0.2, 0.1).dtype == f64
    with pytest.raises(TypeError, match='sigma float32'): misclassification_rate(torch.tensor(0.1, dtype=f64), 0.3, 0.2, torch.tensor(0.1))
    big = misclassification_rate(0.1, 0.3, 0.2, torch.tensor([1e200, 1e-200], dtype=f64))   # no overflow in sigma^2
    assert_close(big, torch.tensor([0.1 + 0.9 * 0.5, 0.1 + 0.9 * float(torch.special.ndtr(torch.tensor(-1.5, dtype=f64)))], dtype=f64))
    net, x = sign_model(), torch.zeros(10, 1, dtype=f64)
    with pytest.raises(TypeError, match='sigmas float32'): noise_robustness(net, x, torch.tensor([0.1]))
    with pytest.raises(TypeError, match='convert one'): noise_robustness(net, x.float(), [0.1])
    r = noise_robustness(net, x, [0.2, 0.2])
    assert r.auc == r.mean                                            # no range of sigmas: the mean, not 0 / 0
    y = torch.zeros(10, dtype=torch.long)
    assert minimum_perturbations(net, x[:0], y[:0]).shape == (0,)
    with pytest.raises(ValueError, match='max_norm must be a finite number > 0'): minimum_perturbations(net, x, y, max_norm=float('inf'))
    with pytest.raises(ValueError, match='sigma must be >= 0'): predicted_misclassification(net, x, y, [-0.1])
    g = torch.Generator().manual_seed(0)
    soft = nn.Linear(10, 3).double()
    xs = torch.rand(6, 10, generator=g, dtype=f64)
    ys = soft(xs).argmax(1).detach()
    ys[1:] = (ys[1:] + 1) % 3                                         # one correct point: no spread to fit
    with pytest.raises(ValueError, match='fitting mu_a and s_a needs 2'): predicted_misclassification(soft, xs, ys, [0.1])


def test_lyu_functions_leave_a_train_mode_model_unchanged():
    _, x, y = lenet_and_digits()
    m = bn_model()
    m(x)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    minimum_perturbations(m, x[:6], y[:6], steps=5, bisections=3)
    assert m.training and all(mod.training for mod in m.modules())
    for k, v in m.state_dict().items(): assert torch.equal(v, state[k]), k
