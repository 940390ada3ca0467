"""torchvision's own `resnet50` class and RobustBench's ImageNet wrapper, beside the CPU torch.

PyPI's torchvision wheels are built against a CUDA torch, whose libraries their C extension
(`torchvision/_C.so`) links: beside our CPU-only torch the extension never loads. From 0.17 on,
`import torchvision` then fails outright ("operator torchvision::nms does not exist", when
`torchvision/_meta_registrations.py` registers a fake kernel for the missing op), and with it
anything that imports torchvision once it is installed, diffusers' `UNet2DModel` among them.
torchvision 0.16.2 is the newest release whose package still imports there (it only warns that
its image extension did not load), so that is the version requirements-nodeps.txt pins and CI
installs with --no-deps, as robustbench. Its `models/resnet.py` differs from 0.28.0's (the release
paired with torch 2.13) only in type annotations (`List[int]` for `list[int]`).

The model definitions are plain Python on `torch.nn` and never touch the extension, so
`load_resnet()` imports `torchvision.models.resnet` with stand-ins for the `torchvision` and
`torchvision.models` package modules: their files are found through the stand-ins' `__path__`,
but their `__init__.py` (datasets, io, ops, and the extension) never runs. It then takes the
stand-ins and everything imported under them out of `sys.modules` again, so nothing else in the
process sees a partial torchvision. This works whichever torchvision release is installed.

`load_normalize_model()` loads RobustBench's `normalize_model` by path
(`robustbench/model_zoo/architectures/utils_architectures.py` imports only torch), the wrapper
`robustbench/model_zoo/imagenet.py` puts around every ImageNet ResNet-50.
"""
import importlib
import importlib.util
import os
import sys
import types

PIN = 'torchvision==0.16.2'
_STANDINS = ('torchvision', 'torchvision.models')


def load_resnet():
  """The module `torchvision.models.resnet` of the installed torchvision, without its package."""
  spec = importlib.util.find_spec('torchvision')
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(f'torchvision is not installed: pip install --no-deps {PIN} '
                      '(requirements-nodeps.txt).')
  root = spec.submodule_search_locations[0]
  before = {k: v for k, v in sys.modules.items() if k.split('.')[0] == 'torchvision'}
  for name in _STANDINS:
    standin = types.ModuleType(name)
    standin.__path__ = [os.path.join(root, *name.split('.')[1:])]
    sys.modules[name] = standin
  try:
    return importlib.import_module('torchvision.models.resnet')
  finally:
    for name in [k for k in sys.modules if k.split('.')[0] == 'torchvision']:
      del sys.modules[name]
    sys.modules.update(before)


def load_normalize_model():
  """RobustBench's `normalize_model(model, mean, std)`, loaded by path."""
  spec = importlib.util.find_spec('robustbench')
  if spec is None or not spec.submodule_search_locations:
    raise ImportError('robustbench is not installed (pip install --no-deps robustbench).')
  path = os.path.join(spec.submodule_search_locations[0], 'model_zoo', 'architectures',
                      'utils_architectures.py')
  module_spec = importlib.util.spec_from_file_location('robustbench_utils_architectures', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.normalize_model
