"Properties of `netmoments.linearize`: the two-stage linearization against autograd, its exactness, moments and errors."
import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn
from torch.testing import assert_close

from netmoments.ara import ara_moments
from netmoments.linearize import AffineReluAffine, LinearizationMemory, linearization_memory, model_layers, seeded, two_stage
from netmoments.montecarlo import mc_moments

f64, f32 = torch.float64, torch.float32
# torch's own forward-mode decompositions (loaded by the first jacfwd) still call torch.jit.script
pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:DeprecationWarning')


def conv_layers():
    "The brief's conv net: Conv2d, ReLU, MaxPool2d, Conv2d, ReLU, AvgPool2d, Flatten, Linear, BatchNorm1d, ReLU, Linear."
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3),
                         nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(5 * 2 * 2, 12), nn.BatchNorm1d(12), nn.ReLU(),
                         nn.Linear(12, 4))


def conv_net(seed=0, dtype=f64):
    return seeded(conv_layers(), seed, dtype)


RELUS = [1, 4, 9]   # module indices of the ReLUs of conv_net


def points(N, shape=(1, 12, 12), seed=1, dtype=f64):
    return torch.rand(N, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Exactness on a network that is already Affine-ReLU-Affine.

@pytest.mark.parametrize('at', ['relu', 'pre'])
@pytest.mark.parametrize('dtype', [f32, f64])
def test_ara_network_is_its_own_linearization(at, dtype):
    net = seeded(nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 2)), 3, dtype)
    x = torch.randn(5, 6, dtype=dtype, generator=torch.Generator().manual_seed(0))
    lin = two_stage(net, x, 1, at=at)
    assert isinstance(lin, AffineReluAffine)
    assert torch.equal(lin.A, net[0].weight.expand(5, 9, 6)) and torch.equal(lin.B, net[2].weight.expand(5, 2, 9))
    tol = dict(rtol=0, atol=10 * torch.finfo(dtype).eps * 4)
    assert_close(lin.c1, net[0].bias.expand(5, 9), **tol)
    assert_close(lin.c2, net[2].bias.expand(5, 2), **tol)
    y = torch.randn(7, 5, 6, dtype=dtype, generator=torch.Generator().manual_seed(1))   # anywhere, not only at x
    assert_close(lin(y), net(y))


# ---------------------------------------------------------------------------------------------------------------------
# Against torch.autograd.functional.jacobian, at every layer and both points.

@pytest.mark.parametrize('layer', [1, 2, 3])
@pytest.mark.parametrize('at', ['relu', 'pre'])
def test_jacobians_match_autograd(layer, at):
    net, x = conv_net(), points(3)
    r = RELUS[layer - 1]
    bottom, top = nn.Sequential(*list(net)[:r]), nn.Sequential(*list(net)[r + 1:])
    z = bottom(x)
    y = z.relu() if at == 'relu' else z
    lin = two_stage(net, x, layer, at=at, ties='first')    # autograd's choice at tied max-pooling windows
    q = z[0].numel()
    assert lin.A.shape == (3, q, 144) and lin.c1.shape == (3, q) and lin.B.shape == (3, 4, q) and lin.c2.shape == (3, 4)
    for i in range(3):
        A = torch.autograd.functional.jacobian(lambda v: bottom(v.reshape(1, 1, 12, 12)).flatten(), x[i].flatten())
        B = torch.autograd.functional.jacobian(lambda v: top(v.reshape(1, *z.shape[1:])).flatten(), y[i].flatten())
        assert_close(lin.A[i], A, rtol=0, atol=1e-13)
        assert_close(lin.B[i], B, rtol=0, atol=1e-13)
        assert_close(lin.c1[i], z[i].flatten() - A @ x[i].flatten(), rtol=0, atol=1e-13)
        assert_close(lin.c2[i], top(y[i:i + 1]).flatten() - B @ y[i].flatten(), rtol=0, atol=1e-13)


@pytest.mark.parametrize('layer', [1, 2, 3])
def test_relu_point_reproduces_the_network(layer):
    "at='relu': B relu(A x + c1) + c2 = R(x) at the points of linearization."
    net, x = conv_net(), points(4)
    lin = two_stage(net, x, layer)
    assert_close(lin(x.flatten(1)), net(x), rtol=0, atol=1e-13)


