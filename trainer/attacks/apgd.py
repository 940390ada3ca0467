"""Auto-PGD (Croce & Hein 2020) for L∞ and L2, following fra31/auto-attack's `autopgd_base.py`.

    x_adv = apgd(logits_fn, x, y, norm='linf', eps=8/255, loss='ce', n_restarts=5)
    x_adv = apgd_targeted(logits_fn, x, y, norm='linf', eps=8/255)   # APGD-T

One run (`apgd_run`) starts on the sphere of radius ε (L∞: a uniform draw rescaled so its largest
coordinate is ε; L2: a Gaussian direction scaled to length ε), steps 2ε along sign(∇) / ∇/‖∇‖₂
with momentum 0.75, and reviews the step size at the checkpoints of `checkpoints(n_iter)`. At a
checkpoint the step is halved (and the iterate and its gradient reset to the best point so far)
when either
  1. the loss rose in at most ρ = 75% of the steps since the previous checkpoint, or
  2. the step was not halved at the previous checkpoint and the best loss has not improved since.
A run tracks the best-loss point and whether any iterate was misclassified.

Restarts run one after another and only points still correctly classified take part in the
outcome: a point keeps the adversarial example of the first run that broke it. Every run of
`apgd_runs` has an index r; its random start uses `fold_in(key, r)` and, for APGD-T, it targets
the (r // n_restarts)-th strongest rival class of the clean input. The cascade relies on this to
call one run at a time on the points still robust and get the same runs as a single call.

Everything is vectorised over the batch and jit-compiled, one step per call from a host loop on
CPU and one program per run elsewhere (see `trainer.attacks.common`); a model passed as
`jax.tree_util.Partial(apply_fn, variables)` has its weights passed as arguments to the compiled
program instead of being embedded as constants (see `as_jit_arg`).
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from trainer.attacks import losses as losses_lib
from trainer.attacks import projections
from trainer.attacks.common import as_jit_arg
from trainer.attacks.common import bcast
from trainer.attacks.common import canonical_norm
from trainer.attacks.common import random_direction
from trainer.attacks.common import rival_class
from trainer.attacks.common import run_steps
from trainer.attacks.common import steps_per_call

RHO = 0.75       # success-rate threshold of the first halving condition
MOMENTUM = 0.75  # weight of the new step; 1 − MOMENTUM goes to the previous displacement
LOSSES = ('ce', 'dlr', 'dlr-targeted')


def checkpoints(n_iter):
  """Iteration counts after which the step size is reviewed.

  The first review comes after 22% of the iterations; each interval is 3% shorter than the one
  before, but never shorter than 6% (percentages rounded down to whole iterations, at least one).
  For n_iter = 100: [22, 41, 57, 70, 80, 87, 93, 99].
  """
  length = max(int(0.22 * n_iter), 1)
  shortest = max(int(0.06 * n_iter), 1)
  shrink = max(int(0.03 * n_iter), 1)
  points, point = [], length
  while point <= n_iter:
    points.append(point)
    length = max(length - shrink, shortest)
    point += length
  return points


def _review_table(n_iter):
  """Per iteration: whether it ends at a checkpoint, and the number of steps it looks back on."""
  is_check = np.zeros(n_iter, bool)
  window = np.zeros(n_iter, np.int32)
  previous = 0
  for point in checkpoints(n_iter):
    is_check[point - 1] = True
    window[point - 1] = point - previous
    previous = point
  return jnp.asarray(is_check), jnp.asarray(window)


def start_point(key, x, *, norm, eps):
  """The reference's random start: a point at distance ε from x, clipped to [0, 1]."""
  projections.check_norm(norm)
  t = random_direction(key, x, norm)
  t = t / bcast(projections.per_example_norm(t, norm) + 1e-12, t)
  return jnp.clip(x + eps * t, 0.0, 1.0)


