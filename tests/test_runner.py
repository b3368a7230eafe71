"""The experiment runner: a Ray run killed mid-way (SIGKILL) and resumed gives the same merged result as an uninterrupted
run in process, finished units are not recomputed, and unit files are written atomically."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from netmoments.runner import Experiment, experiment, load_result, merge, register, run, run_dir, select_units

pytest.importorskip('ray')

GRID_MODULE = textwrap.dedent('''
    "A grid of 12 slow units for the runner tests: each sleeps, then sums seeded normal draws."
    import time
    import torch
    from netmoments.runner import Experiment, register

    def unit(p):
        time.sleep(p['sleep'])
        x = torch.randn(1000, generator=torch.Generator().manual_seed(p['seed']), dtype=torch.float64)
        return {'sum': x.sum().item(), 'threads': torch.get_num_threads()}

    def grid(preset):
        return [{'i': i, 'seed': 7 * i + 1, 'sleep': 0.4} for i in range(12)]

    def merge(params, results):
        return {'sums': [r['sum'] for r in results], 'threads': sorted({r['threads'] for r in results})}

    register(Experiment('slow-grid', grid, unit, merge, presets={'test': 'twelve slow units'}))
''')

DRIVER = 'import sys, slowgrid; from netmoments.runner import run; run("slow-grid", out=sys.argv[1], engine=sys.argv[2], workers=2, resume=True, progress=False)'


@pytest.fixture
def grid_module(tmp_path, monkeypatch):
    (tmp_path / 'slowgrid.py').write_text(GRID_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(tmp_path), os.environ.get('PYTHONPATH', '')])}
    import slowgrid   # noqa: F401  (registers 'slow-grid' in this process too)
    return env


def driver(out, engine, env):
    return subprocess.Popen([sys.executable, '-c', DRIVER, str(out), engine], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_ray_run_resumes_to_the_uninterrupted_result(grid_module, tmp_path):
    out = tmp_path / 'ray'
    units = run_dir(out, 'slow-grid', 'test')
    proc = driver(out, 'ray', grid_module)
    deadline = time.time() + 240
    while len(list(units.glob('*.json'))) < 3:
        assert proc.poll() is None, f'the driver ended before it could be killed:\n{proc.stdout.read()}'
        assert time.time() < deadline, 'no unit finished within 240 s'
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)                      # the driver and the Ray instance it started
    proc.wait()
    survivors = {f.name: f.read_bytes() for f in units.glob('*.json')}
    assert 3 <= len(survivors) < 12, f'{len(survivors)} units finished before the kill'
    assert load_result('slow-grid', 'test', out) is None

    resumed = driver(out, 'ray', grid_module)
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log
    for name, content in survivors.items():                  # finished units were not recomputed
        assert (units / name).read_bytes() == content
    assert len(list(units.glob('*.json'))) == 12

    local = tmp_path / 'local'
    summary = run('slow-grid', out=local, engine='local', progress=False)
    assert summary.done == list(range(12)) and summary.pending == 0
    ray_result, local_result = load_result('slow-grid', 'test', out), load_result('slow-grid', 'test', local)
    assert ray_result['result'] == local_result['result']
    assert ray_result['result']['threads'] == [1]
    assert ray_result['provenance']['units'] == 12


def test_resume_in_process_skips_finished_units(grid_module, tmp_path):
    first = run('slow-grid', out=tmp_path, engine='local', units='0-3', progress=False)
    assert (first.done, first.pending, first.merged) == ([0, 1, 2, 3], 8, None)
    before = {f.name: f.read_bytes() for f in run_dir(tmp_path, 'slow-grid', 'test').glob('*.json')}
    with pytest.raises(FileExistsError, match='pass resume=True'):
        run('slow-grid', out=tmp_path, engine='local', progress=False)
    second = run('slow-grid', out=tmp_path, engine='local', resume=True, units='2-5', progress=False)
    assert (second.done, second.skipped) == ([4, 5], [2, 3])
    after = {f.name: f.read_bytes() for f in run_dir(tmp_path, 'slow-grid', 'test').glob('*.json')}
    assert all(after[k] == v for k, v in before.items())


def test_changed_grid_is_reported_not_merged(tmp_path):
    register(Experiment('grid-a', lambda p: [{'seed': 1}, {'seed': 2}], lambda p: {'s': p['seed']},
                        lambda ps, rs: rs, presets={'x': ''}))
    run('grid-a', out=tmp_path, engine='local', progress=False)
    register(Experiment('grid-a', lambda p: [{'seed': 1}, {'seed': 3}], lambda p: {'s': p['seed']},
                        lambda ps, rs: rs, presets={'x': ''}))
    with pytest.raises(ValueError, match='matches no unit of this grid'):
        run('grid-a', out=tmp_path, engine='local', resume=True, progress=False)


@pytest.mark.parametrize('kw,message', [
    (dict(engine='dask'), "engine must be 'ray' or 'local'"),
    (dict(workers=0), 'workers must be >= 1'),
    (dict(preset='huge'), "has no preset 'huge'"),
    (dict(shard='2/2'), "shard must be 'i/n'"),
    (dict(units='5-99'), 'is not a range inside'),
    (dict(workers=2.5), 'workers must be an int'),
])
def test_bad_arguments_are_refused_before_any_work(tmp_path, kw, message):
    with pytest.raises((ValueError, TypeError), match=message):
        run('relu-mean', **{'out': tmp_path, 'engine': 'local', 'progress': False, **kw})
    assert not any(tmp_path.iterdir())


def test_merge_is_atomic_and_complete(tmp_path):
    run('relu-mean', 'tiny', out=tmp_path, engine='local', progress=False)
    path = merge('relu-mean', 'tiny', tmp_path)
    data = json.loads(path.read_text())
    assert data['provenance']['units'] == 6 and len(data['result']['rows']) == 6
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]


def test_command_line_runs_lists_resumes_and_merges(tmp_path, capsys):
    from netmoments.cli import main
    out = str(tmp_path / 'runs')
    assert main(['run', 'relu-mean', '--preset', 'tiny', '--out', out, '--dry-run', '--shard', '1/2']) == 0
    listing = capsys.readouterr().out
    assert '3 of 3 selected units to run (grid of 6)' in listing and not (tmp_path / 'runs').exists()
    assert main(['run', 'relu-mean', '--preset', 'tiny', '--out', out, '--engine', 'local', '--units', '0-2',
                 '--no-progress']) == 0
    assert '3 units run, 0 found on disk, 3 still missing' in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(['run', 'relu-mean', '--preset', 'tiny', '--out', out, '--units', '4-9'])
    assert info.value.code == 2 and 'argument --units' in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(['run', 'relu-mean', '--preset', 'tiny', '--out', out, '--engine', 'local', '--no-progress'])
    assert info.value.code == 2 and 'already holds 3 finished units of this run; pass --resume' in capsys.readouterr().err
    assert main(['run', 'relu-mean', '--preset', 'tiny', '--out', out, '--engine', 'local', '--resume',
                 '--no-progress']) == 0
    printed = capsys.readouterr().out
    assert '3 units run, 3 found on disk, 0 still missing' in printed and 'relu-mean-tiny.json' in printed
    assert main(['run', 'relu-mean', '--preset', 'tiny', '--out', out, '--merge']) == 0
    assert load_result('relu-mean', 'tiny', out)['provenance']['units'] == 6
    with pytest.raises(SystemExit) as info:
        main(['run', 'relu-mean', '--preset', 'huge', '--out', out])
    assert info.value.code == 2 and "relu-mean has no preset 'huge'" in capsys.readouterr().err
