"""The package as a user gets it: an sdist of the working tree, a wheel built from that sdist, installed with its runtime
requirements alone (torch pinned by constraints.txt) into a clean venv, and run from a folder outside the repository.
About 1.5 minutes, most of it installing torch."""
import email, os, shutil, subprocess, sys, tarfile, zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = next(l.split('=', 1)[1].strip() for l in (ROOT / 'settings.ini').read_text().splitlines()
               if l.replace(' ', '').startswith('version='))
NOT_SOURCE = shutil.ignore_patterns('.git', '.venv', '*.egg-info', 'build', 'dist', '_book', '_proc', '_docs',
                                    '__pycache__', '.pytest_cache', '.hypothesis', '.ipynb_checkpoints')
BUNDLED = ('netmoments/data/lenet-mnist.pt', 'netmoments/data/mnist-test-slice.pt')


def run(cmd, cwd, timeout=600, check=True):
    "Run `cmd` in `cwd` without the repository's venv or PYTHONPATH leaking in; the CompletedProcess."
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV')}
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check: assert res.returncode == 0, f'{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}'
    return res


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    "The sdist (built from a copy of the working tree) and the wheel built from that sdist."
    tmp = tmp_path_factory.mktemp('build')
    src = tmp / 'src'
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)   # a copy: building writes egg-info next to setup.py
    run([sys.executable, '-m', 'build', '--sdist', '--no-isolation', '--outdir', tmp / 'dist', src], cwd=tmp)
    sdist = tmp / 'dist' / f'netmoments-{VERSION}.tar.gz'
    run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--no-cache-dir',
         '-w', tmp / 'wheels', sdist], cwd=tmp)
    wheel, = (tmp / 'wheels').glob('netmoments-*.whl')
    return sdist, wheel


@pytest.fixture(scope='module')
def venv(built, tmp_path_factory):
    "The bin folder of a clean venv (no system site packages) holding the wheel and its runtime requirements only."
    tmp = tmp_path_factory.mktemp('venv')
    run([sys.executable, '-m', 'venv', tmp / 'venv'], cwd=tmp)
    scripts = tmp / 'venv' / 'bin'
    run([scripts / 'python', '-m', 'pip', 'install', '-q', '-c', ROOT / 'constraints.txt', built[1]], cwd=tmp)
    return scripts


@pytest.fixture
def outside(tmp_path):
    "An empty folder outside the repository to run the installed command in."
    folder = tmp_path / 'elsewhere'
    folder.mkdir()
    return folder


def test_sdist_carries_what_the_wheel_needs(built):
    with tarfile.open(built[0]) as tar: names = {n.split('/', 1)[1] for n in tar.getnames() if '/' in n}
    for name in ('setup.py', 'settings.ini', 'LICENSE', 'README.md', 'MANIFEST.in', 'netmoments/__main__.py', *BUNDLED):
        assert name in names, name


def test_wheel_contents_and_metadata(built):
    with zipfile.ZipFile(built[1]) as whl:
        names = set(whl.namelist())
        meta = email.message_from_string(whl.read(f'netmoments-{VERSION}.dist-info/METADATA').decode())
    assert {*BUNDLED, 'netmoments/__main__.py', 'netmoments/cli.py', f'netmoments-{VERSION}.dist-info/licenses/LICENSE'} <= names
    assert 'Development Status :: 3 - Alpha' in meta.get_all('Classifier')
    assert meta['License-Expression'] == 'Apache-2.0'
    assert 'plot' in meta.get_all('Provides-Extra')
    runtime = [r for r in meta.get_all('Requires-Dist') if 'extra ==' not in r]
    assert any(r.startswith('torch>=') for r in runtime) and not any('==' in r for r in runtime), runtime
    assert 'matplotlib>=3.7; extra == "plot"' in meta.get_all('Requires-Dist')


def test_installed_alone(venv, outside):
    "The venv sees its own netmoments, with the bundled files inside it, and no matplotlib (the plot extra is not asked)."
    code = ('import importlib.util, netmoments.models as m; print(m.__file__); print(m._data_dir()); '
            'print(importlib.util.find_spec("matplotlib"))')
    module, data, matplotlib = run([venv / 'python', '-c', code], cwd=outside).stdout.split('\n')[:3]
    assert module.startswith(str(venv.parent)) and 'site-packages' in module
    assert Path(data) == Path(module).parent / 'data' and (Path(data) / 'lenet-mnist.pt').is_file()
    assert matplotlib == 'None'


def test_version_from_script_and_module(venv, outside):
    for cmd in ([venv / 'netmoments', '--version'], [venv / 'python', '-m', 'netmoments', '--version']):
        assert run(cmd, cwd=outside).stdout.strip() == f'netmoments {VERSION}'


def test_help_does_not_import_torch(venv, outside):
    for args in (['--help'], ['tightness', '--help'], ['check', '--help'], ['bench', '--help'], ['stepcost', '--help']):
        res = run([venv / 'python', '-X', 'importtime', venv / 'netmoments', *args], cwd=outside)
        assert 'usage: netmoments' in res.stdout
        imported = [line.rsplit('|', 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith('import time:')]
        assert 'netmoments.cli' in imported and not any(m.split('.')[0] == 'torch' for m in imported), args


def test_tightness_runs_on_the_bundled_data(venv, outside):
    res = run([venv / 'netmoments', 'tightness', '--images', '1', '--samples', '200', '--json', 'out.json'], cwd=outside)
    assert 'mean E_r' in res.stdout and res.stdout.rstrip().endswith('wrote out.json')
    assert sorted(p.name for p in outside.iterdir()) == ['out.json']
    assert '"summary"' in (outside / 'out.json').read_text()


def test_figure_without_matplotlib_is_refused(venv, outside):
    res = run([venv / 'netmoments', 'tightness', '--figure', 'x.png'], cwd=outside, check=False)
    assert res.returncode == 2 and res.stdout == ''
    assert "argument --figure: a figure needs matplotlib" in res.stderr and "pip install 'netmoments[plot]'" in res.stderr
    assert not any(outside.iterdir())