def test_pre_point_misses_unless_the_top_stage_is_affine():
    net, x = conv_net(), points(4)
    miss = [(two_stage(net, x, l, at='pre')(x.flatten(1)) - net(x)).abs().max() for l in (1, 2, 3)]
    assert miss[0] > 1e-4 and miss[1] > 1e-4          # a ReLU sits in the top stage
    assert miss[2] < 1e-13                            # the top stage is one Linear


def test_agrees_near_the_point():
    "Piecewise linear: a perturbation small enough to flip no ReLU leaves the linearization exact."
    net, x = conv_net(), points(2)
    lin = two_stage(net, x, 2)
    step = 1e-9 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=f64)
    assert_close(lin((x + step).flatten(1)), net(x + step), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Batches, dtypes, model forms, autograd.

def test_batch_equals_points_one_by_one():
    net, x = conv_net(), points(5)
    lin = two_stage(net, x, 2)
    for i in range(5):
        for batched, alone in zip(lin, two_stage(net, x[i:i + 1], 2)):
            assert_close(batched[i], alone[0], rtol=0, atol=1e-14)


def test_float32_follows_float64():
    lin64 = two_stage(conv_net(), points(2), 3)
    lin32 = two_stage(conv_net(dtype=f32), points(2).float(), 3)
    for a, b in zip(lin32, lin64):
        assert a.dtype == f32
        assert_close(a.double(), b, rtol=0, atol=1e-5 * float(b.abs().max()))


def test_nested_and_protocol_models_give_the_same_linearization():
    net, x = conv_net(), points(2)

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.features, self.classifier = nn.Sequential(*list(net)[:6]), nn.Sequential(*list(net)[6:])
        def as_sequential(self): return nn.Sequential(self.features, nn.Sequential(self.classifier))

    assert [type(m) for m in model_layers(Wrapped())] == [type(m) for m in net]
    for a, b in zip(two_stage(Wrapped(), x, 2), two_stage(net, x, 2)): assert torch.equal(a, b)
    for a, b in zip(two_stage(nn.Sequential(nn.Sequential(*list(net)[:4]), *list(net)[4:]), x, 2), two_stage(net, x, 2)):
        assert torch.equal(a, b)


def test_inplace_relu_corrupts_nothing():
    net = seeded(nn.Sequential(nn.ReLU(inplace=True), nn.Linear(5, 6), nn.ReLU(inplace=True), nn.Dropout(0.3),
                               nn.Linear(6, 3), nn.ReLU(inplace=True)), 4)
    x = torch.randn(8, 5, dtype=f64, generator=torch.Generator().manual_seed(2))
    kept = x.clone()
    for layer in (1, 2, 3):
        lin = two_stage(net, x, layer)
        assert torch.equal(x, kept)
        assert_close(lin(x), net(x.clone()), rtol=0, atol=1e-14)
    lin = two_stage(net, x, 1)      # the first module is the split: A = I, c1 = 0
    assert torch.equal(lin.A, torch.eye(5, dtype=f64).expand(8, 5, 5)) and torch.equal(lin.c1, torch.zeros(8, 5, dtype=f64))
    lin = two_stage(net, x, 3)      # the last module is the split: B = I, c2 = 0
    assert torch.equal(lin.B, torch.eye(3, dtype=f64).expand(8, 3, 3)) and torch.equal(lin.c2, torch.zeros(8, 3, dtype=f64))


def test_differentiable_in_the_parameters_unless_no_grad():
    net = seeded(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), 5).requires_grad_()
    x = torch.randn(2, 3, dtype=f64, generator=torch.Generator().manual_seed(0))
    lin = two_stage(net, x, 2)
    assert all(t.requires_grad for t in lin)
    lin.A.sum().backward()
    assert net[0].weight.grad is not None
    with torch.no_grad(): lin = two_stage(net, x, 2)
    assert not any(t.requires_grad for t in lin)


# ---------------------------------------------------------------------------------------------------------------------
# Moments of the linearized network.