class RunResult(NamedTuple):
  x_adv: jax.Array      # last misclassified iterate (the start point where none was)
  broken: jax.Array     # (batch,) bool: some iterate, the start included, was misclassified
  x_best: jax.Array     # highest-loss iterate
  loss_best: jax.Array  # (batch,) its loss


class _State(NamedTuple):
  x_adv: jax.Array             # current iterate
  x_prev: jax.Array            # iterate before it, for the momentum term
  grad: jax.Array              # gradient at x_adv
  step: jax.Array              # (batch,) step size
  x_best: jax.Array
  grad_best: jax.Array
  loss_best: jax.Array
  x_found: jax.Array
  broken: jax.Array
  history: jax.Array           # (n_iter, batch) loss after each iteration
  loss_at_check: jax.Array     # best loss at the previous checkpoint
  halved_at_check: jax.Array   # whether the step was halved at the previous checkpoint


def _evaluate(logits_fn, loss_fn, y, z, eot_iter=1):
  """Per-example loss, misclassification flag and gradient of the loss at z.

  With eot_iter > 1 the gradient is the mean over eot_iter evaluations (Expectation over
  Transformation, AutoAttack 'rand'); loss and flag come from the last one, as in the reference.
  `logits_fn` is a pure function, so for it the evaluations coincide (XLA computes one).
  """
  def total(z):
    logits = logits_fn(z).astype(jnp.float32)
    per_example = loss_fn(logits)
    return jnp.sum(per_example), (per_example, logits)
  grad = 0.0
  for _ in range(eot_iter):
    g, (loss, logits) = jax.grad(total, has_aux=True)(z)
    grad = grad + g
  return loss, jnp.argmax(logits, axis=1) != y, grad / eot_iter


def _step(s, i, x, *, norm, eps):
  """A steepest-ascent step, then a momentum step between it and the previous displacement."""
  project = functools.partial(projections.project, x=x, norm=norm, eps=eps)
  a = jnp.where(i > 0, MOMENTUM, 1.0)
  z = project(s.x_adv + bcast(s.step, x) * projections.normalize(s.grad, norm))
  return project(s.x_adv + (z - s.x_adv) * a + (s.x_adv - s.x_prev) * (1.0 - a))


def _halve(s, i, history, loss_best, is_check, window, rho):
  """The two step-size conditions, evaluated at every iteration but acted on at checkpoints.

  Condition 1 counts the steps in the window in which the loss rose. Like the reference, the
  first step of the first window is compared with the not-yet-written last slot of the history
  (zero), so that the decisions match the reference's.
  """
  rose = history > jnp.roll(history, 1, axis=0)
  j = jnp.arange(history.shape[0])[:, None]
  in_window = (j <= i) & (j > i - window[i])
  oscillating = jnp.sum(rose & in_window, axis=0) <= window[i] * rho
  stalled = ~s.halved_at_check & (s.loss_at_check >= loss_best)
  return is_check[i] & (oscillating | stalled)


def _where(c, a, b):
  return jnp.where(bcast(c, a), a, b)


def run_init(logits_fn, x, y, key, loss_fn, *, norm, eps, n_iter=100, eot_iter=1):
  """The state of a run at its random start (before the first iteration). Traceable."""
  projections.check_norm(norm)
  x0 = start_point(key, x, norm=norm, eps=eps)
  loss0, wrong0, grad0 = _evaluate(logits_fn, loss_fn, y, x0, eot_iter)
  return _State(
      x_adv=x0, x_prev=x0, grad=grad0, step=jnp.full(x.shape[:1], 2.0 * eps, jnp.float32),
      x_best=x0, grad_best=grad0, loss_best=loss0, x_found=x0, broken=wrong0,
      history=jnp.zeros((n_iter,) + loss0.shape, loss0.dtype), loss_at_check=loss0,
      halved_at_check=jnp.ones_like(wrong0))


