"""Attacks on a plain `logits_fn(x) -> logits`, for x in [0, 1], and the evaluation cascades.

Note that `pgd`, `apgd`, `autoattack` and `square` name both a module and the function it
defines; importing this package binds the functions. Inside the package, import names from the
modules (`from trainer.attacks.apgd import apgd_runs`), not modules from the package.
"""
from trainer.attacks.apgd import apgd
from trainer.attacks.apgd import apgd_targeted
from trainer.attacks.autoattack import AutoAttackResult
from trainer.attacks.autoattack import autoattack
from trainer.attacks.multitargeted import multitargeted
from trainer.attacks.pgd import pgd

_LAZY = {'fab_targeted': 'trainer.attacks.fab', 'square': 'trainer.attacks.square'}


def __getattr__(name):
  """FAB-T and Square load on first use."""
  if name not in _LAZY:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  import importlib  # pylint: disable=g-import-not-at-top
  fn = getattr(importlib.import_module(_LAZY[name]), name)
  globals()[name] = fn  # importing trainer.attacks.square bound the module to this name
  return fn


__all__ = ['apgd', 'apgd_targeted', 'autoattack', 'AutoAttackResult', 'fab_targeted',
           'multitargeted', 'pgd', 'square']