@pytest.mark.parametrize('layer', [2, 3])
def test_moments_match_monte_carlo_within_4_se(layer):
    net, x = conv_net(), points(1)
    lin = two_stage(net, x, layer)
    one = AffineReluAffine(*(t[0] for t in lin))
    gen = torch.Generator().manual_seed(layer)
    L = 0.03 * torch.randn(144, 144, generator=gen, dtype=f64)
    cov = L @ L.mT + 1e-4 * torch.eye(144, dtype=f64)
    exact = one.moments(x[0].flatten(), cov)
    mc = mc_moments(one, x[0].flatten(), cov, n=40_000, seed=layer)
    assert ((exact.mean - mc.mean).abs() <= 4 * mc.mean_se).all()
    assert ((exact.cov - mc.cov).abs() <= 4 * mc.cov_se).all()
    batched = lin.moments(x.flatten(1), cov)
    assert_close(batched.cov[0], exact.cov, rtol=0, atol=1e-14)
    assert_close(ara_moments(x.flatten(1), cov, *lin).mean, batched.mean, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Memory.

def test_linearization_memory_counts():
    net = conv_net()
    rows = linearization_memory(net, (1, 12, 12))
    assert list(rows) == [1, 2, 3] and all(isinstance(r, LinearizationMemory) for r in rows.values())
    for l, r in rows.items():
        lin = two_stage(net, points(1), l)
        q, n, d = lin.A.shape[1], lin.A.shape[2], lin.B.shape[1]
        assert (r.layer, r.n, r.q, r.d, r.elements) == (l, n, q, d, 2 * q + n + d)
        assert r.jacobian_bytes == lin.A[0].nbytes + lin.B[0].nbytes
        assert r.hidden_cov_bytes == q * q * 8
    with torch.device('meta'): meta = conv_layers().eval()   # sizes need no weights: nothing allocated or drawn
    assert linearization_memory(meta, (1, 12, 12), dtype=f64) == rows
    assert linearization_memory(net, (1, 12, 12), 2, dtype=f32) == rows[2]._replace(
        jacobian_bytes=rows[2].jacobian_bytes // 2, hidden_cov_bytes=rows[2].hidden_cov_bytes // 2)


def test_memory_budget_refuses_before_allocating():
    net, x = conv_net(), points(2)
    q = linearization_memory(net, (1, 12, 12), 1).q
    with pytest.raises(ValueError, match=rf'dense {q} x {q} hidden covariance.*chunk='):
        two_stage(net, x, 1, max_bytes=2 * q * q * 8 - 1)
    two_stage(net, x, 1, max_bytes=2 * q * q * 8)
    two_stage(net, x, 1, max_bytes=None)
    with pytest.raises(ValueError, match='A and B at layer 1 take'):
        two_stage(net, x, 1, max_bytes=1000)


# ---------------------------------------------------------------------------------------------------------------------
# Errors.

@pytest.mark.parametrize('bad, match', [
    (nn.Sigmoid(), r'module 2 of the model \(Sigmoid\) is not supported'),
    (nn.LSTM(4, 4), r'module 2 of the model \(LSTM\) is not supported'),
    (nn.LeakyReLU(), r'module 2 of the model \(LeakyReLU\) is not supported'),
])
def test_unsupported_module_is_named(bad, match):
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), bad, nn.Linear(4, 2))
    with pytest.raises(ValueError, match=match): two_stage(net, torch.zeros(1, 3), 1)


def test_training_mode_linearizes_the_eval_network_and_leaves_the_model_alone():
    # model_layers still refuses a training-mode module; two_stage linearizes the eval-mode network instead
    net = conv_net().train()
    with pytest.raises(ValueError, match=r'module 8 of the model \(BatchNorm1d\) is in training mode.*model.eval\(\)'):
        model_layers(net)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = points(2)
    lin = two_stage(net, x, 1)
    for a, b in zip(lin, two_stage(conv_net().eval(), x, 1)): assert_close(a, b, rtol=0, atol=0)
    assert all(m.training for m in net.modules())                       # the mode flags are as they were
    for k, v in net.state_dict().items(): assert torch.equal(v, state[k]), k   # and so are the buffers
    assert linearization_memory(net, (1, 12, 12)) == linearization_memory(conv_net(), (1, 12, 12))
    with pytest.raises(ValueError, match='x must be finite'): two_stage(net, x * float('nan'), 1)
    assert all(m.training for m in net.modules())                       # restored after an error too
    for shape in ((-1, 12, 12), (1, 0, 12), (), 12):
        with pytest.raises(ValueError, match='input_shape must be'): linearization_memory(net, shape)
    drop = nn.Sequential(nn.Linear(3, 4), nn.Dropout(), nn.ReLU(), nn.Linear(4, 2))
    for a, b in zip(two_stage(drop, torch.ones(2, 3), 1), two_stage(drop.eval(), torch.ones(2, 3), 1)):
        assert_close(a, b, rtol=0, atol=0)


