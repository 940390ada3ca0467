"""Attack stages of the evaluation cascades, by name, and the named cascades (versions).

    make_stage('apgd-ce', num_classes=10, n_restarts=5)   # -> Stage
    resolve_stages('aa+mt', num_classes=10)                # -> [Stage, Stage, Stage]

A stage wraps one attack of `trainer.attacks` behind a common signature and says how many passes
(restarts or targets) it makes; `trainer.attacks.autoattack` runs the passes of a cascade.
"""
import dataclasses
import functools
import re
from typing import Any, Callable

import jax

from trainer.attacks import iterative
from trainer.attacks.apgd import apgd_runs
from trainer.attacks.common import as_jit_arg
from trainer.attacks.common import host_loops
from trainer.attacks.multitargeted import multitargeted_runs
from trainer.attacks.pgd import pgd_attack


@dataclasses.dataclass(frozen=True)
class Stage:
  """One attack of a cascade.

  `attack(logits_fn, x, y, *, norm, eps, seed, pass_index) -> x_adv` is called once per pass on
  a batch of points still robust; passes 0 … n_passes − 1 are the stage's restarts or targets.
  """
  name: str
  n_passes: int
  attack: Callable[..., Any]
  options: dict = dataclasses.field(default_factory=dict)   # the attack's settings, for reports


# Factories: factory(num_classes, **options) -> Stage.

def _apgd_stage(name, loss):
  def make(num_classes, *, n_restarts=1, n_iter=100, eot_iter=1):
    del num_classes
    def attack(logits_fn, x, y, *, norm, eps, seed, pass_index):
      return apgd_runs(logits_fn, x, y, jax.random.key(seed), [pass_index], norm=norm, eps=eps,
                       n_iter=n_iter, loss=loss, eot_iter=eot_iter)
    return Stage(name, n_restarts, attack,
                 dict(n_restarts=n_restarts, n_iter=n_iter, eot_iter=eot_iter))
  return make


def _apgd_targeted_stage(num_classes, *, n_target_classes=9, n_restarts=1, n_iter=100):
  n_targets = min(n_target_classes, num_classes - 1)
  def attack(logits_fn, x, y, *, norm, eps, seed, pass_index):
    return apgd_runs(logits_fn, x, y, jax.random.key(seed), [pass_index], norm=norm, eps=eps,
                     n_iter=n_iter, loss='dlr-targeted', n_restarts=n_restarts,
                     n_target_classes=n_targets)
  return Stage('apgd-t', n_targets * n_restarts, attack,
               dict(n_target_classes=n_targets, n_restarts=n_restarts, n_iter=n_iter))


def _multitargeted_stage(num_classes, *, n_restarts=10, n_steps=200, n_target_classes=10,
                         restarts_per_target=False):
  """restarts_per_target: n_restarts restarts for each target, as DeepMind's MultiTargeted
  counts them (multitargeted.py), instead of n_restarts in all."""
  n_targets = min(n_target_classes, num_classes - 1)
  per_target = n_restarts if restarts_per_target else 0
  def attack(logits_fn, x, y, *, norm, eps, seed, pass_index):
    return multitargeted_runs(logits_fn, x, y, jax.random.key(seed), [pass_index], norm=norm,
                              eps=eps, n_steps=n_steps, n_target_classes=n_targets,
                              restarts_per_target=per_target)
  return Stage('mt', n_restarts * n_targets if restarts_per_target else n_restarts, attack,
               dict(n_restarts=n_restarts, n_steps=n_steps, n_target_classes=n_targets,
                    restarts_per_target=bool(restarts_per_target)))


def _fab_stage(name, targeted):
  """FAB-T: one pass, all targets (each on the points still robust); FAB: a pass per restart."""
  def make(num_classes, *, n_target_classes=9, n_restarts=1, n_iter=100):
    n_targets = min(n_target_classes, num_classes - 1)
    def attack(logits_fn, x, y, *, norm, eps, seed, pass_index):
      from trainer.attacks.fab import fab_runs  # pylint: disable=g-import-not-at-top
      runs = range(n_targets * n_restarts) if targeted else [pass_index]
      return fab_runs(logits_fn, x, y, jax.random.key(seed), list(runs), norm=norm, eps=eps,
                      n_iter=n_iter, targeted=targeted, n_target_classes=n_targets,
                      n_restarts=n_restarts)
    options = dict(n_restarts=n_restarts, n_iter=n_iter)
    if targeted:
      options['n_target_classes'] = n_targets
    return Stage(name, 1 if targeted else n_restarts, attack, options)
  return make


def _square_stage(num_classes, *, n_queries=5000, p_init=0.8, resc_schedule=False):
  """resc_schedule=False: the p schedule as AutoAttack runs it (not stretched to n_queries)."""
  del num_classes
  def attack(logits_fn, x, y, *, norm, eps, seed, pass_index):
    del pass_index
    from trainer.attacks.square import square  # pylint: disable=g-import-not-at-top
    return square(logits_fn, x, y, norm=norm, eps=eps, n_queries=n_queries, p_init=p_init,
                  seed=seed, resc_schedule=resc_schedule)
  return Stage('square', 1, attack, dict(n_queries=n_queries, p_init=p_init,
                                         resc_schedule=resc_schedule))


