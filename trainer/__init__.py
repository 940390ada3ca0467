import importlib.metadata
import os

# TensorFlow (under tfds, clu and the TFRecord tools) prints C++ notices on import, such as the
# oneDNN one, that are not for people; it computes none of our numbers (JAX does), so its oneDNN
# kernels are off too. Explicit settings in the environment still win.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

# XLA:CPU (jaxlib 0.10) hands every convolution of a gradient program to YNNPACK on its own, where
# the input gradient of a small CNN runs 1.7-3x slower than on XLA's own kernels (BENCHMARKS.md,
# "AutoAttack 'standard' against fra31/auto-attack"). jaxlib's default fusion types are individual
# dots and convolutions, dot graphs and reductions; this flag keeps the dots only. (Dot graphs
# alone, the earlier setting, make YNNPACK multiply by a constant splat, e.g. `x @ jnp.zeros((64,
# 10))` under jit, into garbage; YNNPACK's reductions sum in another order than XLA's, which moves
# a BatchNorm over two images by 1e-3 relative, so a grouped BatchNorm no longer equals its groups
# run alone: tests/test_cpu_convolution_flag.py and test_resnet.py check both.) The flag is read
# when JAX creates its CPU client, so it must be set before the first computation; it is
# CPU-only, so accelerators are untouched. Other jaxlib versions may not know it (an unknown XLA
# flag aborts), and a setting of it in XLA_FLAGS wins.
CPU_CONVOLUTION_FLAG = ('--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,'
                        'LIBRARY_FUSION_TYPE_DOT')
_CPU_CONVOLUTION_OPTION = CPU_CONVOLUTION_FLAG.split('=')[0].lstrip('-')


def _jaxlib_0_10():
  try:
    return importlib.metadata.version('jaxlib').startswith('0.10.')
  except importlib.metadata.PackageNotFoundError:
    return False


def _set_cpu_convolution_flag():
  flags = os.environ.get('XLA_FLAGS', '')
  if _jaxlib_0_10() and _CPU_CONVOLUTION_OPTION not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} {CPU_CONVOLUTION_FLAG}'.strip()


_set_cpu_convolution_flag()
