# %% [markdown]
# # Running experiments at scale
# > A named grid of independent units, run on Ray or in process, each unit's result saved atomically with its provenance, resumable after any interruption

# %%
#| default_exp runner

# %% [markdown]
# The experiments of the papers are grids: images in blocks, noise levels, covariance draws, training configurations.
# Every cell of such a grid is independent of the others, so a run is a list of *units*, each a pure function of its
# parameters (the random seed among them) that returns a JSON-able result. This chapter runs such lists:
#
# - on [Ray](https://docs.ray.io) by default: a local Ray instance on this machine's cores, started and stopped by the
#   run itself, or an existing Ray cluster (`address=`), where units that need a GPU ask Ray for one;
# - or in process (`engine='local'`), with the same results: each unit runs with a fixed number of CPU threads and its
#   own seed, so neither the engine nor the order in which units finish changes a number;
# - each unit's result is written, as soon as it arrives, to its own file, atomically (a temporary file renamed into
#   place), with its provenance: git commit, package and torch versions, device, seed, wall time;
# - `resume=True` skips the units already on disk, so a run killed at any moment loses only the units in flight;
# - once every unit of the grid is on disk, a merge step writes the experiment's result file, which the book's
#   chapters read.
#
# Ray is needed only here (`pip install 'netmoments[run]'`); the rest of the package does not import it, and neither
# does this module until a Ray run starts. The module does not import torch either, so listing a grid is instant.

# %%
#| export
from __future__ import annotations
import hashlib, importlib, json, math, os, platform, re, secrets, subprocess, sys, tempfile, time, traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, NamedTuple

# %%
#| hide
import shutil, signal
import netmoments.runner as runner      # Ray workers import the unit functions from the package
from netmoments.core import Table
from fastcore.test import test_eq, test_fail, test_ne


# %% [markdown]
# ## Files written atomically
# A result file is either the old one or the new one, never half of each: the text goes to a temporary file in the
# same folder, flushed to disk, which is then renamed over the target (a rename within a filesystem is atomic). A new
# file gets the permissions the umask gives; a replaced one keeps its own. A symbolic link is followed, so the file it
# points to is replaced, not the link. Only regular files are replaced: a device such as `/dev/null` or a folder is
# refused, since a rename would put a file in its place. Whether a name can be written is checked before any work by
# creating and removing a temporary file in its folder, the one test that also holds for the superuser and on
# read-only file systems. The [command line](90_cli.ipynb) writes its files with the same functions.

# %%
#| export
def _temp_file(folder:str)->tuple:
    "A new empty file in `folder` with a fresh hidden name: (file descriptor, path)."
    while True:
        tmp = os.path.join(folder, f'.netmoments-{secrets.token_hex(8)}.tmp')
        try: return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError: continue

def output_problem(
    path:str|Path,  # a file to be written
)->str|None:        # why it cannot be written, or None
    "Why a file cannot be written to `path` (None: it can); creates nothing that stays."
    path = str(path)
    if not path: return 'expected a file name, got an empty one'
    if '\0' in path: return f'{path!r}: a file name cannot hold a NUL character'
    if path.endswith(os.sep) or os.path.basename(path) in ('.', '..'): return f'{path} is a folder, not a file name'
    target = os.path.realpath(path)
    if os.path.isdir(target): return f'{path} is a folder, not a file name'
    if os.path.lexists(target) and not os.path.isfile(target): return f'cannot write {path}: it exists and is not a regular file'
    folder = os.path.dirname(target)
    if not os.path.isdir(folder): return f'cannot write {path}: folder {folder} does not exist'
    try: name_max = os.pathconf(folder, 'PC_NAME_MAX')
    except (OSError, ValueError): name_max = 255
    if len(os.fsencode(os.path.basename(target))) > name_max:
        return f'cannot write {path}: the file name is longer than {name_max} bytes'
    if os.path.exists(target) and not os.access(target, os.W_OK): return f'cannot write {path}: the file is read-only'
    try: fd, tmp = _temp_file(folder)
    except OSError as e: return f'cannot write {path}: folder {folder} is not writable ({e.strerror})'
    os.close(fd); os.unlink(tmp)
    return None

