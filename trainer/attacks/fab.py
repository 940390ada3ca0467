"""FAB-T: the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), L∞ and L2.

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

Everything is batched with static shapes so the attack jit-compiles: instead of gathering the
points still robust (as the reference does), every (target, restart) run computes on the whole
batch and keeps the result only for those points; the runs stop once no point is left.
`logits_fn` must treat examples independently (inference mode), as the per-example gradient is
taken as the gradient of the batch sum. The attack is jit-compiled; pass the model as a
`jax.tree_util.Partial` so that its weights are arguments of the compiled program:

    x_adv = fab_targeted(jax.tree_util.Partial(model.apply, variables), x, y, norm='linf',
                         eps=8/255)
"""
import functools

import jax
import jax.numpy as jnp

from trainer.attacks import projections
from trainer.attacks.apgd import as_jit_arg


def _bcast(v, like):
  return v.reshape((-1,) + (1,) * (like.ndim - 1))


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
  if norm == 'linf':
    t = jax.random.uniform(key, x0.shape, x0.dtype, -1.0, 1.0)
  else:
    t = jax.random.normal(key, x0.shape, x0.dtype)
  t = t / _bcast(jnp.maximum(_flat_norm(t, norm), 1e-12), t)
  return jnp.clip(x0 + radius * t, 0.0, 1.0)


def _single_run(logits_fn, x1, x0, y, target, *, norm, n_iter, alpha_max, eta, beta):
  """One FAB run towards `target`; returns (closest adversarial found, its norm or +inf)."""
  batch = jnp.arange(x0.shape[0])
  project = _PROJECT[norm]
  flat = lambda v: v.reshape(v.shape[0], -1)

  def boundary_gap(z):
    logits = logits_fn(z).astype(jnp.float32)
    diff = logits[batch, target] - logits[batch, y]
    return jnp.sum(diff), diff

  gap_and_grad = jax.grad(boundary_gap, has_aux=True)

  def step(_, carry):
    x1, best, best_norm = carry
    w, df = gap_and_grad(x1)
    w = flat(w)
    # The linearised boundary is {z : df + ⟨w, z − x1⟩ = 0}; c is each point's signed gap to it.
    d1 = project(flat(x1), w, df)
    d2 = project(flat(x0), w, df + jnp.sum(w * flat(x0 - x1), axis=1))
    a1 = jnp.maximum(_flat_norm(d1, norm), 1e-8)
    a2 = jnp.maximum(_flat_norm(d2, norm), 1e-8)
    alpha = _bcast(jnp.clip(a1 / (a1 + a2), 0.0, alpha_max), x0)
    x1 = jnp.clip((x1 + eta * d1.reshape(x0.shape)) * (1.0 - alpha)
                  + (x0 + eta * d2.reshape(x0.shape)) * alpha, 0.0, 1.0)

    is_adv = jnp.argmax(logits_fn(x1), axis=1) != y
    dist = _flat_norm(x1 - x0, norm)
    closer = is_adv & (dist < best_norm)
    best = jnp.where(_bcast(closer, x0), x1, best)
    best_norm = jnp.where(closer, dist, best_norm)
    x1 = jnp.where(_bcast(is_adv, x0), x0 + beta * (x1 - x0), x1)
    return x1, best, best_norm

  init = (x1, x0, jnp.full((x0.shape[0],), jnp.inf, jnp.float32))
  _, best, best_norm = jax.lax.fori_loop(0, n_iter, step, init)
  return best, best_norm


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
  projections.check_norm(norm)
  if n_target_classes < 1 or n_restarts < 1 or n_iter < 1:
    raise ValueError(f'n_target_classes, n_restarts and n_iter must be positive; got '
                     f'{n_target_classes}, {n_restarts}, {n_iter}.')
  return _fab_targeted(as_jit_arg(logits_fn), x, y, jax.random.key(seed),
                       jnp.asarray(eps, jnp.float32), norm=norm, n_iter=n_iter,
                       n_target_classes=n_target_classes, n_restarts=n_restarts,
                       alpha_max=float(alpha_max), eta=float(eta), beta=float(beta))


@functools.partial(jax.jit, static_argnames=(
    'norm', 'n_iter', 'n_target_classes', 'n_restarts', 'alpha_max', 'eta', 'beta'))
def _fab_targeted(logits_fn, x, y, key, eps, *, norm, n_iter, n_target_classes, n_restarts,
                  alpha_max, eta, beta):
  x = x.astype(jnp.float32)
  clean_logits = logits_fn(x)
  num_classes = clean_logits.shape[1]
  n_targets = min(n_target_classes, num_classes - 1)
  ranked = jnp.argsort(clean_logits, axis=1)       # ascending: column −1 is the top class
  robust = jnp.argmax(clean_logits, axis=1) == y

  def attack(carry, j):
    robust, x_adv = carry
    rank, restart = j // n_restarts + 2, j % n_restarts
    target = jnp.take(ranked, num_classes - rank, axis=1)
    start = jax.lax.cond(
        restart > 0,
        lambda: _random_start(jax.random.fold_in(key, j), x, norm=norm, radius=0.5 * eps),
        lambda: x)
    best, best_norm = _single_run(logits_fn, start, x, y, target, norm=norm, n_iter=n_iter,
                                  alpha_max=alpha_max, eta=eta, beta=beta)
    broken = robust & (best_norm <= eps) & (target != y)
    return robust & ~broken, jnp.where(_bcast(broken, x), best, x_adv)

  def unfinished(carry):
    j, robust, _ = carry
    return (j < n_targets * n_restarts) & jnp.any(robust)

  def next_run(carry):
    # Stops early once every point is broken.
    j, robust, x_adv = carry
    return (j + 1,) + attack((robust, x_adv), j)

  _, _, x_adv = jax.lax.while_loop(unfinished, next_run, (0, robust, x))
  return x_adv