def run_iteration(logits_fn, x, y, loss_fn, i, s, *, norm, eps, rho=RHO, eot_iter=1):
  """Iteration i (0-based, may be traced) of a run: a step, then the step-size review."""
  is_check, window = _review_table(s.history.shape[0])
  z = _step(s, i, x, norm=norm, eps=eps)
  loss, wrong, grad = _evaluate(logits_fn, loss_fn, y, z, eot_iter)
  history = s.history.at[i].set(loss)
  better = loss > s.loss_best
  x_best, grad_best = _where(better, z, s.x_best), _where(better, grad, s.grad_best)
  loss_best = jnp.where(better, loss, s.loss_best)
  halve = _halve(s, i, history, loss_best, is_check, window, rho)
  checked = is_check[i]
  return _State(
      x_adv=_where(halve, x_best, z), x_prev=s.x_adv, grad=_where(halve, grad_best, grad),
      step=jnp.where(halve, s.step / 2.0, s.step), x_best=x_best, grad_best=grad_best,
      loss_best=loss_best, x_found=_where(wrong, z, s.x_found), broken=s.broken | wrong,
      history=history, loss_at_check=jnp.where(checked, loss_best, s.loss_at_check),
      halved_at_check=jnp.where(checked, halve, s.halved_at_check))


def apgd_run(logits_fn, x, y, key, loss_fn, *, norm, eps, n_iter=100, rho=RHO):
  """One APGD run from one random start; maximises `loss_fn(logits)` (per example).

  Returns a RunResult. Traceable, as one loop (the drivers below step it from the host on CPU).
  """
  state = run_init(logits_fn, x, y, key, loss_fn, norm=norm, eps=eps, n_iter=n_iter)
  body = lambda i, s: run_iteration(logits_fn, x, y, loss_fn, i, s, norm=norm, eps=eps, rho=rho)
  s = jax.lax.fori_loop(0, n_iter, body, state)
  return RunResult(s.x_found, s.broken, s.x_best, s.loss_best)


def _check_classes(loss, num_classes, n_target_classes):
  if loss == 'dlr' and num_classes < 3:
    raise ValueError(f'The DLR loss needs at least 3 classes; the model has {num_classes}.')
  if loss == 'dlr-targeted':
    if num_classes < 4:
      raise ValueError(
          f'The targeted DLR loss needs at least 4 classes; the model has {num_classes}.')
    if not 1 <= n_target_classes <= num_classes - 1:
      raise ValueError(f'n_target_classes={n_target_classes} must be in [1, {num_classes - 1}] '
                       f'for a model with {num_classes} classes.')


def apgd_runs(logits_fn, x, y, key, runs, *, norm, eps, n_iter=100, loss='ce', n_restarts=1,
              n_target_classes=9, rho=RHO, eot_iter=1):
  """APGD runs `runs` (a sequence of ints) one after another, each on the points still robust.

  Run r starts from `fold_in(key, r)`; with loss='dlr-targeted' it targets the
  (r // n_restarts)-th strongest rival class of the clean input. Stops early once no point is
  left. Returns x_adv: the adversarial example of the first run that broke the point, the clean
  image elsewhere (including inputs misclassified to begin with).
  """
  if loss not in LOSSES:
    raise ValueError(f'Unknown APGD loss {loss!r}; expected one of {LOSSES}.')
  norm = canonical_norm(norm)
  projections.check_norm(norm)
  logits_fn, eps = as_jit_arg(logits_fn), float(eps)
  if eot_iter < 1:
    raise ValueError(f'eot_iter must be positive, got {eot_iter}.')
  statics = dict(norm=norm, eps=eps, loss=loss, n_restarts=n_restarts, rho=rho,
                 eot_iter=eot_iter)
  per_call = steps_per_call(x, n_iter)
  clean_logits, robust = _clean(logits_fn, x, y)
  _check_classes(loss, clean_logits.shape[1], n_target_classes)
  x_adv = x
  for r in np.asarray(runs, np.int32).reshape(-1):
    if not bool(jnp.any(robust)):
      break
    r = jnp.asarray(r, jnp.int32)
    s = _run_start(logits_fn, x, y, jax.random.fold_in(key, r), clean_logits, r,
                   n_iter=n_iter, **statics)
    for start in range(0, n_iter, per_call):
      s = _run_steps(logits_fn, x, y, clean_logits, r, s, jnp.asarray(start, jnp.int32),
                     n=min(per_call, n_iter - start), **statics)
    robust, x_adv = _keep_first(robust, x_adv, s.broken, s.x_found)
  return jnp.asarray(x_adv)