def write_atomic(
    path:str|Path,        # the file to write (a link is followed)
    write:Callable,       # write(f) writes the content to the open file f
    binary:bool=False,    # open the temporary file in binary mode
):
    "Write a file through `write(f)` atomically: a temporary file in the target's folder, flushed, renamed over it."
    target = os.path.realpath(path)
    if os.path.lexists(target) and not os.path.isfile(target):
        raise ValueError(f'cannot write {path}: it exists and is not a regular file')
    fd, tmp = _temp_file(os.path.dirname(target))
    try:
        with os.fdopen(fd, 'wb' if binary else 'w') as f:
            write(f)
            f.flush(); os.fsync(f.fileno())
        if os.path.exists(target): os.chmod(tmp, os.stat(target).st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp): os.unlink(tmp)
        raise

def write_json(
    path:str|Path,  # the file to write
    obj,            # a JSON-able object
):
    "Write `obj` as JSON to `path` atomically."
    write_atomic(path, lambda f: (json.dump(obj, f, indent=1), f.write('\n')))


# %% [markdown]
# An interrupted write leaves the previous file intact and no temporary file behind; a replaced file keeps its
# permissions, and a link is followed; a device is never replaced:

# %%
scratch = Path(tempfile.mkdtemp())
target = scratch / 'out.json'
write_json(target, {'x': [1, 2.5, float('inf')]})
test_eq(json.loads(target.read_text()), {'x': [1, 2.5, float('inf')]})
class Boom:
    "Not JSON-serializable: the write fails halfway."
test_fail(lambda: write_json(target, {'a': 2, 'b': Boom()}), exc=TypeError)
test_eq(json.loads(target.read_text()), {'x': [1, 2.5, float('inf')]})     # the previous file is intact
test_eq(os.listdir(scratch), ['out.json'])                                 # and no temporary file is left behind
os.chmod(target, 0o640)
os.symlink(target, scratch / 'link.json')
write_json(scratch / 'link.json', {'a': 3})
test_eq((json.loads(target.read_text()), os.stat(target).st_mode & 0o777), ({'a': 3}, 0o640))
assert os.path.islink(scratch / 'link.json')
test_fail(lambda: write_json('/dev/null', {}), exc=ValueError, contains='not a regular file')
for path, why in (('', 'empty'), ('/no/such/folder/x.json', 'does not exist'), ('/dev/null', 'not a regular file'),
                  (scratch, 'is a folder'), ('x' * 300 + '.json', 'longer than')):
    assert why in output_problem(path), (path, output_problem(path))
test_eq(output_problem(scratch / 'new.json'), None)


# %% [markdown]
# ## Experiments
# An `Experiment` names its grid (a list of parameter dicts per preset: the first preset is the default, the paper's
# full grid), the unit function, and a merge that turns the list of unit results into the experiment's result. The
# unit function must be importable by name (a module-level function) so that Ray workers, and processes resuming a
# run, find the same code. `cost` estimates a unit's seconds on one CPU core, for the listing of a run before it
# starts.

# %%
#| export
@dataclass(frozen=True)
class Experiment:
    "A named grid of independent units: `grid(preset)` lists unit parameters, `unit(params)` computes one, `merge` joins them."
    name:str                         # what `netmoments run NAME` calls it
    grid:Callable                    # preset name -> list of JSON-able parameter dicts, in a fixed order
    unit:Callable                    # parameter dict -> JSON-able result dict (a module-level function)
    merge:Callable                   # (list of parameter dicts, list of results), in grid order -> the merged result
    presets:dict                     # preset name -> one-line description; the first is the default
    description:str = ''             # one line: which table or figure of which paper
    cost:Callable = lambda p: 1.     # parameter dict -> estimated seconds on one CPU core
    gpus:float = 0.                  # GPUs each unit asks Ray for
    threads:int = 1                  # CPU threads each unit uses (torch.set_num_threads), the same on every engine

    def units(self, preset:str|None=None)->list:
        "The grid of `preset` (default: the first)."
        preset = self.preset(preset)
        grid = list(self.grid(preset))
        for p in grid:
            if not isinstance(p, dict): raise TypeError(f'{self.name}: a unit must be a dict of parameters; got {p!r}')
        return grid

    def preset(self, preset:str|None)->str:
        "`preset`, checked, or the default."
        if preset is None: return next(iter(self.presets))
        if preset not in self.presets:
            raise ValueError(f'{self.name} has no preset {preset!r}; choose one of {", ".join(self.presets)}')
        return preset

EXPERIMENTS:dict = {}

