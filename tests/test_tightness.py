"Tightness on LeNet and MNIST: E_r, random covariances, tightness_table on two images, and `netmoments tightness`."
import copy
import json

import pytest
import torch
from hypothesis import given, strategies as st

from netmoments.cli import main
from netmoments.models import mnist_slice, pretrained
from netmoments.linearize import two_stage
from netmoments.tightness import dense, random_covariance, relative_error, tightness_table

floats = st.floats(-1e6, 1e6, allow_nan=False)


@given(floats, floats, st.floats(1e-3, 1e3))
def test_relative_error_properties(x, y, scale):
    e = relative_error(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64))
    assert 0 <= e <= 2 + 1e-12                                                   # bounded
    assert e == relative_error(torch.tensor(y, dtype=torch.float64), torch.tensor(x, dtype=torch.float64))
    scaled = relative_error(torch.tensor(scale * x, dtype=torch.float64), torch.tensor(scale * y, dtype=torch.float64))
    assert abs(scaled - e) <= 1e-9                                               # scale free
    assert relative_error(torch.tensor(x), torch.tensor(x)) == 0                 # 0 for equal values, 0 and 0 included


def test_relative_error_values():
    assert relative_error(torch.tensor(1.), torch.tensor(-1.)) == 2
    assert relative_error(torch.tensor(0.), torch.tensor(3.)) == 2
    torch.testing.assert_close(relative_error(torch.tensor([1., 2.]), torch.tensor([1.1, 2.])), torch.tensor([0.2 / 2.1, 0.]))


