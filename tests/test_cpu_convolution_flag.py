"""The XLA:CPU flag that `import trainer` sets: gradient convolutions stay off YNNPACK.

Each subprocess compiles the gradient of a small VALID-convolution net and counts the YNNPACK
fusions that hold a convolution: jaxlib's default makes such fusions (the slow path the flag
avoids; on a CPU where it makes none there is nothing to check, and the checks skip), a process
that imports trainer first makes none, and a setting of the flag in XLA_FLAGS is left as it is.
"""
import importlib.metadata
import os
import subprocess
import sys

import pytest

import trainer

pytestmark = pytest.mark.integration  # the integration tier (pytest.ini)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_COUNT = r'''
import re, sys
if sys.argv[1] == 'trainer':
  import trainer
import jax, jax.numpy as jnp, numpy as np
r = np.random.RandomState(0)
k1 = jnp.asarray(r.randn(3, 3, 1, 32), jnp.float32)
k2 = jnp.asarray(r.randn(3, 3, 32, 32), jnp.float32)
conv = lambda h, k: jax.lax.conv_general_dilated(h, k, (1, 1), 'VALID',
                                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
loss = lambda x: jnp.sum(jax.nn.relu(conv(jax.nn.relu(conv(x, k1)), k2)))
text = jax.jit(jax.grad(loss)).lower(jnp.ones((2, 28, 28, 1))).compile().as_text()
bodies = dict(re.findall(r'\n(%[\w.]+) [^\n]*\{\n(.*?)\n\}', text, re.S))
ynn = set(re.findall(r'calls=(%[\w.]+),[^\n]*__ynn_fusion', text))
import os
print(sum('convolution(' in bodies.get(c, '') for c in ynn), os.environ.get('XLA_FLAGS', ''))
'''


def _run(mode, xla_flags=None):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  if xla_flags is not None:
    env['XLA_FLAGS'] = xla_flags
  out = subprocess.run([sys.executable, '-c', _COUNT, mode], env=env, cwd=REPO, check=True,
                       capture_output=True, text=True).stdout.split(maxsplit=1)
  return int(out[0]), out[1].strip() if len(out) > 1 else ''


needs_jaxlib_010 = pytest.mark.skipif(
    not importlib.metadata.version('jaxlib').startswith('0.10.'),
    reason='the flag is set for jaxlib 0.10 only')


@pytest.fixture(scope='module')
def default_fusions():
  """YNNPACK convolution fusions under jaxlib's default; none means nothing to check here."""
  fused, _ = _run('plain')
  if not fused:
    pytest.skip("this machine's jaxlib fuses no convolution into YNNPACK")
  return fused


@needs_jaxlib_010
def test_importing_trainer_keeps_gradient_convolutions_off_ynnpack(default_fusions):
  fused, flags = _run('trainer')
  assert fused == 0, f'{fused} YNNPACK convolution fusions left of the default {default_fusions}'
  assert flags == trainer.CPU_CONVOLUTION_FLAG


@needs_jaxlib_010
def test_a_setting_of_the_flag_in_the_environment_wins(default_fusions):
  mine = '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION'
  fused, flags = _run('trainer', mine)
  assert flags == mine
  assert fused > 0


def test_other_flags_are_kept():
  _, flags = _run('trainer', '--xla_force_host_platform_device_count=3')
  assert flags.split()[0] == '--xla_force_host_platform_device_count=3'


@needs_jaxlib_010
def test_dots_with_a_constant_splat_are_right_under_the_flag():
  """YNNPACK's dot graphs alone (the flag's earlier value) turned a product with a constant splat
  into garbage (x @ zeros gave 6.6e36): a fresh model's zero head passed as a closure, or any
  jitted code multiplying by a constant of one value. Run in a process with the flag set."""
  script = ('import trainer, jax, jax.numpy as jnp\n'
            'x = jnp.ones((4, 64))\n'
            'print(float(jnp.abs(jax.jit(lambda x: x @ jnp.zeros((64, 10)))(x)).max()),\n'
            '      float(jax.jit(lambda x: x @ jnp.full((64, 10), 0.5))(x)[0, 0]))')
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  env.pop('XLA_FLAGS', None)
  out = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True,
                       check=True, cwd=REPO).stdout.split()
  assert [float(v) for v in out] == [0.0, 32.0]
