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

Everything is vectorised over the batch and jit-compiled; a model passed as
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

RHO = 0.75       # success-rate threshold of the first halving condition
MOMENTUM = 0.75  # weight of the new step; 1 − MOMENTUM goes to the previous displacement
LOSSES = ('ce', 'dlr', 'dlr-targeted')


def as_jit_arg(logits_fn):
  """Makes `logits_fn` a pytree that jit can take as an argument.

  A `jax.tree_util.Partial` keeps its bound arrays as traced leaves, so `Partial(model.apply,
  variables)` does not bake the weights into the compiled program; any other callable is wrapped
  without leaves and is cached by identity (closed-over arrays then do become constants).
  """
  if isinstance(logits_fn, jax.tree_util.Partial):
    return logits_fn
  return jax.tree_util.Partial(logits_fn)


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


def _bcast(v, like):
  return v.reshape((-1,) + (1,) * (like.ndim - 1))


def start_point(key, x, *, norm, eps):
  """The reference's random start: a point at distance ε from x, clipped to [0, 1]."""
  projections.check_norm(norm)
  if norm == 'linf':
    t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
  else:
    t = jax.random.normal(key, x.shape, x.dtype)
  t = t / _bcast(projections.per_example_norm(t, norm) + 1e-12, t)
  return jnp.clip(x + eps * t, 0.0, 1.0)


def rival_class(logits, y, rank):
  """The class with the (rank + 1)-th highest logit among the classes other than y.

  For a correctly classified input this is the reference's choice of target for APGD-T and
  FAB-T (the (rank + 2)-th highest logit overall). `rank` may be traced.
  """
  others = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), -jnp.inf, logits)
  order = jnp.argsort(-others, axis=1)
  return jnp.take(order, rank, axis=1)


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


def _evaluate(logits_fn, loss_fn, y, z):
  """Per-example loss, misclassification flag and gradient of the loss at z."""
  def total(z):
    logits = logits_fn(z).astype(jnp.float32)
    per_example = loss_fn(logits)
    return jnp.sum(per_example), (per_example, logits)
  grad, (loss, logits) = jax.grad(total, has_aux=True)(z)
  return loss, jnp.argmax(logits, axis=1) != y, grad


def _step(s, i, x, *, norm, eps):
  """A steepest-ascent step, then a momentum step between it and the previous displacement."""
  project = functools.partial(projections.project, x=x, norm=norm, eps=eps)
  a = jnp.where(i > 0, MOMENTUM, 1.0)
  z = project(s.x_adv + _bcast(s.step, x) * projections.normalize(s.grad, norm))
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


def apgd_run(logits_fn, x, y, key, loss_fn, *, norm, eps, n_iter=100, rho=RHO):
  """One APGD run from one random start; maximises `loss_fn(logits)` (per example).

  Returns a RunResult. Traceable; the public functions below jit it.
  """
  projections.check_norm(norm)
  is_check, window = _review_table(n_iter)
  evaluate = functools.partial(_evaluate, logits_fn, loss_fn, y)
  where = lambda c, a, b: jnp.where(_bcast(c, a), a, b)

  x0 = start_point(key, x, norm=norm, eps=eps)
  loss0, wrong0, grad0 = evaluate(x0)
  state = _State(
      x_adv=x0, x_prev=x0, grad=grad0, step=jnp.full(x.shape[:1], 2.0 * eps, jnp.float32),
      x_best=x0, grad_best=grad0, loss_best=loss0, x_found=x0, broken=wrong0,
      history=jnp.zeros((n_iter,) + loss0.shape, loss0.dtype), loss_at_check=loss0,
      halved_at_check=jnp.ones_like(wrong0))

  def body(i, s):
    z = _step(s, i, x, norm=norm, eps=eps)
    loss, wrong, grad = evaluate(z)
    history = s.history.at[i].set(loss)
    better = loss > s.loss_best
    x_best, grad_best = where(better, z, s.x_best), where(better, grad, s.grad_best)
    loss_best = jnp.where(better, loss, s.loss_best)
    halve = _halve(s, i, history, loss_best, is_check, window, rho)
    checked = is_check[i]
    return _State(
        x_adv=where(halve, x_best, z), x_prev=s.x_adv, grad=where(halve, grad_best, grad),
        step=jnp.where(halve, s.step / 2.0, s.step), x_best=x_best, grad_best=grad_best,
        loss_best=loss_best, x_found=where(wrong, z, s.x_found), broken=s.broken | wrong,
        history=history, loss_at_check=jnp.where(checked, loss_best, s.loss_at_check),
        halved_at_check=jnp.where(checked, halve, s.halved_at_check))

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
              n_target_classes=9, rho=RHO):
  """APGD runs `runs` (an int array) one after another, each on the points still robust.

  Run r starts from `fold_in(key, r)`; with loss='dlr-targeted' it targets the
  (r // n_restarts)-th strongest rival class of the clean input. Stops early once no point is
  left. Returns x_adv: the adversarial example of the first run that broke the point, the clean
  image elsewhere (including inputs misclassified to begin with).
  """
  if loss not in LOSSES:
    raise ValueError(f'Unknown APGD loss {loss!r}; expected one of {LOSSES}.')
  projections.check_norm(norm)
  return _apgd_runs(as_jit_arg(logits_fn), x, y, key, jnp.asarray(runs, jnp.int32), norm=norm,
                    eps=float(eps), n_iter=n_iter, loss=loss, n_restarts=n_restarts,
                    n_target_classes=n_target_classes, rho=rho)


@functools.partial(jax.jit, static_argnames=(
    'norm', 'eps', 'n_iter', 'loss', 'n_restarts', 'n_target_classes', 'rho'))
def _apgd_runs(logits_fn, x, y, key, runs, *, norm, eps, n_iter, loss, n_restarts,
               n_target_classes, rho):
  clean_logits = logits_fn(x).astype(jnp.float32)
  _check_classes(loss, clean_logits.shape[1], n_target_classes)
  robust = jnp.argmax(clean_logits, axis=1) == y

  def run(r):
    if loss == 'dlr-targeted':
      target = rival_class(clean_logits, y, r // n_restarts)
      loss_fn = lambda logits: losses_lib.targeted_dlr(logits, y, target)
    else:
      loss_fn = lambda logits: losses_lib.get_loss(loss)(logits, y)
    return apgd_run(logits_fn, x, y, jax.random.fold_in(key, r), loss_fn, norm=norm, eps=eps,
                    n_iter=n_iter, rho=rho)

  def cond(carry):
    k, robust, _ = carry
    return (k < runs.shape[0]) & jnp.any(robust)

  def body(carry):
    k, robust, x_adv = carry
    result = run(runs[k])
    newly = robust & result.broken
    return k + 1, robust & ~newly, jnp.where(_bcast(newly, x), result.x_adv, x_adv)

  _, _, x_adv = jax.lax.while_loop(cond, body, (0, robust, x))
  return x_adv


def apgd(logits_fn, x, y, *, norm, eps, n_iter=100, n_restarts=1, loss='ce', seed=0, rho=RHO):
  """APGD-CE (loss='ce') or APGD-DLR (loss='dlr'); returns x_adv (clean where not broken)."""
  if loss not in ('ce', 'dlr'):
    raise ValueError(f'Unknown APGD loss {loss!r}; expected ce or dlr (use apgd_targeted).')
  return apgd_runs(logits_fn, x, y, jax.random.key(seed), np.arange(n_restarts), norm=norm,
                   eps=eps, n_iter=n_iter, loss=loss, n_restarts=n_restarts, rho=rho)


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