@given(st.integers(1, 40), st.floats(0, 10), st.one_of(st.none(), st.integers(1, 40)), st.integers(0, 2**31))
def test_random_covariance_trace_and_psd(n, sigma, rank, seed):
    cov = random_covariance(n, sigma, torch.Generator().manual_seed(seed), rank=rank)
    S = dense(cov)
    assert cov.factor.shape == (n, n if rank is None else rank)
    torch.testing.assert_close(S.trace(), torch.tensor(sigma**2 * n, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(S, S.mT)
    assert torch.linalg.eigvalsh(S).min() >= -1e-10 * max(1., sigma**2 * n)


def test_random_covariance_errors():
    with pytest.raises(ValueError, match='sigma must be >= 0'): random_covariance(4, -0.1)
    with pytest.raises(ValueError, match='rank must be >= 1'): random_covariance(4, 0.1, rank=0)


@pytest.fixture(scope='module')
def small_table():
    x, _ = mnist_slice()
    return tightness_table(pretrained(), x[:2], 0.01, n_mc=1000, generator=torch.Generator().manual_seed(1))


def test_tightness_table_shapes_and_values(small_table):
    t = small_table
    assert t.sigma == 0.01
    for field in t[1:]:
        assert field.shape == (2, 10) and field.dtype == torch.float64 and field.isfinite().all()
    assert (t.var_exact > 0).all() and (t.var_old > 0).all() and (t.mc_var_se > 0).all()
    # the mean: within 2% of Monte Carlo (the linearization's own error, not MC noise, dominates here)
    assert t.er_mean.max() < 0.02
    # the exact variance: with 1000 samples a sample variance has relative SE sqrt(2/1000) = 4.5%, so E_r of about
    # 0.036 on average from noise alone; we allow 0.1 on average and 0.3 for any single logit
    assert t.er_exact.mean() < 0.1 and t.er_exact.max() < 0.3
    assert t.er_exact.mean() < t.er_old.mean()
    assert set(t.summary()) == {'mean', 'old', 'exact'}


def test_cli_tightness_json(tmp_path, capsys):
    out, fig = tmp_path / 't.json', tmp_path / 't.png'
    assert main(['tightness', '--images', '2', '--samples', '300', '--json', str(out), '--figure', str(fig)]) == 0
    assert 'mean E_r' in capsys.readouterr().out and fig.stat().st_size > 0
    report = json.loads(out.read_text())
    assert {'model', 'layer', 'at', 'ties', 'sigma', 'samples', 'seed', 'summary', 'images'} <= set(report)
    assert report['model'] == 'lenet-mnist' and report['layer'] == 3 and report['ties'] == 'split'
    assert len(report['images']) == 2
    row = report['images'][0]['logits'][0]
    assert set(row) == {'logit', 'analytic_mean', 'exact_var', 'old_var', 'mc_mean', 'mc_mean_se', 'mc_var', 'mc_var_se',
                        'er_mean', 'er_exact_var', 'er_old_var'}
    assert all(len(r['logits']) == 10 for r in report['images'])


def test_cli_tightness_ties(tmp_path):
    "--ties first changes only the analytic variances: the Monte Carlo columns, run with the same seed, are equal."
    reports = {}
    for ties in ('split', 'first'):
        out = tmp_path / f'{ties}.json'
        assert main(['tightness', '--images', '1', '--samples', '200', '--ties', ties, '--json', str(out)]) == 0
        reports[ties] = json.loads(out.read_text())
    split, first = ([row for img in reports[k]['images'] for row in img['logits']] for k in ('split', 'first'))
    assert reports['first']['ties'] == 'first'
    assert [r['mc_var'] for r in split] == [r['mc_var'] for r in first]
    assert [r['exact_var'] for r in split] != [r['exact_var'] for r in first]


@given(st.sampled_from([1e-320, 1e-300, 1e300, 1.7e308]), floats, floats)
def test_relative_error_is_scale_free_to_the_ends_of_the_range(scale, x, y):
    "Both values are divided by the larger before anything is summed: no overflow, no underflow, no NaN."
    x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    if not ((x * scale).isfinite() and (y * scale).isfinite()): return      # infinite values are refused, not scaled
    ref, got = relative_error(x, y), relative_error(x * scale, y * scale)
    assert torch.isfinite(got) and 0 <= got <= 2
    if scale > 1e-300: assert abs(got - ref) <= 1e-12                      # no subnormals: the same value


def test_relative_error_and_dense_refuse_bad_inputs():
    one = torch.ones(3)
    with pytest.raises(TypeError, match='found x float32, y float64'): relative_error(one, one.double())
    with pytest.raises(ValueError, match='x must be finite'): relative_error(one * float('inf'), one)
    with pytest.raises(ValueError, match='shapes do not broadcast'): relative_error(one, torch.ones(2))
    with pytest.raises(TypeError, match='cov must be a LowRankCov'): dense((torch.ones(3, 2), one))
    with pytest.raises(TypeError, match='found cov.factor float32, cov.diag float64'):
        dense(random_covariance(3, 1., rank=2, dtype=torch.float32)._replace(diag=torch.zeros(3, dtype=torch.float64)))
    with pytest.raises(ValueError, match='cov.factor must be finite'):
        dense(random_covariance(3, 1.)._replace(factor=torch.full((3, 3), float('nan'), dtype=torch.float64)))
    with pytest.raises(ValueError, match='cov overflows float64'):
        dense(random_covariance(3, 1.)._replace(factor=torch.full((3, 3), 1e200, dtype=torch.float64)))
    for bad in (float('nan'), float('inf'), -1.):
        with pytest.raises(ValueError, match='sigma must be >= 0 and finite'): random_covariance(4, bad)
    with pytest.raises(TypeError, match='sigma must be a number'): random_covariance(4, '0.1')
    with pytest.raises(TypeError, match='n must be an int'): random_covariance(4.5, 0.1)
    with pytest.raises(TypeError, match='dtype must be a floating torch dtype'): random_covariance(4, 0.1, dtype=torch.int32)


def test_tightness_table_checks_first_and_leaves_the_model_alone():
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Dropout(0.5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).eval()
    x = torch.rand(2, 6, generator=torch.Generator().manual_seed(0))
    run = lambda: tightness_table(net, x, 0.1, layer=1, n_mc=50, generator=torch.Generator().manual_seed(1))
    ref = run()
    assert {t.dtype for t in ref[1:]} == {torch.float64}           # float32 network and images: a float64 table
    net.train()                                                    # dropout on: still the eval-mode network
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for a, b in zip(run()[1:], ref[1:]): assert torch.equal(a, b)
    assert all(m.training for m in net.modules()) and all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    with pytest.raises(TypeError, match='images is torch.float64 but the model is torch.float32'):
        tightness_table(net, x.double(), 0.1, layer=1)
    with pytest.raises(ValueError, match='images must be finite'): tightness_table(net, x * float('nan'), 0.1, layer=1)
    with pytest.raises(ValueError, match='n_mc must be >= 2'): tightness_table(net, x, 0.1, layer=1, n_mc=1)
    with pytest.raises(TypeError, match='generator must be a torch.Generator'): tightness_table(net, x, 0.1, 1, generator=1)
    with pytest.raises(ValueError, match='lin has 2 rows for 1 images'):
        tightness_table(net, x[:1], 0.1, lin=two_stage(copy.deepcopy(net).double(), x.double(), 1))
    assert tightness_table(net, x[:0], 0.1, layer=1).mean.shape == (0, 3)