@functools.lru_cache(maxsize=None)
def _pgd(norm, eps, steps, loss):
  """One attack object per setting, so that its compiled programs are reused."""
  return pgd_attack(norm=norm, eps=eps, steps=steps, loss=loss)


@functools.partial(jax.jit, static_argnums=0)
def _in_one_program(attack, logits_fn, x, y, key):
  return attack(logits_fn, x, y, key)


def _pgd_stage(name, steps, loss):
  def make(num_classes, *, n_restarts=1):
    del num_classes
    def attack(logits_fn, x, y, *, norm, eps, seed, pass_index):
      key = jax.random.fold_in(jax.random.key(seed), pass_index)
      run = iterative.drive_on_host if host_loops(x) else _in_one_program
      return run(_pgd(norm, float(eps), steps, loss), as_jit_arg(logits_fn), x, y, key)
    return Stage(name, n_restarts, attack)
  return make


STAGES = {
    'apgd-ce': _apgd_stage('apgd-ce', 'ce'),
    'apgd-dlr': _apgd_stage('apgd-dlr', 'dlr'),
    'apgd-t': _apgd_targeted_stage,
    'fab': _fab_stage('fab', targeted=False),
    'fab-t': _fab_stage('fab-t', targeted=True),
    'square': _square_stage,
    'mt': _multitargeted_stage,
}
# Also 'pgd-<steps>' or 'pgd-<steps>-<loss>' (default loss: margin), e.g. 'pgd-20', 'pgd-40-ce'.
_PGD_NAME = re.compile(r'^pgd-(\d+)(?:-(ce|margin|dlr))?$')

VERSIONS = {
    # AutoAttack's versions for L∞ and L2, as fra31/auto-attack's autoattack.py builds them
    # (AutoAttack.__init__ and set_version): APGD 100 iterations, ρ = 0.75; APGD-T and FAB-T 9
    # targets, 1 restart each; FAB 100 iterations; Square 5,000 queries, p_init 0.8, 1 restart,
    # p schedule not rescaled.
    'standard': (('apgd-ce', {}), ('apgd-t', {}), ('fab-t', {}), ('square', {})),
    'plus': (('apgd-ce', {'n_restarts': 5}), ('apgd-dlr', {'n_restarts': 5}),
             ('fab', {'n_restarts': 5}), ('square', {}), ('apgd-t', {}), ('fab-t', {})),
    # For randomised defences: 20 EOT gradient samples per APGD step.
    'rand': (('apgd-ce', {'eot_iter': 20}), ('apgd-dlr', {'eot_iter': 20})),
    # The paper's AA+MT: APGD-CE 5×100, APGD-DLR 5×100, MultiTargeted 10×200 on the top-10
    # rivals (all 9 on 10 classes), 10 restarts in all.
    'aa+mt': (('apgd-ce', {'n_restarts': 5}), ('apgd-dlr', {'n_restarts': 5}), ('mt', {})),
    # The same with MultiTargeted's 10 restarts for every target, as DeepMind's code counts them
    # (9x the MT budget on 10 classes; trainer/attacks/multitargeted.py).
    'aa+mt-per-target': (('apgd-ce', {'n_restarts': 5}), ('apgd-dlr', {'n_restarts': 5}),
                         ('mt', {'restarts_per_target': True})),
}


def register_stage(name, factory):
  """Adds a stage: factory(num_classes, **options) -> Stage."""
  STAGES[name] = factory


def make_stage(name, num_classes, **options):
  if name in STAGES:
    return STAGES[name](num_classes, **options)
  match = _PGD_NAME.match(name)
  if match:
    return _pgd_stage(name, int(match.group(1)), match.group(2) or 'margin')(num_classes,
                                                                             **options)
  raise ValueError(f'Unknown attack stage {name!r}; expected one of {sorted(STAGES)} or '
                   f'pgd-<steps>[-ce|-margin|-dlr].')


def resolve_stages(version, num_classes):
  """`version`: a VERSIONS key, or a sequence of stage names, (name, options) pairs or Stages."""
  if isinstance(version, str):
    if version not in VERSIONS:
      raise ValueError(f'Unknown AutoAttack version {version!r}; expected one of '
                       f'{sorted(VERSIONS)} or a list of stages.')
    version = VERSIONS[version]
  stages = []
  for item in version:
    if isinstance(item, Stage):
      stages.append(item)
    elif isinstance(item, str):
      stages.append(make_stage(item, num_classes))
    else:
      name, options = item
      stages.append(make_stage(name, num_classes, **options))
  if not stages:
    raise ValueError('The cascade has no stages.')
  return stages