def test_layer_out_of_range_names_the_relu_count():
    net, x = conv_net(), points(1)
    for layer in (0, 4, -1):
        with pytest.raises(ValueError, match=f'between 1 and 3, the number of ReLU modules of the model; got {layer}'):
            two_stage(net, x, layer)
    with pytest.raises(ValueError, match='0 ReLU modules'):
        two_stage(nn.Sequential(nn.Linear(3, 2)), torch.zeros(1, 3), 1)
    with pytest.raises(TypeError, match='layer must be an int'): two_stage(net, x, 2.0)
    with pytest.raises(TypeError, match='layer must be an int'): two_stage(net, x, True)


def test_bad_points_and_arguments():
    net, x = conv_net(), points(2)
    with pytest.raises(ValueError, match=r'does not fit module 0 of the model .*\(N, C, H, W\)'): two_stage(net, x[0], 1)
    with pytest.raises(ValueError, match='does not fit module 7'): two_stage(net, points(2, (1, 16, 16)), 1)
    with pytest.raises(ValueError, match='does not fit module 0'): two_stage(net, points(2, (3, 12, 12)), 1)
    with pytest.raises(ValueError, match='x must be a batch of points'): two_stage(net, x.flatten(), 1)
    with pytest.raises(ValueError, match='x must be finite'): two_stage(net, x * float('nan'), 1)
    with pytest.raises(TypeError, match='x is torch.float32 but the model is torch.float64'): two_stage(net, x.float(), 1)
    with pytest.raises(TypeError, match='x must be a floating tensor'): two_stage(net, x.long(), 1)
    with pytest.raises(TypeError, match='x must be a tensor'): two_stage(net, x.tolist(), 1)
    with pytest.raises(ValueError, match="at must be 'relu' or 'pre'"): two_stage(net, x, 1, at='post')
    with pytest.raises(ValueError, match="ties must be 'split' or 'first'"): two_stage(net, x, 1, ties='mean')
    with pytest.raises(TypeError, match='as_sequential'): two_stage(nn.LSTM(3, 3), x, 1)


# ---------------------------------------------------------------------------------------------------------------------
# Hypothesis: random MLP shapes, exactness at x and Jacobians against autograd.

@given(widths=st.lists(st.integers(1, 6), min_size=3, max_size=5), N=st.integers(1, 3), seed=st.integers(0, 2**16),
       data=st.data())
def test_random_mlps(widths, N, seed, data):
    mods = []
    for a, b in zip(widths[:-1], widths[1:]): mods += [nn.Linear(a, b), nn.ReLU()]
    net = seeded(nn.Sequential(*mods[:-1]), seed)
    L = len(widths) - 2
    layer = data.draw(st.integers(1, L))
    x = torch.randn(N, widths[0], dtype=f64, generator=torch.Generator().manual_seed(seed))
    lin = two_stage(net, x, layer)
    assert_close(lin(x), net(x), rtol=0, atol=1e-12)
    bottom = nn.Sequential(*mods[:2 * layer - 1])
    for i in range(N):
        A = torch.autograd.functional.jacobian(lambda v: bottom(v[None])[0], x[i])
        assert_close(lin.A[i], A, rtol=0, atol=1e-13)


# ---------------------------------------------------------------------------------------------------------------------
# Ties in max-pooling: the value is the maximum, the derivative is split evenly among the tied members.

@given(k=st.integers(1, 3), s=st.integers(1, 3), p=st.integers(0, 1), d=st.integers(1, 2), ceil=st.booleans(),
       seed=st.integers(0, 2**16), tie=st.booleans())
