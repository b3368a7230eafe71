"Shared test configuration: the hypothesis profile `netmoments` (loaded by default) and the devices to run on."
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile('netmoments', derandomize=True, deadline=None, max_examples=50, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'netmoments'))

# The tests are many small computations, where a second CPU thread costs more in synchronisation than it gives (the
# fuzz suite runs several times faster on one thread on a 2-core machine); NETMOMENTS_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get('NETMOMENTS_TEST_THREADS', '1')))

CUDA = torch.cuda.is_available()
DEVICE_PARAMS = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(not CUDA, reason='no CUDA device'))]


@pytest.fixture(scope='session')
def devices():
    "The devices available here: ['cpu'], plus 'cuda' when torch sees one."
    return ['cpu'] + (['cuda'] if CUDA else [])


@pytest.fixture(params=DEVICE_PARAMS)
def device(request):
    "Parametrizes a test over 'cpu' and 'cuda'; the CUDA run is skipped (not failed) without a CUDA device."
    return request.param
