"Linearization centers: k-means, nearest-center lookup, farthest members, LinearizationCache, centers_tightness."
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from conftest import DEVICE_PARAMS
from netmoments.centers import (LinearizationCache, centers_tightness, farthest_members, kmeans, nearest_center)
from netmoments.linearize import seeded, two_stage
from netmoments.tightness import tightness_table


def _blobs(device, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    truth = torch.tensor([[0., 0., 0.], [8., 0., 0.], [0., 8., 0.], [0., 0., 8.]], dtype=dtype)
    labels = torch.arange(4).repeat_interleave(40)
    return (truth[labels] + torch.randn(160, 3, generator=gen, dtype=dtype)).to(device), labels.to(device)


def _net(device):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 5 * 5, 6), nn.ReLU(), nn.Linear(6, 3))
    return seeded(net, seed=3).to(device)


@pytest.mark.parametrize('device', DEVICE_PARAMS)
def test_kmeans_recovers_blobs_reproducibly(device):
    x, labels = _blobs(device)
    km = kmeans(x, 4, seed=5)
    assert km.converged and km.centers.device == x.device and km.centers.dtype == x.dtype
    for c in range(4): assert km.assignments[labels == c].unique().numel() == 1
    assert km.assignments.unique().numel() == 4
    again = kmeans(x, 4, seed=5)
    assert torch.equal(again.centers, km.centers) and torch.equal(again.assignments, km.assignments)
    # the inertia is what it claims: the squared distances to the assigned centers
    torch.testing.assert_close(km.inertia, ((x - km.centers[km.assignments])**2).sum())


def test_kmeans_seed_changes_the_start_not_the_blobs():
    x, _ = _blobs('cpu')
    a, b = kmeans(x, 4, seed=0, iters=1), kmeans(x, 4, seed=1, iters=1)
    assert not torch.equal(a.centers, b.centers)          # different k-means++ draws
    assert torch.allclose(kmeans(x, 4, seed=0).inertia, kmeans(x, 4, seed=1).inertia)   # same optimum on blobs