def test_split_max_pool(k, s, p, d, ceil, seed, tie):
    from netmoments.linearize import _forward, _split_max_pool
    from torch.func import jacrev
    if p > k // 2: p = 0                                      # torch requires padding <= kernel / 2
    pool = nn.MaxPool2d(k, s, p, d, ceil_mode=ceil)
    h = torch.randn(1, 2, 7, 6, dtype=f64, generator=torch.Generator().manual_seed(seed))
    if tie: h[..., :3, :3] = 0.5                              # a constant patch: windows inside it tie
    assert torch.equal(_split_max_pool(pool, h), pool(h))
    split = jacrev(lambda v: _forward([pool], v, 0, 1, 'split'))(h).reshape(-1, h.numel())
    first = jacrev(lambda v: _forward([pool], v, 0, 1, 'first'))(h).reshape(-1, h.numel())
    assert_close(split.sum(1), torch.ones(len(split), dtype=f64), rtol=0, atol=1e-15)   # each output: weights sum to 1
    out = pool(h).flatten()
    tied = (split > 0).sum(1) > 1
    if not tie: assert not tied.any() and torch.equal(split, first)    # continuous data: no ties, autograd's Jacobian
    assert torch.equal(split[~tied], first[~tied])
    for row in split[tied]:                                   # tied windows: equal shares, all on members at the max
        members = row.nonzero().flatten()
        assert_close(row[members], torch.full((len(members),), 1 / len(members), dtype=f64), rtol=0, atol=1e-15)
        assert (h.flatten()[members] == 0.5).all()
    assert (out[tied] == 0.5).all()


def test_split_ties_on_lenet_mnist():
    "On the bundled LeNet and MNIST digits, ties exist; the split changes A, not the value, and A still sums alike."
    from netmoments.models import pretrained, mnist_slice
    net = pretrained('lenet-mnist').double()
    x = mnist_slice()[0][:2].double()
    split, first = two_stage(net, x, 3), two_stage(net, x, 3, ties='first')
    assert not torch.equal(split.A, first.A)
    assert_close(split.c1 + (split.A @ x.flatten(1)[..., None])[..., 0], first.c1 + (first.A @ x.flatten(1)[..., None])[..., 0],
                 rtol=0, atol=1e-12)                           # both reproduce R_{l-1}(x) at the points
    assert torch.equal(split.B, first.B)                       # l = 3: the top stage is the last Linear, no pooling


def test_no_points_give_empty_linearizations_of_the_right_shape():
    "An empty batch maps to empty A, c1, B, c2, shaped by the split (an empty batch of a batch-wise map)."
    net = conv_net()
    for layer in (1, 2, 3):
        full, none = two_stage(net, points(2), layer), two_stage(net, points(2)[:0], layer)
        assert [t.shape[1:] for t in none] == [t.shape[1:] for t in full] and all(len(t) == 0 for t in none)
        assert all(t.dtype == torch.float64 for t in none)


def test_non_finite_weights_and_bad_arguments_are_named():
    net, x = conv_net(), points(2)
    with torch.no_grad(): net[0].bias[0] = float('inf')
    with pytest.raises(ValueError, match='model must have finite parameters; 0.bias holds'): two_stage(net, x, 1)
    net = conv_net()
    for bad in (-1, 2.5, 'big'):
        with pytest.raises((TypeError, ValueError), match='max_bytes must be'): two_stage(net, x, 1, max_bytes=bad)
    with pytest.raises(TypeError, match='layer must be an int'): two_stage(net, x, None)
    with pytest.raises(TypeError, match='net must be a torch.nn.Module'): seeded('net', 0)
    with pytest.raises(TypeError, match='seed must be an int'): seeded(nn.Linear(2, 2), 0.5)
    with pytest.raises(ValueError, match='seed must be >= 0'): seeded(nn.Linear(2, 2), -1)
    with pytest.raises(TypeError, match='dtype must be a floating torch dtype'): seeded(nn.Linear(2, 2), 0, torch.int64)
    with pytest.raises(TypeError, match='dtype must be a floating torch dtype'):
        linearization_memory(net, (1, 12, 12), dtype='float64')
