"""FAB: the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), targeted and not, L∞ and L2.

FAB looks for the adversarial example of smallest norm. At each step it linearises the decision
boundary between the true class y and a target class t,

    f(z) = z_t(z) − z_y(z) ≈ f(x1) + ⟨∇f(x1), z − x1⟩ = 0,

projects both the current iterate x1 and the clean image x0 onto that hyperplane ∩ [0, 1]^d, and
moves to a convex combination of the two projections (biased towards the one from the iterate,
with weight at most `alpha_max` on the clean side) with a small overshoot `eta`. Once an iterate
is adversarial it is recorded if it is the closest so far, and pulled back towards x0 by `beta`
so that the search continues closer to the clean image.

The targeted version used by AutoAttack runs this for the classes ranked 2nd, 3rd, … by the clean
logits, one target after another, each only on the points without an adversarial inside ε yet.
Restarts after the first start from a random point in the ε/2-ball: the reference scales that
start by min(best norm so far, ε)/2, and since restarts run only on points with no adversarial
inside ε, that is always ε/2.

The untargeted version (AutoAttack 'plus') linearises, at every step, the boundary to each class
from the Jacobian of all the logits and follows the closest one in the dual norm.

Every (target, restart) run computes on the whole batch it is given and keeps the result only
for the points still robust; the runs stop once no point is left. The cascade gathers the points
still robust before each target (one pass per target, as the reference does), so a run is never
spent on points already broken.
`logits_fn` must treat examples independently (inference mode), as the per-example gradient is
taken as the gradient of the batch sum. The attack is jit-compiled; pass the model as a
`jax.tree_util.Partial` so that its weights are arguments of the compiled program:

    x_adv = fab_targeted(jax.tree_util.Partial(model.apply, variables), x, y, norm='linf',
                         eps=8/255)
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from trainer.attacks import projections
from trainer.attacks.common import as_jit_arg
from trainer.attacks.common import bcast
from trainer.attacks.common import canonical_norm
from trainer.attacks.common import random_direction
from trainer.attacks.common import run_steps
from trainer.attacks.common import steps_per_call


def _smallest_capped_level(weights, caps, c):
  """Per row, the smallest λ ≥ 0 with Σ_i weights_i · min(λ, caps_i) = c (+inf if unreachable).

  The left side, level(λ), is non-decreasing and piecewise linear with kinks at the caps. The
  reference sorts the caps; sorting is slow on accelerators and very slow on CPU, so instead
  λ is bracketed by bisection on the bit pattern of float32 (for non-negative floats the integer
  order is the float order, so 31 halvings reach two adjacent floats whatever the caps' range).
  Inside a bracket [lo, hi] of adjacent floats no cap lies strictly between the ends, so there
  level is exactly linear: the caps ≤ lo are saturated, the others free, and λ follows in closed
  form. Shapes (B, n), (B, n), (B,); weights, caps and c are non-negative.
  """
  def level(lam):
    return jnp.sum(weights * jnp.minimum(lam[:, None], caps), axis=1)

  as_float = lambda bits: jax.lax.bitcast_convert_type(bits, jnp.float32)
  top = jnp.max(caps, axis=1)

  def halve(_, bracket):
    lo, hi = bracket
    mid = lo + (hi - lo) // 2
    below = level(as_float(mid)) < c
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  bracket = (jnp.zeros(c.shape, jnp.int32), jax.lax.bitcast_convert_type(top, jnp.int32))
  lo, hi = jax.lax.fori_loop(0, 31, halve, bracket)
  lo, hi = as_float(lo), as_float(hi)
  saturated = caps <= lo[:, None]
  fixed = jnp.sum(jnp.where(saturated, weights * caps, 0.0), axis=1)
  free = jnp.sum(jnp.where(saturated, 0.0, weights), axis=1)
  lam = jnp.clip((c - fixed) / jnp.maximum(free, 1e-30), lo, hi)
  return jnp.where(level(top) < c, jnp.inf, lam)


def _orient(w, c):
  """Flips (w, c) so that c = ⟨w, t⟩ − b ≥ 0; the hyperplane itself is unchanged."""
  s = jnp.where(c >= 0, 1.0, -1.0)
  return w * s[:, None], c * s


def project_linf(t, w, c):
  """Smallest-L∞ step d with ⟨w, t + d⟩ = ⟨w, t⟩ − c and t + d ∈ [0, 1]^n, per row.

  With ‖d‖∞ ≤ λ the best one can do is move every coordinate against sign(w_i) by
  min(λ, room_i), room_i being the distance to the box face in that direction; the smallest λ
  that closes the gap c solves the capped-level problem with weights |w_i|. If even the box
  corner cannot close it, the corner is returned (as the reference does). Flat shapes (B, n).
  """
  w, c = _orient(w, c)
  room = jnp.where(w > 0, t, 1.0 - t)
  lam = _smallest_capped_level(jnp.abs(w), room, c)
  return -jnp.sign(w) * jnp.minimum(lam[:, None], room)


def project_l2(t, w, c, tiny=1e-8):
  """Smallest-L2 step d with ⟨w, t + d⟩ = ⟨w, t⟩ − c and t + d ∈ [0, 1]^n, per row.

  The KKT solution is d_i = clip(−μ w_i) to the box: coordinate i moves freely as −μ w_i until
  μ reaches r_i, where it hits its face. So the gap closed is Σ w_i² min(μ, r_i), the same
  capped-level problem with weights w_i². Coordinates with |w_i| < tiny are left alone (as the
  reference does), which also keeps r_i finite.
  """
  w, c = _orient(w, c)
  live = jnp.abs(w) > tiny
  w_safe = jnp.where(live, w, 1.0)
  r = jnp.where(live, jnp.where(w > 0, t, t - 1.0) / w_safe, 0.0)
  mu = _smallest_capped_level(jnp.where(live, w * w, 0.0), r, c)
  return jnp.where(live, -w * jnp.minimum(mu[:, None], r), 0.0)


_PROJECT = {'linf': project_linf, 'l2': project_l2}


def _flat_norm(v, norm):
  return projections.per_example_norm(v, norm)


def _random_start(key, x0, *, norm, radius):
  """x0 plus a random direction scaled to norm `radius` (L∞: uniform, L2: Gaussian), clipped."""
  t = random_direction(key, x0, norm)
  t = t / bcast(jnp.maximum(_flat_norm(t, norm), 1e-12), t)
  return jnp.clip(x0 + radius * t, 0.0, 1.0)


def _boundary(logits_fn, x1, y, target, targeted, norm):
  """The linearised boundary at x1: per point its gap f(x1) and normal ∇f(x1), flat (B, d).

  Targeted: f = z_t − z_y, one gradient of the batch sum. Untargeted (as the reference): the
  Jacobian of all the logit differences z_k − z_y, and the class whose linearised boundary is
  closest in the norm's dual (L1 for L∞, L2 for L2), never y itself.
  """
  batch = jnp.arange(x1.shape[0])
  if targeted:
    def gap(z):
      logits = logits_fn(z).astype(jnp.float32)
      diff = logits[batch, target] - logits[batch, y]
      return jnp.sum(diff), diff
    w, df = jax.grad(gap, has_aux=True)(x1)
    return df, w.reshape(w.shape[0], -1)
  logits, vjp = jax.vjp(lambda z: logits_fn(z).astype(jnp.float32), x1)
  eye = jnp.eye(logits.shape[1], dtype=logits.dtype)
  jac = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, logits.shape))[0])(eye)   # (K, B, ...)
  jac = jnp.moveaxis(jac, 0, 1).reshape(x1.shape[0], logits.shape[1], -1)    # (B, K, d)
  df = logits - logits[batch, y][:, None]
  dg = jac - jac[batch, y][:, None]
  dual = jnp.sum(jnp.abs(dg), -1) if norm == 'linf' else jnp.sqrt(jnp.sum(dg * dg, -1))
  dist = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), jnp.inf,
                   jnp.abs(df) / (dual + 1e-12))
  k = jnp.argmin(dist, axis=1)
  return df[batch, k], dg[batch, k]


def _fab_step(logits_fn, x0, y, target, carry, *, norm, targeted, alpha_max, eta, beta):
  """One FAB iteration: project x1 and x0 onto the linearised boundary, step, keep the closest."""
  x1, best, best_norm = carry
  project = _PROJECT[norm]
  flat = lambda v: v.reshape(v.shape[0], -1)
  df, w = _boundary(logits_fn, x1, y, target, targeted, norm)
  # The linearised boundary is {z : df + ⟨w, z − x1⟩ = 0}; c is each point's signed gap to it.
  d1 = project(flat(x1), w, df)
  d2 = project(flat(x0), w, df + jnp.sum(w * flat(x0 - x1), axis=1))
  a1 = jnp.maximum(_flat_norm(d1, norm), 1e-8)
  a2 = jnp.maximum(_flat_norm(d2, norm), 1e-8)
  alpha = bcast(jnp.clip(a1 / (a1 + a2), 0.0, alpha_max), x0)
  x1 = jnp.clip((x1 + eta * d1.reshape(x0.shape)) * (1.0 - alpha)
                + (x0 + eta * d2.reshape(x0.shape)) * alpha, 0.0, 1.0)

  is_adv = jnp.argmax(logits_fn(x1), axis=1) != y
  dist = _flat_norm(x1 - x0, norm)
  closer = is_adv & (dist < best_norm)
  best = jnp.where(bcast(closer, x0), x1, best)
  best_norm = jnp.where(closer, dist, best_norm)
  x1 = jnp.where(bcast(is_adv, x0), x0 + beta * (x1 - x0), x1)
  return x1, best, best_norm


def fab_runs(logits_fn, x, y, key, runs, *, norm, eps, n_iter=100, targeted=True,
             n_target_classes=9, n_restarts=1, alpha_max=0.1, eta=1.05, beta=0.9):
  """FAB runs `runs` (a sequence of ints) one after another, each on the points still robust.

  Run j is restart j % n_restarts (all but the first start at a random point of the ε/2-ball,
  from `fold_in(key, j)`); targeted, it aims at the class ranked j // n_restarts + 2 by the
  clean logits. A point is broken by the first run whose closest adversarial lies inside ε.
  Returns x_adv (the clean point where no run broke it).
  """
  norm = canonical_norm(norm)
  projections.check_norm(norm)
  if n_target_classes < 1 or n_restarts < 1 or n_iter < 1:
    raise ValueError(f'n_target_classes, n_restarts and n_iter must be positive; got '
                     f'{n_target_classes}, {n_restarts}, {n_iter}.')
  logits_fn = as_jit_arg(logits_fn)
  eps = jnp.asarray(eps, jnp.float32)
  statics = dict(norm=norm, targeted=targeted, alpha_max=float(alpha_max), eta=float(eta),
                 beta=float(beta))
  per_call = steps_per_call(x, n_iter)
  ranked, robust = _clean(logits_fn, x, y)
  x_adv = x
  for j in np.asarray(runs, np.int32).reshape(-1):
    if not bool(jnp.any(robust)):
      break
    target = _target(ranked, jnp.asarray(j // n_restarts + 2, jnp.int32))
    carry = _start(jax.random.fold_in(key, j), x, eps, bool(j % n_restarts), norm=norm)
    for start in range(0, n_iter, per_call):
      carry = _fab_steps(logits_fn, x, y, target, carry, n=min(per_call, n_iter - start),
                         **statics)
    robust, x_adv = _keep_first(robust, x_adv, carry[1], carry[2], eps, target, y,
                                targeted=targeted)
  return jnp.asarray(x_adv)


@jax.jit
def _clean(logits_fn, x, y):
  clean_logits = logits_fn(x)
  return jnp.argsort(clean_logits, axis=1), jnp.argmax(clean_logits, axis=1) == y


@jax.jit
def _target(ranked, rank):
  return jnp.take(ranked, ranked.shape[1] - rank, axis=1)


@functools.partial(jax.jit, static_argnames=('random', 'norm'))
def _start(key, x, eps, random, *, norm):
  x = x.astype(jnp.float32)
  x1 = _random_start(key, x, norm=norm, radius=0.5 * eps) if random else x
  return x1, x, jnp.full((x.shape[0],), jnp.inf, jnp.float32)


@functools.partial(jax.jit, static_argnames=('n', 'norm', 'targeted', 'alpha_max', 'eta',
                                             'beta'))
def _fab_steps(logits_fn, x, y, target, carry, *, n, **statics):
  x0 = x.astype(jnp.float32)
  body = lambda _, c: _fab_step(logits_fn, x0, y, target, c, **statics)
  return run_steps(body, 0, n, carry)


@functools.partial(jax.jit, static_argnames=('targeted',))
def _keep_first(robust, x_adv, best, best_norm, eps, target, y, *, targeted):
  broken = robust & (best_norm <= eps)
  if targeted:
    broken &= target != y
  return robust & ~broken, jnp.where(bcast(broken, best), best, x_adv)


def fab_targeted(logits_fn, x, y, *, norm, eps, n_iter=100, n_target_classes=9, n_restarts=1,
                 seed=0, alpha_max=0.1, eta=1.05, beta=0.9):
  """FAB-T as in AutoAttack 'standard'. Returns x_adv of x's shape.

  For each point: the closest adversarial found by the first (target, restart) run that found
  one inside the ε-ball, or the clean point if none did (also for points misclassified already).

  Args:
    logits_fn: x (NHWC float32 in [0, 1]) -> logits; examples must not interact. A
      `jax.tree_util.Partial(apply_fn, variables)` keeps the weights out of the compiled program.
    x, y: clean images and integer labels.
    norm: 'linf' or 'l2'.
    eps: radius of the threat model (also sets the random-restart radius ε/2).
    n_iter: FAB iterations per run.
    n_target_classes: targets are the classes ranked 2 … n_target_classes + 1 by clean logits
      (capped at num_classes − 1).
    n_restarts: runs per target; all but the first start at a random point.
    seed: seeds the random starts.
    alpha_max, eta, beta: the reference's step parameters (see module docstring).
  """
  num_classes = jax.eval_shape(as_jit_arg(logits_fn), jax.ShapeDtypeStruct(
      x.shape, jnp.float32)).shape[1]
  n_targets = min(n_target_classes, num_classes - 1)
  return fab_runs(logits_fn, x, y, jax.random.key(seed), np.arange(n_targets * n_restarts),
                  norm=norm, eps=eps, n_iter=n_iter, targeted=True,
                  n_target_classes=n_target_classes, n_restarts=n_restarts,
                  alpha_max=alpha_max, eta=eta, beta=beta)


def fab(logits_fn, x, y, *, norm, eps, n_iter=100, n_restarts=5, seed=0, alpha_max=0.1,
        eta=1.05, beta=0.9):
  """Untargeted FAB (AutoAttack 'plus'): each step aims at the closest linearised boundary."""
  return fab_runs(logits_fn, x, y, jax.random.key(seed), np.arange(n_restarts), norm=norm,
                  eps=eps, n_iter=n_iter, targeted=False, n_restarts=n_restarts,
                  alpha_max=alpha_max, eta=eta, beta=beta)
