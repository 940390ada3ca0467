"""Evaluation at 1,000 classes: the paper's AA+MT on ImageNet limits the targeted attacks to "the
top-10 non-correct class predictions" (App. B), AutoAttack's targeted stages take 9 targets, and no
step may cost a gradient per class.

XLA's cost analysis of every step program of the 'aa+mt' and 'standard' stages, for a toy model
with a 1,000-class head, must stay within a few gradients of the model; untargeted FAB ('plus'),
which takes the Jacobian of every logit as the reference does, is the control that the check sees
a per-class cost. Also MultiTargeted's budget: 10 restarts in all, or 10 per target.
"""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.attacks.common import as_jit_arg
from trainer.attacks.stages import resolve_stages

apgd = importlib.import_module('trainer.attacks.apgd')  # the modules, not the functions
multitargeted = importlib.import_module('trainer.attacks.multitargeted')
square = importlib.import_module('trainer.attacks.square')
fab = importlib.import_module('trainer.attacks.fab')

CLASSES = 1000
EPS = 8 / 255


def _toy(params, x):
  """A 3×3 convolution of 16 channels on 8×8×1 and a dense head to 1,000 classes."""
  kernel, head = params
  h = jax.nn.relu(jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                               dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  return h.reshape(h.shape[0], -1) @ head


@pytest.fixture(scope='module')
def problem():
  r = np.random.RandomState(0)
  params = (jnp.asarray(r.randn(3, 3, 1, 16) / 3, jnp.float32),
            jnp.asarray(r.randn(8 * 8 * 16, CLASSES) / 32, jnp.float32))
  logits_fn = as_jit_arg(jax.tree_util.Partial(_toy, params))
  x = jnp.asarray(r.rand(4, 8, 8, 1), jnp.float32)
  y = jnp.argmax(logits_fn(x), axis=1)
  return logits_fn, x, y


def _flops(fn, *args, **statics):
  return jax.jit(fn, static_argnames=tuple(statics)).lower(*args, **statics).compile(
      ).cost_analysis()['flops']


@pytest.fixture(scope='module')
def gradient_flops(problem):
  """One input gradient of ⟨w, logits⟩ for a w given at run time (every logit counts, so XLA
  cannot prune the head): the unit of cost."""
  logits_fn, x, _ = problem
  w = jnp.ones((x.shape[0], CLASSES))
  return _flops(jax.grad(lambda z, w: jnp.sum(logits_fn(z) * w)), x, w)


def _apgd_step(problem, loss):
  logits_fn, x, y = problem
  statics = dict(norm='linf', eps=EPS, loss=loss, n_restarts=1, rho=apgd.RHO, eot_iter=1)
  clean, _ = apgd._clean(logits_fn, x, y)
  r = jnp.asarray(0, jnp.int32)
  state = apgd._run_start(logits_fn, x, y, jax.random.key(0), clean, r, n_iter=100, **statics)
  return _flops(apgd._run_steps.__wrapped__, logits_fn, x, y, clean, r, state,
                jnp.asarray(0, jnp.int32), n=1, **statics)


def _fab_step(problem, targeted):
  logits_fn, x, y = problem
  carry = fab._start(jax.random.key(0), x, jnp.float32(EPS), False, norm='linf')
  target = (y + 1) % CLASSES
  return _flops(fab._fab_steps.__wrapped__, logits_fn, x, y, target, carry, n=1, norm='linf',
                targeted=targeted, alpha_max=0.1, eta=1.05, beta=0.9)


def _mt_step(problem):
  logits_fn, x, y = problem
  statics = dict(norm='linf', eps=EPS, n_steps=200, restarts_per_target=0)
  state = multitargeted._begin(logits_fn, x, y, n_target_classes=10)
  r = jnp.asarray(3, jnp.int32)
  carry = multitargeted._restart_start(x, y, jax.random.key(0), r, state, **statics)
  return _flops(multitargeted._restart_step.__wrapped__, logits_fn, x, y, r, state, carry,
                **statics)


def _square_query(problem):
  """Square's program: three forward passes outside its loop and one query inside."""
  logits_fn, x, y = problem
  return _flops(square._square.__wrapped__, logits_fn, x, y, jax.random.key(0),
                jnp.float32(EPS), norm='linf', n_queries=10, p_init=0.8, resc_schedule=False,
                canonical=True)


STEPS = {
    'apgd-ce': lambda p: _apgd_step(p, 'ce'),
    'apgd-dlr': lambda p: _apgd_step(p, 'dlr'),
    'apgd-t': lambda p: _apgd_step(p, 'dlr-targeted'),
    'fab-t': lambda p: _fab_step(p, targeted=True),
    'mt': _mt_step,
    'square': _square_query,
}


@pytest.mark.integration
@pytest.mark.parametrize('stage', sorted(STEPS))
def test_no_step_costs_a_gradient_per_class(problem, gradient_flops, stage):
  assert STEPS[stage](problem) < 4 * gradient_flops


@pytest.mark.integration
def test_the_check_sees_a_per_class_jacobian(problem, gradient_flops):
  """Untargeted FAB linearises the boundary to every class: 1,000 backward passes."""
  assert _fab_step(problem, targeted=False) > 100 * gradient_flops


def test_targets_at_1000_classes():
  stages = {s.name: s for s in resolve_stages('aa+mt', CLASSES)}
  assert stages['mt'].options['n_target_classes'] == 10 and stages['mt'].n_passes == 10
  per_target = {s.name: s for s in resolve_stages('aa+mt-per-target', CLASSES)}
  assert per_target['mt'].n_passes == 100
  standard = {s.name: s for s in resolve_stages('standard', CLASSES)}
  assert standard['apgd-t'].n_passes == 9 and standard['fab-t'].options['n_target_classes'] == 9


def test_multitargeted_budget_on_10_classes():
  mt = {s.name: s for s in resolve_stages('aa+mt', 10)}['mt']
  per_target = {s.name: s for s in resolve_stages('aa+mt-per-target', 10)}['mt']
  assert mt.n_passes == 10 and mt.options['n_target_classes'] == 9
  assert per_target.n_passes == 90 and per_target.options['restarts_per_target']
  cycle = [multitargeted.target_rank(r, 9) for r in range(10)]
  assert cycle == [0, 1, 2, 3, 4, 5, 6, 7, 8, 0]
  rows = [multitargeted.target_rank(r, 9, restarts_per_target=10) for r in range(90)]
  assert rows == [t for t in range(9) for _ in range(10)]
