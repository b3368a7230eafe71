"Fuzz cases for `netmoments.runner` and `netmoments.experiments`: the grid selection and counts of a run."
import torch

from helpers import Case
from netmoments import experiments
from netmoments.runner import (Experiment, experiment, finished_units, load_result, merge, output_problem, provenance,
                               register, relu_mean_unit, run, run_dir, run_unit, select_units, unit_name, write_atomic,
                               write_json)

_io = 'writes or reads run files: its refusals are tested in tests/test_runner.py and the runner chapter'
EXEMPT = {f'runner.{f.__name__}': _io for f in (write_atomic, write_json, output_problem, finished_units, merge,
                                                 load_result, run_dir, provenance, register)}
EXEMPT |= {'runner.experiment': 'looks a name up: an unknown name is refused in tests/test_runner.py',
           'runner.Experiment': 'a description of a grid; its presets are checked when a run starts (tests/test_runner.py)',
           'runner.run_unit': 'runs one unit of a registered grid: tests/test_runner.py and every tiny preset',
           'runner.relu_mean_unit': 'a unit of the relu-mean grid: its parameters come from the grid'}
EXEMPT |= {f'experiments.{n}': 'a unit of a registered grid, whose parameters come from the grid: it runs on its tiny '
                                'preset in the experiments chapter'
           for n in ('robust_training_unit', 'tightness_unit', 'synthetic_unit', 'centers_unit', 'bounds_unit',
                     'survival_unit')}
EXEMPT |= {'experiments.paper_lenet': 'builds a fixed network (its shape is tested in the experiments chapter)',
           'experiments.cached_kmeans': 'k-means of the whole test set, cached on disk: tested in the experiments chapter'}

_f64 = (torch.float64,)


def _select(seed, dtype): return {'total': 5 + seed % 7, 'shard': '0/2', 'units': '0-3'}


def _name(seed, dtype): return {'index': seed % 100, 'params': {'seed': seed}}


def _run(seed, dtype, tmp=[]):
    import tempfile
    if not tmp: tmp.append(tempfile.mkdtemp())
    return {'name': 'relu-mean', 'preset': 'tiny', 'out': tmp[0], 'engine': 'local', 'units': str(seed % 6),
            'resume': True, 'progress': False, 'workers': 1}


CASES = [
    Case(select_units, _select, counts={'total': 1}, dtypes=_f64),
    Case(unit_name, _name, counts={'index': 0}, dtypes=_f64),
    Case(run, _run, dtypes=_f64),   # workers=None is valid (all CPUs): its bad values are in tests/test_runner.py
]
