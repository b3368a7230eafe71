"The `netmoments` command: `check` and `bench` through `netmoments.cli.main`, and the installed console script."
import re, shutil, subprocess

import pytest
import torch

from netmoments.cli import bundled_network, check_report, main

ROW = re.compile(r'^\s*(\d+) \|')   # a data row of the check table: the output index, then '|'


def rows_and_worst(text):
    "Data rows of the check table, the |z| columns of each, and the printed largest deviation."
    rows = [line for line in text.splitlines() if ROW.match(line)]
    zs = [float(x) for line in rows for x in re.findall(r'\s(\d+\.\d\d)(?=\s*(?:\||$))', line)]
    worst = float(re.search(r'largest deviation: ([\d.]+) standard errors', text).group(1))
    return rows, zs, worst


def test_check_default_network_passes(capsys):
    assert main(['check', '--samples', '20000']) == 0
    out = capsys.readouterr().out
    assert 'Affine-ReLU-Affine network n=8 p=32 d=4, torch.float64, cpu' in out
    assert 'mean (exact)' in out and 'var (MC)' in out and 'covariance (exact; upper triangle: MC):' in out
    rows, zs, worst = rows_and_worst(out)
    assert [int(ROW.match(r).group(1)) for r in rows] == [0, 1, 2, 3]
    assert len(zs) == 8 and max(zs) <= worst <= 5      # the two |z| columns per row; off-diagonals may be the worst


@pytest.mark.parametrize('dtype', ['float64', 'float32'])
def test_check_on_each_device_and_dtype(device, dtype, capsys):
    assert main(['check', '--samples', '20000', '--sizes', '4', '8', '2', '--device', device, '--dtype', dtype]) == 0
    out = capsys.readouterr().out
    assert f'n=4 p=8 d=2, torch.{dtype}, {device}' in out
    rows, _, worst = rows_and_worst(out)
    assert len(rows) == 2 and worst <= 5


def test_check_fails_when_the_limit_cannot_be_met(capsys):
    "--max-se 0: any Monte Carlo noise at all is 'too far', so the command must say so and exit 1."
    assert main(['check', '--samples', '20000', '--max-se', '0']) == 1
    captured = capsys.readouterr()
    assert 'largest deviation' in captured.out
    assert 'FAILED: a moment is' in captured.err and 'limit 0.0' in captured.err


@pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available here: the refusal cannot be triggered')
def test_check_refuses_cuda_without_cuda(capsys):
    assert main(['check', '--device', 'cuda']) == 2
    captured = capsys.readouterr()
    assert 'CUDA' in captured.err and captured.out == ''


def test_check_report_is_seeded():
    "Same seed, same Monte Carlo estimate: the report differs at most in its timing line."
    net = bundled_network(4, 8, 2)
    (a, wa), (b, wb) = check_report(net, samples=5000, seed=3), check_report(net, samples=5000, seed=3)
    strip = lambda t: [line for line in t.splitlines() if not line.startswith('time:')]
    assert strip(a) == strip(b) and wa == wb
    assert check_report(net, samples=5000, seed=4)[1] != wa


def test_bundled_network_shapes_and_seed():
    net = bundled_network()
    assert [tuple(x.shape) for x in net] == [(32, 8), (32,), (4, 32), (4,), (8,), (8, 8)]
    assert net(torch.zeros(5, 8, dtype=torch.float64)).shape == (5, 4)
    assert all(torch.equal(x, y) for x, y in zip(net, bundled_network()))
    assert not torch.equal(net.A, bundled_network(seed=1).A)


def test_bench_prints_eight_rows(capsys):
    "Per device: exact pairs in float64 and float32, the series at 5 and 20 terms, analytic and MC per dtype."
    assert main(['bench', '--pairs', '2000', '--mc-samples', '2000', '--repeats', '1', '--devices', 'cpu']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ['benchmark', 'device', 'dtype'] and set(lines[1]) == {'-'}
    data = lines[2:]
    assert len(data) == 8, data
    col = lambda name: [line[lines[0].index(name):].split()[0] for line in data]   # fixed-width columns
    assert col('device') == ['cpu'] * 8
    assert col('dtype') == ['float64', 'float32', 'float64', 'float64'] + ['float64'] * 2 + ['float32'] * 2
    assert all(float(v) > 0 for v in col('value')) and all(float(v) > 0 for v in col('ratio'))
    assert sum(line.startswith('Lemma 4 series') for line in data) == 2


def test_stepcost_prints_each_scheme_per_batch(capsys):
    assert main(['stepcost', '--batch', '8', '16', '--rounds', '1', '--steps', '1', '--folds', '2', '3']) == 0
    out = capsys.readouterr().out
    assert out.count('batch N = ') == 2 and 'batch N = 16' in out
    names = ('vanilla ', 'vanilla, batch 2N', 'regularizer (eq 3), alpha 1', 'augmentation N=2', 'augmentation N=3')
    for name in names: assert out.count(name) == 2, name
    rows = [line for line in out.splitlines() if 'ms/step' in line]
    assert len(rows) == 10 and all(float(r.split('ms/step')[0].split()[-1]) > 0 for r in rows)
    assert rows[0].rstrip().endswith('1.00x vanilla')


def test_bad_arguments_exit_through_argparse(capsys):
    for argv in ([], ['frobnicate'], ['check', '--dtype', 'float16'], ['check', '--sizes', '4', '8']):
        with pytest.raises(SystemExit) as info: main(argv)
        assert info.value.code == 2
    capsys.readouterr()


@pytest.mark.skipif(shutil.which('netmoments') is None, reason='the netmoments console script is not installed')
def test_console_script():
    res = subprocess.run(['netmoments', 'check', '--samples', '20000', '--sizes', '4', '8', '2'],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert 'largest deviation' in res.stdout and 'n=4 p=8 d=2' in res.stdout