@settings(max_examples=15)
@given(st.integers(2, 30), st.integers(1, 6), st.integers(0, 2**31))
def test_kmeans_is_a_lloyd_fixed_point(N, k, seed):
    k = min(k, N)
    x = torch.randn(N, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    km = kmeans(x, k, seed=seed, iters=300)
    assert km.converged
    d2 = ((x[:, None] - km.centers[None])**2).sum(-1)
    torch.testing.assert_close(d2.gather(1, km.assignments[:, None])[:, 0], d2.min(1).values)   # nearest centers
    for j in range(k):                                                                         # centers are means
        torch.testing.assert_close(km.centers[j], x[km.assignments == j].mean(0))
    # inertia never above the k-means++ start's (Lloyd steps only lower it)
    start = kmeans(x, k, seed=seed, iters=1, init=None)
    assert km.inertia <= start.inertia + 1e-12


def test_kmeans_k_equals_n_and_duplicates():
    x = torch.randn(9, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    every = kmeans(x, 9)
    assert every.inertia == 0 and torch.equal(every.centers[every.assignments], x)
    dup = torch.cat([x[:3], x[:3]])                    # 3 distinct points, k = 3: still finds all three
    km = kmeans(dup, 3)
    assert km.inertia < 1e-24 and km.assignments.unique().numel() == 3


def test_kmeans_errors():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match='k must be between 1 and the number of points N = 5; got k = 6'): kmeans(x, 6)
    with pytest.raises(ValueError, match='got k = 0'): kmeans(x, 0)
    with pytest.raises(TypeError, match='k must be an int'): kmeans(x, 2.0)
    with pytest.raises(ValueError, match='iters must be >= 1'): kmeans(x, 2, iters=0)
    with pytest.raises(ValueError, match='init must have shape'): kmeans(x, 2, init=x[:3])
    with pytest.raises(ValueError, match='non-empty batch'): kmeans(x[0], 1)
    with pytest.raises(TypeError, match='floating tensor'): kmeans(x.long(), 1)
    with pytest.raises(ValueError, match='x must be finite'): kmeans(x.clone().fill_(float('inf')), 1)


@pytest.mark.parametrize('device', DEVICE_PARAMS)
@pytest.mark.parametrize('chunk', [1, 7, 4096])
def test_nearest_center_matches_brute_force(device, chunk):
    gen = torch.Generator().manual_seed(chunk)
    x = torch.randn(50, 2, 3, generator=gen, dtype=torch.float64).to(device)
    c = torch.randn(11, 2, 3, generator=gen, dtype=torch.float64).to(device)
    index, d2 = nearest_center(x, c, chunk=chunk)
    brute = ((x[:, None] - c[None])**2).flatten(2).sum(-1)
    assert torch.equal(index, brute.argmin(1)) and index.device == x.device
    torch.testing.assert_close(d2, brute.min(1).values)
    with pytest.raises(ValueError, match='points of the same size'): nearest_center(x, c[:, :1])
    with pytest.raises(TypeError, match='x is torch.float64 but centers is torch.float32'): nearest_center(x, c.float())


def test_farthest_members_brute_force_and_errors():
    x, _ = _blobs('cpu')
    km = kmeans(x, 4)
    far = farthest_members(x, km.centers, km.assignments)
    d = (x - km.centers[km.assignments]).norm(dim=1)
    for j in range(4):
        members = (km.assignments == j).nonzero()[:, 0]
        assert far[j] == members[d[members].argmax()]
    with pytest.raises(ValueError, match=r'assignments must lie in \[0, 4\)'):
        farthest_members(x, km.centers, km.assignments + 1)
    with pytest.raises(ValueError, match='int64 tensor of shape'): farthest_members(x, km.centers, km.assignments[:3])


@pytest.mark.parametrize('device', DEVICE_PARAMS)
def test_cache_is_exact_with_one_center_per_point(device):
    net = _net(device)
    x = torch.rand(10, 1, 7, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    cache = LinearizationCache(net, kmeans(x, 10).centers, layer=2)
    ref = two_stage(net, x, 2)
    for got, want in zip(cache.lookup(x), ref): torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    got, want = cache.moments(x, 1e-2), ref.moments(x.flatten(1), 1e-2)
    torch.testing.assert_close(got.mean, want.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.cov, want.cov, rtol=1e-12, atol=1e-12)
    assert got.mean.device == x.device


def test_cache_lookup_is_the_nearest_centers_linearization():
    net = _net('cpu')
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(30, 1, 7, 7, generator=gen, dtype=torch.float64)
    km = kmeans(x, 5, seed=1)
    cache = LinearizationCache(net, km.centers, layer=2, at='pre', chunk=2)
    new = torch.rand(6, 1, 7, 7, generator=gen, dtype=torch.float64)
    near = ((new[:, None] - km.centers[None])**2).flatten(2).sum(-1).argmin(1)
    assert torch.equal(cache.nearest(new), near)
    rows = cache.lookup(new)
    for got, want in zip(rows, two_stage(net, km.centers[near], 2, at='pre')):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert int((cache._slot >= 0).sum()) == near.unique().numel()       # lazily: only the centers used
    cache.forget()
    assert int((cache._slot >= 0).sum()) == 0
    full = LinearizationCache(net, km.centers, layer=2, at='pre', precompute=True)
    torch.testing.assert_close(full.lookup(new).B, rows.B)
    # the moments use each input's own mean with its center's network
    m = cache.moments(new, 1e-3)
    torch.testing.assert_close(m.mean, rows.moments(new.flatten(1), 1e-3).mean)


def test_farthest_cache_and_errors():
    net = _net('cpu')
    x = torch.rand(20, 1, 7, 7, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    km = kmeans(x, 3)
    base = LinearizationCache.farthest(net, x, km.centers, km.assignments, 2)
    far = farthest_members(x, km.centers, km.assignments)
    torch.testing.assert_close(base.lookup(index=km.assignments).A, two_stage(net, x[far[km.assignments]], 2).A)
    with pytest.raises(ValueError, match='clusters are empty'):
        LinearizationCache.farthest(net, x, torch.cat([km.centers, km.centers[:1] + 50]), km.assignments, 2)
    with pytest.raises(ValueError, match='points must have the shape'):
        LinearizationCache(net, km.centers, 2, points=x[:2])
    with pytest.raises(ValueError, match='exactly one of x and index'): base.lookup()
    with pytest.raises(ValueError, match=r'index must lie in \[0, 3\)'): base.lookup(index=torch.tensor([3]))
    with pytest.raises(ValueError, match='x must hold inputs of shape'): base.lookup(x.flatten(1))
    with pytest.raises(ValueError, match='chunk must be >= 1'): LinearizationCache(net, km.centers, 2, chunk=0)
    with pytest.raises(ValueError, match='layer must be between'):
        LinearizationCache(net, km.centers, 5, precompute=True)


def test_centers_tightness_reproduces_tightness_table_per_input():
    net = _net('cpu').float()
    x = torch.rand(3, 1, 7, 7, generator=torch.Generator().manual_seed(5))
    lin = two_stage(_net('cpu'), x.double(), 2)
    ours = centers_tightness(net, x, 0.05, {'per input': lin}, n_mc=300, generator=torch.Generator().manual_seed(9))
    ref = tightness_table(net, x, 0.05, layer=2, n_mc=300, generator=torch.Generator().manual_seed(9), lin=lin)
    for field in ('mean', 'var_exact', 'var_old', 'mc_mean', 'mc_var', 'er_mean', 'er_exact'):
        torch.testing.assert_close(getattr(ours['per input'], field), getattr(ref, field))
    with pytest.raises(ValueError, match='has 3 rows for 2 images'):
        centers_tightness(net, x[:2], 0.05, {'bad': lin}, n_mc=10)


@settings(max_examples=10)
@given(st.sampled_from([-1000, -400, 400, 1000]), st.integers(0, 2**31))
def test_scale_free_to_the_ends_of_the_range(power, seed):
    "Work in units of a power of two near the largest coordinate: scaled points give the very same clustering."
    x, _ = _blobs('cpu', seed=seed)
    k = 2.**power
    ref, got = kmeans(x, 4, seed=seed), kmeans(x * k, 4, seed=seed)
    assert torch.equal(got.assignments, ref.assignments) and torch.equal(got.centers, ref.centers * k)
    assert torch.equal(got.inertia, ref.inertia * k * k)     # inf where k^2 inertia is beyond the range: its limit
    index, d2 = nearest_center(x * k, ref.centers * k)
    assert torch.equal(index, ref.assignments) and torch.equal(d2, nearest_center(x, ref.centers)[1] * k * k)
    assert torch.equal(farthest_members(x * k, ref.centers * k, ref.assignments),
                       farthest_members(x, ref.centers, ref.assignments))


def test_empty_inputs_and_second_dtypes():
    x, _ = _blobs('cpu')
    km = kmeans(x, 4)
    index, d2 = nearest_center(x[:0], km.centers)
    assert index.shape == (0,) and index.dtype == torch.int64 and d2.shape == (0,)
    assert torch.equal(farthest_members(x[:0], km.centers, km.assignments[:0]), torch.full((4,), -1))
    with pytest.raises(ValueError, match='centers must be a non-empty batch'): nearest_center(x, km.centers[:0])
    with pytest.raises(TypeError, match='init is torch.float32 but x is torch.float64'): kmeans(x, 4, init=km.centers.float())
    with pytest.raises(ValueError, match='init must be finite'): kmeans(x, 4, init=km.centers * float('nan'))
    with pytest.raises(TypeError, match='but centers is torch.float32'): farthest_members(x, km.centers.float(), km.assignments)
    with pytest.raises(ValueError, match='points of the same size'): farthest_members(x, km.centers[:, :2], km.assignments)
    with pytest.raises(TypeError, match='seed must be an int'): kmeans(x, 4, seed=0.5)
    with pytest.raises(TypeError, match='chunk must be an int'): kmeans(x, 4, chunk='8')


def test_cache_checks_its_arguments_when_built_and_leaves_the_model_alone():
    net = _net('cpu')
    x = torch.rand(6, 1, 7, 7, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with pytest.raises(TypeError, match='centers is torch.float32 but the model is torch.float64'):
        LinearizationCache(net, x.float(), 2)
    with pytest.raises(TypeError, match='points is torch.float32 but the model is torch.float64'):
        LinearizationCache(net, x, 2, points=x.float())
    with pytest.raises(ValueError, match='layer must be between 1 and 2'): LinearizationCache(net, x, 3)
    with pytest.raises(TypeError, match='x is torch.float32 but the model is torch.float64'):
        LinearizationCache.farthest(net, x.float(), x[:2], torch.arange(6) % 2, 2)
    cache = LinearizationCache(net, x[:2], 2)
    none = cache.lookup(x[:0])
    assert [t.shape[0] for t in none] == [0] * 4 and none.A.shape[1:] == cache.lookup(x[:1]).A.shape[1:]
    with pytest.raises(TypeError, match='index must be an int64 tensor'): cache.lookup(index=torch.tensor([0.]))
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    cache.forget(); cache.moments(x, 1e-3)
    assert all(m.training for m in net.modules()) and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_centers_tightness_checks_images_and_runs_the_network_in_eval_mode():
    net = nn.Sequential(nn.Flatten(), nn.Linear(9, 6), nn.Dropout(0.5), nn.ReLU(), nn.Linear(6, 2)).double().eval()
    x = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lins = {'own': two_stage(net, x, 1)}
    run = lambda: centers_tightness(net, x, 0.1, lins, n_mc=50, generator=torch.Generator().manual_seed(1))
    ref = run()['own']
    net.train()                                  # dropout on: Monte Carlo still runs the eval-mode network
    assert torch.equal(run()['own'].mc_var, ref.mc_var) and net.training
    with pytest.raises(TypeError, match='images is torch.float32 but the model is torch.float64'):
        centers_tightness(net, x.float(), 0.1, lins)
    with pytest.raises(ValueError, match='sigma must be >= 0 and finite'): centers_tightness(net, x, float('inf'), lins)
    empty = centers_tightness(net, x[:0], 0.1, {'own': two_stage(net, x[:0], 1)})
    assert empty['own'].mean.shape == (0, 2)
