"""Test set-up: 8 virtual CPU devices, set before jax is first imported."""
import importlib.metadata
import os

import pytest
from threadpoolctl import threadpool_limits

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
# XLA:CPU aborts the process when one of the 8 device threads reaches a collective 40 s after the
# others, which a loaded 2-core machine can starve it into; the watchdog is given 10 minutes.
# (jaxlib 0.10's flag; another jaxlib may not know it, and an unknown XLA flag aborts.)
if importlib.metadata.version('jaxlib').startswith('0.10.'):
  os.environ['XLA_FLAGS'] += ' --xla_cpu_collective_call_terminate_timeout_seconds=600'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import trainer  # noqa: E402,F401  (its XLA:CPU setting, as every command gets it, before jax starts)


@pytest.fixture(scope='module', autouse=True)
def _single_threaded_blas():
  """Test matrices are tiny: extra BLAS threads only add contention on a shared CPU."""
  with threadpool_limits(limits=1, user_api='blas'):
    yield


@pytest.fixture(scope='module')
def gcs(tmp_path_factory):
  """A local GCS emulator (tests/gcs_emulator.py), and this process's clients pointed at it."""
  from gcs_emulator import GcsEmulator  # pylint: disable=g-import-not-at-top  (gs:// tests only)
  emulator = GcsEmulator(tmp_path_factory.mktemp('gcs')).start()
  with pytest.MonkeyPatch.context() as patch:
    patch.delenv('GOOGLE_APPLICATION_CREDENTIALS', raising=False)
    for key, value in emulator.env({}).items():
      patch.setenv(key, value)
    yield emulator
  emulator.stop()