def register(exp:Experiment)->Experiment:
    "Add `exp` to `EXPERIMENTS` under its name (a later registration with the same name replaces it)."
    EXPERIMENTS[exp.name] = exp
    return exp

def experiment(name:str)->Experiment:
    "The registered experiment `name` (importing `netmoments.experiments` registers the package's own)."
    if name not in EXPERIMENTS:
        raise ValueError(f'unknown experiment {name!r}; registered: {", ".join(sorted(EXPERIMENTS)) or "none"}')
    return EXPERIMENTS[name]


# %% [markdown]
# The runner knows only what has been registered; the papers' experiments are registered by importing
# `netmoments.experiments` (the command line does), and a user's own by importing the module that defines them.
#
# A small experiment to show the runner at work, and to test it: the mean of $\mathrm{ReLU}(X)$, $X\sim\mathcal N(\mu,
# \sigma^2)$, estimated from samples in each unit and compared with the exact value
# $\mu\,\Phi(\mu/\sigma) + \sigma\,\varphi(\mu/\sigma)$ ([ReLU moments](03_relu.ipynb)) at the merge, as a
# $z$-score. Its unit function is exported (Ray workers import it); the chapter on the package's registered
# experiments lists the others.

# %%
#| export
def relu_mean_unit(p:dict)->dict:
    "Sample mean and standard error of relu(X), X ~ N(p['mu'], p['sigma']^2), from p['samples'] draws seeded by p['seed']."
    import torch
    g = torch.Generator().manual_seed(p['seed'])
    y = (p['mu'] + p['sigma'] * torch.randn(p['samples'], generator=g, dtype=torch.float64)).relu()
    return {'mean': y.mean().item(), 'se': (y.std() / math.sqrt(p['samples'])).item()}

def _relu_mean_grid(preset):
    size = {'full': (5, 4, 100_000), 'tiny': (3, 2, 20_000)}[preset]
    mus, sigmas = [-1 + 2 * i / max(size[0] - 1, 1) for i in range(size[0])], [0.5 * (j + 1) for j in range(size[1])]
    return [{'mu': m, 'sigma': s, 'samples': size[2], 'seed': 1000 + i} for i, (m, s) in
            enumerate((m, s) for m in mus for s in sigmas)]

def _relu_mean_merge(params, results):
    import torch
    from netmoments.relu import relu_mean
    rows = []
    for p, r in zip(params, results):
        exact = relu_mean(torch.tensor(p['mu'], dtype=torch.float64), p['sigma'] ** 2).item()   # the exact mean
        rows.append({**{k: p[k] for k in ('mu', 'sigma')}, 'estimate': r['mean'], 'exact': exact,
                     'z': (r['mean'] - exact) / r['se']})
    return {'rows': rows, 'max_abs_z': max(abs(r['z']) for r in rows)}

RELU_MEAN = register(Experiment('relu-mean', _relu_mean_grid, relu_mean_unit, _relu_mean_merge,
                    presets={'full': '5 means x 4 noise levels, 1e5 samples each', 'tiny': '3 x 2, 2e4 samples'},
                    description='E[relu(X)] from samples against the exact mean (a demonstration of the runner)',
                    cost=lambda p: 2e-7 * p['samples']))

# %%
test_eq(len(experiment('relu-mean').units()), 20)
test_eq(experiment('relu-mean').units('tiny')[0], {'mu': -1.0, 'sigma': 0.5, 'samples': 20000, 'seed': 1000})
test_fail(lambda: experiment('relu-mean').units('huge'), contains="relu-mean has no preset 'huge'; choose one of full, tiny")
test_fail(lambda: experiment('nope'), contains="unknown experiment 'nope'")


# %% [markdown]
# ## Where a run lives
# A run of experiment `NAME` with preset `P` under the folder `out` keeps one file per finished unit in
# `out/NAME-P/units/`, named by its index in the grid and a digest of its parameters, and the merged result in
# `out/NAME-P.json`. The digest ties a file to its parameters: if the grid changes (a preset edited), old files no
# longer match and are reported instead of being merged by mistake.

# %%
#| export
def _count(k, name:str, least:int)->int:
    "`k` as an int >= `least`, or a TypeError/ValueError naming `name` (this module does without torch and core)."
    if isinstance(k, bool) or not isinstance(k, int): raise TypeError(f'{name} must be an int; got {type(k).__name__}')
    if k < least: raise ValueError(f'{name} must be >= {least}; got {k}')
    return k