@jax.jit
def _clean(logits_fn, x, y):
  clean_logits = logits_fn(x).astype(jnp.float32)
  return clean_logits, jnp.argmax(clean_logits, axis=1) == y


def _loss_fn(loss, y, clean_logits, r, n_restarts):
  if loss == 'dlr-targeted':
    target = rival_class(clean_logits, y, r // n_restarts)
    return lambda logits: losses_lib.targeted_dlr(logits, y, target)
  return lambda logits: losses_lib.get_loss(loss)(logits, y)


@functools.partial(jax.jit, static_argnames=('norm', 'eps', 'n_iter', 'loss', 'n_restarts',
                                             'rho', 'eot_iter'))
def _run_start(logits_fn, x, y, key, clean_logits, r, *, norm, eps, n_iter, loss, n_restarts,
               rho, eot_iter):
  del rho
  loss_fn = _loss_fn(loss, y, clean_logits, r, n_restarts)
  return run_init(logits_fn, x, y, key, loss_fn, norm=norm, eps=eps, n_iter=n_iter,
                  eot_iter=eot_iter)


@functools.partial(jax.jit, static_argnames=('n', 'norm', 'eps', 'loss', 'n_restarts', 'rho',
                                             'eot_iter'))
def _run_steps(logits_fn, x, y, clean_logits, r, s, start, *, n, norm, eps, loss, n_restarts,
               rho, eot_iter):
  loss_fn = _loss_fn(loss, y, clean_logits, r, n_restarts)
  body = lambda i, s: run_iteration(logits_fn, x, y, loss_fn, i, s, norm=norm, eps=eps, rho=rho,
                                    eot_iter=eot_iter)
  return run_steps(body, start, n, s)


@jax.jit
def _keep_first(robust, x_adv, broken, x_found):
  newly = robust & broken
  return robust & ~newly, jnp.where(bcast(newly, x_adv), x_found, x_adv)


def apgd(logits_fn, x, y, *, norm, eps, n_iter=100, n_restarts=1, loss='ce', seed=0, rho=RHO,
         eot_iter=1):
  """APGD-CE (loss='ce') or APGD-DLR (loss='dlr'); returns x_adv (clean where not broken)."""
  if loss not in ('ce', 'dlr'):
    raise ValueError(f'Unknown APGD loss {loss!r}; expected ce or dlr (use apgd_targeted).')
  return apgd_runs(logits_fn, x, y, jax.random.key(seed), np.arange(n_restarts), norm=norm,
                   eps=eps, n_iter=n_iter, loss=loss, n_restarts=n_restarts, rho=rho,
                   eot_iter=eot_iter)


def apgd_targeted(logits_fn, x, y, *, norm, eps, n_iter=100, n_target_classes=9, n_restarts=1,
                  seed=0, rho=RHO):
  """APGD-T: targeted DLR towards each of the n_target_classes strongest rivals in turn.

  As in AutoAttack's standard version: n_restarts runs (default one) of n_iter steps per target,
  targets in decreasing order of their clean logit, each only on the points still robust.
  """
  n_runs = n_target_classes * n_restarts
  return apgd_runs(logits_fn, x, y, jax.random.key(seed), np.arange(n_runs), norm=norm, eps=eps,
                   n_iter=n_iter, loss='dlr-targeted', n_restarts=n_restarts,
                   n_target_classes=n_target_classes, rho=rho)
