"""Test set-up: 8 virtual CPU devices, set before jax is first imported."""
import os

import pytest
from threadpoolctl import threadpool_limits

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import trainer  # noqa: E402,F401  (its XLA:CPU setting, as every command gets it, before jax starts)


@pytest.fixture(scope='module', autouse=True)
def _single_threaded_blas():
  """Test matrices are tiny: extra BLAS threads only add contention on a shared CPU."""
  with threadpool_limits(limits=1, user_api='blas'):
    yield