def unit_name(
    index:int,   # position in the grid
    params:dict, # the unit's parameters
)->str:          # file name of the unit's result
    "`{index:05d}-{digest}.json`, the digest a SHA-256 prefix of the parameters' canonical JSON."
    _count(index, 'index', 0)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return f'{index:05d}-{digest}.json'

def run_dir(out:str|Path, name:str, preset:str)->Path:
    "The folder of a run's unit files."
    return Path(out) / f'{name}-{preset}' / 'units'


# %%
test_eq(unit_name(3, {'b': 1, 'a': 2}), unit_name(3, {'a': 2, 'b': 1}))
test_ne(unit_name(3, {'a': 2}), unit_name(3, {'a': 3}))
test_eq(unit_name(12, {})[:6], '00012-')


# %% [markdown]
# ## Provenance
# Every unit file records what produced it. The commit is the one of the checkout the package was imported from
# (`+dirty` when it had uncommitted changes), or `None` for an installed wheel.

# %%
#| export
def _git_commit()->str|None:
    "Commit of the git checkout holding this package, with '+dirty' for local changes; None outside a checkout."
    here = Path(__file__).resolve().parent if '__file__' in globals() else Path.cwd()
    try:
        sha = subprocess.run(['git', '-C', str(here), 'rev-parse', 'HEAD'], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not sha: return None
        dirty = subprocess.run(['git', '-C', str(here), 'status', '--porcelain', '--untracked-files=no'],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ('+dirty' if dirty else '')
    except (OSError, subprocess.SubprocessError): return None

def provenance(device:str|None=None)->dict:
    "Where and with what a result was computed: commit, versions, host, device."
    import torch
    from netmoments import __version__
    if device is None:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f'cpu ({platform.machine()})'
    return {'commit': _git_commit(), 'netmoments': __version__, 'torch': torch.__version__,
            'python': platform.python_version(), 'host': platform.node(), 'device': device}


# %%
prov = provenance()
test_eq(sorted(prov), ['commit', 'device', 'host', 'netmoments', 'python', 'torch'])
assert prov['commit'] is None or re.fullmatch(r'[0-9a-f]{40}(\+dirty)?', prov['commit'])


# %% [markdown]
# ## One unit
# `run_unit` is what a worker executes: it looks the experiment up by name (so only names travel to Ray workers;
# an experiment registered in a user's own module is found by importing that module, whose name travels too),
# fixes the number of torch threads and seeds torch from the unit's `seed`, runs the unit and times it. Threads are
# set back afterwards, so a unit run in process leaves the caller as it was.

# %%
#| export
def run_unit(
    name:str,               # experiment name
    params:dict,            # the unit's parameters
    module:str|None=None,   # module that registers the experiment, imported first (a user's own experiments)
)->dict:                    # {'params', 'result', 'provenance'}
    "Run one unit of experiment `name` with `params`, returning its result and provenance."
    import torch
    if module: importlib.import_module(module)
    exp = experiment(name)
    threads, seed = torch.get_num_threads(), params.get('seed', 0)
    torch.set_num_threads(exp.threads)
    try:
        torch.manual_seed(seed)
        start = time.perf_counter()
        result = exp.unit(params)
        wall = time.perf_counter() - start
    finally: torch.set_num_threads(threads)
    json.dumps(result)                                                   # JSON-able, or a TypeError here
    device = params.get('device', 'cpu')
    return {'params': params, 'result': result,
            'provenance': {**provenance(None if 'cuda' in str(device) else f'cpu ({platform.machine()})'),
                           'seed': seed, 'threads': exp.threads, 'wall_s': wall,
                           'finished': datetime.now(timezone.utc).isoformat(timespec='seconds')}}


# %%
rec = run_unit('relu-mean', experiment('relu-mean').units('tiny')[4])
test_eq(sorted(rec), ['params', 'provenance', 'result'])
test_eq(rec['result'], run_unit('relu-mean', experiment('relu-mean').units('tiny')[4])['result'])   # seeded
assert rec['provenance']['wall_s'] >= 0 and rec['provenance']['seed'] == 1004


# %% [markdown]
# ## Choosing units
# A user splits a grid by hand with a shard `i/n` (every $n$-th unit from the $i$-th, $0 \le i < n$: run the $n$
# shards on $n$ machines) or a list of indices such as `0,3,5-9`.

# %%
#| export
def select_units(
    total:int,               # units in the grid
    shard:str|None=None,     # 'i/n': units i, i+n, i+2n, ...
    units:str|None=None,     # indices and ranges, e.g. '0,3,5-9'
)->list:                     # the selected indices, increasing
    "Indices of the units to run: all, a shard `i/n`, or a list of indices and ranges (both: their intersection)."
    chosen = set(range(_count(total, 'total', 1)))
    if shard is not None:
        m = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', str(shard))
        if not m or int(m[2]) < 1 or int(m[1]) >= int(m[2]):
            raise ValueError(f"shard must be 'i/n' with 0 <= i < n; got {shard!r}")
        i, n = int(m[1]), int(m[2])
        chosen &= set(range(i, total, n))
    if units is not None:
        picked = set()
        for part in str(units).split(','):
            m = re.fullmatch(r'\s*(\d+)\s*(?:-\s*(\d+)\s*)?', part)
            if not m: raise ValueError(f"units must be indices and ranges such as '0,3,5-9'; got {units!r}")
            lo, hi = int(m[1]), int(m[2] or m[1])
            if hi < lo or hi >= total:
                raise ValueError(f'units: {part.strip()} is not a range inside 0-{total - 1}')
            picked |= set(range(lo, hi + 1))
        chosen &= picked
    return sorted(chosen)


# %%
test_eq(select_units(7), list(range(7)))
test_eq(select_units(7, shard='1/3'), [1, 4])
test_eq(select_units(10, units='0,3,5-7'), [0, 3, 5, 6, 7])
test_eq(select_units(10, shard='0/2', units='0-5'), [0, 2, 4])
test_fail(lambda: select_units(4, shard='3/3'), contains="shard must be 'i/n' with 0 <= i < n")
test_fail(lambda: select_units(4, units='2-9'), contains='units: 2-9 is not a range inside 0-3')
test_fail(lambda: select_units(4, units='a'), contains="units must be indices and ranges")


# %% [markdown]
# ## Running
# `run` lists the grid, finds the units already on disk, runs the others and writes each result as it arrives. With
# Ray, at most twice as many units as there are CPU slots are in flight at once, so a grid of thousands of units does
# not flood the scheduler, and the progress bar counts finished units. A unit that raises is reported with its
# traceback and leaves no file; the other units go on, and the run ends with a `RuntimeError` listing the failures
# (run it again with `resume=True` to retry them). Without `resume`, a folder already holding units of this run is an
# error rather than a silent mix of two runs.

# %%
#| export
class RunSummary(NamedTuple):
    "What a call of `run` did."
    done:list           # indices computed by this call
    skipped:list        # indices found on disk (resume)
    pending:int         # units of the grid still missing after this call (other shards, failures)
    merged:Path|None    # the merged result file, written when the grid is complete
    wall_s:float        # seconds this call took

def finished_units(
    folder:Path,  # the run's unit folder (`run_dir`)
    grid:list,    # the experiment's grid
)->dict:          # index -> unit file
    "The units of `grid` already on disk in `folder`; a file that matches no unit of the grid is an error."
    names = {unit_name(i, p): i for i, p in enumerate(grid)}
    found = {}
    for f in folder.glob('*.json') if folder.is_dir() else ():
        if f.name not in names:
            raise ValueError(f'{f} matches no unit of this grid (was the preset changed?); move it away to go on')
        found[names[f.name]] = f
    return found

def _module(exp:Experiment)->str|None:
    "The module a worker imports to find `exp`: the one defining its unit function, unless that is a script."
    mod = getattr(exp.unit, '__module__', None)
    return None if mod in (None, '__main__') else mod

def _ray_results(name, exp, todo, grid, address, workers):
    "Yield (index, record or exception) as Ray finishes units; starts (and stops) a local instance unless `address`."
    try: import ray
    except ImportError: raise ImportError("engine='ray' needs Ray: pip install 'netmoments[run]' (or use engine='local')") from None
    started = not ray.is_initialized()
    if started:
        kw = dict(address=address) if address else dict(num_cpus=workers)
        for attempt in range(3):       # Ray gives a new node 30 s to start, which a loaded machine can miss
            try:
                ray.init(**kw, include_dashboard=False, log_to_driver=False, configure_logging=False)
                break
            except Exception as e:
                ray.shutdown()
                if attempt == 2 or 'timed out during startup' not in str(e): raise
    try:
        remote = ray.remote(num_cpus=exp.threads, num_gpus=exp.gpus, max_retries=0)(run_unit)
        slots = max(1, int(ray.available_resources().get('CPU', 1) // exp.threads))
        queue, flight = list(todo), {}
        while queue or flight:
            while queue and len(flight) < 2 * slots:
                i = queue.pop(0)
                flight[remote.remote(name, grid[i], _module(exp))] = i
            ready, _ = ray.wait(list(flight), num_returns=1)
            i = flight.pop(ready[0])
            try: yield i, ray.get(ready[0])
            except Exception as e: yield i, e
    finally:
        if started: ray.shutdown()

def _local_results(name, exp, todo, grid):
    for i in todo:
        try: yield i, run_unit(name, grid[i], _module(exp))
        except Exception as e: yield i, e


# %%
#| export
def run(
    name:str,                  # experiment name
    preset:str|None=None,      # grid preset (default: the experiment's first, the paper's full grid)
    out:str|Path='results',    # folder of runs: units in out/NAME-PRESET/units/, the merged result in out/NAME-PRESET.json
    engine:str='ray',          # 'ray' (local instance, or the cluster at `address`) or 'local' (in this process)
    address:str|None=None,     # Ray cluster address ('auto', 'ray://host:10001', ...); None starts a local instance
    workers:int|None=None,     # CPUs of the local Ray instance (default: all)
    resume:bool=False,         # skip units already on disk
    shard:str|None=None,       # 'i/n': run every n-th unit from the i-th
    units:str|None=None,       # indices and ranges to run, e.g. '0,3,5-9'
    progress:bool=True,        # show a progress bar counting units
)->RunSummary:
    "Run the units of experiment `name` not yet on disk, saving each atomically; merge when the grid is complete."
    if engine not in ('ray', 'local'): raise ValueError(f"engine must be 'ray' or 'local'; got {engine!r}")
    if workers is not None: _count(workers, 'workers', 1)
    start = time.perf_counter()
    exp = experiment(name)
    preset = exp.preset(preset)
    grid = exp.units(preset)
    folder = run_dir(out, name, preset)
    chosen = select_units(len(grid), shard, units)
    found = finished_units(folder, grid)
    if found and not resume:
        raise FileExistsError(f'{folder} already holds {len(found)} finished units of this run; '
                              'pass resume=True (--resume) to continue it, or choose another out folder')
    skipped = [i for i in chosen if i in found]
    todo = [i for i in chosen if i not in found]
    folder.mkdir(parents=True, exist_ok=True)
    results = (_ray_results(name, exp, todo, grid, address, workers) if engine == 'ray' and todo
               else _local_results(name, exp, todo, grid))
    from tqdm.auto import tqdm
    done, failed = [], []
    with tqdm(total=len(chosen), initial=len(skipped), desc=f'{name}-{preset}', unit='unit',
              disable=not progress) as bar:
        for i, rec in results:
            if isinstance(rec, Exception):
                failed.append((i, ''.join(traceback.format_exception_only(type(rec), rec)).strip()))
            else:
                write_json(folder / unit_name(i, grid[i]), rec)
                done.append(i)
            bar.update(1)
    pending = len(grid) - len(finished_units(folder, grid))
    merged = merge(name, preset, out) if pending == 0 else None
    if failed:
        lines = '\n'.join(f'  unit {i}: {msg}' for i, msg in failed)
        raise RuntimeError(f'{len(failed)} of {len(todo)} units failed (run again with resume to retry):\n{lines}')
    return RunSummary(sorted(done), skipped, pending, merged, time.perf_counter() - start)


# %% [markdown]
# ## Merging
# The merged file holds the experiment's result and a summary of how it was obtained: the preset, the number of units,
# their total and longest compute time, and every commit, version and device that took part (a run resumed after a
# change to the code shows two commits). The book reads these files from `data/results/`.

# %%
#| export
def merge(
    name:str,              # experiment name
    preset:str|None=None,  # preset (default: the first)
    out:str|Path='results',# the folder given to `run`
)->Path:                   # the merged result file, out/NAME-PRESET.json
    "Merge the unit files of a complete run into `out/NAME-PRESET.json` (atomically), with the run's provenance."
    exp = experiment(name)
    preset = exp.preset(preset)
    grid = exp.units(preset)
    found = finished_units(run_dir(out, name, preset), grid)
    missing = [i for i in range(len(grid)) if i not in found]
    if missing:
        raise ValueError(f'{name}-{preset} is not complete: {len(missing)} of {len(grid)} units missing '
                         f'(first: {missing[:5]}); run it with resume to finish')
    recs = [json.loads(found[i].read_text()) for i in range(len(grid))]
    prov = [r['provenance'] for r in recs]
    walls = [p['wall_s'] for p in prov]
    summary = {'experiment': name, 'preset': preset, 'preset_description': exp.presets[preset],
               'description': exp.description, 'units': len(grid),
               'unit_seconds_total': sum(walls), 'unit_seconds_max': max(walls),
               'first_finished': min(p['finished'] for p in prov), 'last_finished': max(p['finished'] for p in prov)}
    for k in ('commit', 'netmoments', 'torch', 'device', 'host'):
        summary[k + 's'] = sorted({str(p[k]) for p in prov})
    path = Path(out) / f'{name}-{preset}.json'
    write_json(path, {'provenance': summary, 'result': exp.merge([r['params'] for r in recs],
                                                                   [r['result'] for r in recs])})
    return path

def load_result(
    name:str,                    # experiment name
    preset:str,                  # preset
    out:str|Path='results',      # folder of runs
)->dict|None:                    # {'provenance', 'result'}, or None when the run has not been merged
    "The merged result of a run, or None when there is none yet."
    path = Path(out) / f'{name}-{preset}.json'
    return json.loads(path.read_text()) if path.exists() else None


# %% [markdown]
# A run in process of the small grid: six units, then the merged $z$-scores of the sampled means against the exact
# ones, which lie within a few standard errors as they should:

# %%
out = Path(tempfile.mkdtemp())
summary = run('relu-mean', 'tiny', out=out, engine='local', progress=False)
test_eq((summary.done, summary.skipped, summary.pending), (list(range(6)), [], 0))
res = load_result('relu-mean', 'tiny', out)
assert res['result']['max_abs_z'] < 4.5 and res['provenance']['units'] == 6
Table([[r['mu'], r['sigma'], r['estimate'], r['exact'], r['z']] for r in res['result']['rows']],
      ['mu', 'sigma', 'sampled mean', 'exact mean', 'z'], fmt={'z': '.2f'})

# %% [markdown]
# Running it again is refused; resuming finds everything done and recomputes nothing; a shard runs only its share,
# and the merge waits until every unit is there:

# %%
test_fail(lambda: run('relu-mean', 'tiny', out=out, engine='local', progress=False), contains='pass resume=True')
again = run('relu-mean', 'tiny', out=out, engine='local', resume=True, progress=False)
test_eq((again.done, again.skipped), ([], list(range(6))))
out2 = Path(tempfile.mkdtemp())
first = run('relu-mean', 'tiny', out=out2, engine='local', shard='0/2', progress=False)
test_eq((first.done, first.pending, first.merged), ([0, 2, 4], 3, None))
test_fail(lambda: merge('relu-mean', 'tiny', out2), contains='3 of 6 units missing')
second = run('relu-mean', 'tiny', out=out2, engine='local', shard='1/2', resume=True, progress=False)
test_eq(second.pending, 0)
test_eq(load_result('relu-mean', 'tiny', out2)['result'], res['result'])


# %% [markdown]
# A failing unit leaves no file and is reported; the others are saved:

# %%
def _flaky(p):
    if p['seed'] == 1001: raise ArithmeticError('unit 1 fails')
    return relu_mean_unit(p)
register(Experiment('flaky', _relu_mean_grid, _flaky, _relu_mean_merge, presets={'tiny': 'six units, one failing'}))
out3 = Path(tempfile.mkdtemp())
test_fail(lambda: run('flaky', out=out3, engine='local', progress=False), contains='unit 1: ArithmeticError: unit 1 fails')
test_eq(len(list(run_dir(out3, 'flaky', 'tiny').glob('*.json'))), 5)
del EXPERIMENTS['flaky']

# %% [markdown]
# With Ray, the same grid gives the same numbers: each unit has its seed and its thread count, wherever it runs.

# %%
#| slow
out4 = Path(tempfile.mkdtemp())
summary = runner.run('relu-mean', 'tiny', out=out4, engine='ray', workers=2, progress=False)
test_eq(load_result('relu-mean', 'tiny', out4)['result'], res['result'])
f'Ray: {len(summary.done)} units in {summary.wall_s:.1f} s, the instance start included'

# %%
#| hide
for d in (scratch, out, out2, out3): shutil.rmtree(d)

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()
