"""The evaluation cascades: AutoAttack "standard" and the paper's AA+MT, or any list of stages.

    result = autoattack(logits_fn, x, y, norm='linf', eps=8/255, version='aa+mt')
    result.stage_accuracy   # {'apgd-ce': ..., 'apgd-dlr': ..., 'mt': ...}

As in fra31/auto-attack, each stage attacks only the points still robust, starting from their
clean image, and a point broken by a stage keeps that stage's adversarial example (the per-point
worst case). A stage (`trainer.attacks.stages`) is split into passes (one per restart or
target) and the robust set is recomputed between passes, so restarts too run only on points
still robust. A candidate counts as broken only if logits_fn, evaluated again on it,
misclassifies it AND it lies in the ε-ball ∩ [0, 1] up to float32 rounding; an attack returning
infeasible points is reported.

A cascade can be resumed: `on_pass(state)` receives a `CascadeState` after every finished pass
(the per-point outcome so far and where the cascade stands), and `autoattack(..., resume=state)`
goes on from it. Every pass is a deterministic function of the seed, the stage and pass indices
and the points still robust, so a resumed cascade gives the per-point result of an uninterrupted
one; a caller persists each state (e.g. in the workdir) to survive a kill.

Points go through in batches of at most batch_size, each padded to a size from a short fixed
ladder (to bound recompilation) and split over all devices of the mesh along the batch axis, by
the device layer (`trainer.sharding.map_batches` and `shard_rows`). Runs in a single process.
"""
import collections
import math
import time
from typing import NamedTuple

from absl import logging
import tqdm
import jax
import jax.numpy as jnp
import numpy as np

from trainer import sharding
from trainer.attacks import losses as losses_lib
from trainer.attacks import projections
from trainer.attacks.common import as_jit_arg
from trainer.attacks.common import canonical_norm
from trainer.attacks.stages import resolve_stages


class AutoAttackResult(NamedTuple):
  robust: np.ndarray          # (n,) bool: correctly classified and no stage broke it
  stage_accuracy: dict        # stage name -> robust accuracy after that stage (ordered)
  clean_accuracy: float
  x_adv: np.ndarray           # adversarial examples; the clean image where nothing succeeded
  broken_by: np.ndarray       # (n,) str: 'clean' (misclassified unattacked), a stage, or ''
  stage_seconds: dict         # stage name -> wall-clock seconds

  @property
  def robust_accuracy(self):
    return float(np.mean(self.robust))


class CascadeState(NamedTuple):
  """Where a cascade stands after a finished pass; what `on_pass` gets and `resume` takes."""
  stage: int                  # index of the stage to run next (len(stages): all done)
  next_pass: int              # passes of that stage already finished
  robust: np.ndarray
  x_adv: np.ndarray
  broken_by: np.ndarray
  stage_accuracy: dict        # the finished stages'
  stage_seconds: dict


@jax.jit
def _predict(logits_fn, x):
  return jnp.argmax(logits_fn(x), axis=1)


def _predict_all(logits_fn, x, mesh, batch_size):
  return sharding.map_batches(lambda xb: _predict(logits_fn, xb), mesh, batch_size, [x],
                              ladder=True)


# ---------------------------------------------------------------------------------------------
# Checks.
# ---------------------------------------------------------------------------------------------

def _gradient_check(logits_fn, x, y, loss):
  """Per point: whether it is correctly classified, and the L1 norm of its input gradient."""
  def total(z):
    logits = logits_fn(z).astype(jnp.float32)
    return jnp.sum(losses_lib.get_loss(loss)(logits, y)), logits
  grad, logits = jax.grad(total, has_aux=True)(x)
  norms = jnp.sum(jnp.abs(grad.reshape(grad.shape[0], -1)), axis=1)
  return jnp.argmax(logits, axis=1) == y, norms

_gradient_check = jax.jit(_gradient_check, static_argnames=('loss',))


def zero_gradient_share(logits_fn, x, y, *, loss='ce', batch_size=500, mesh=None):
  """Share of the correctly classified points whose input gradient of `loss` is exactly zero.

  Zero gradients at the clean image stall the gradient-based attacks (the reference warns about
  them for DLR), so a non-zero share hints at gradient masking. Misclassified points are left
  out: they are never attacked, and DLR is constant (zero gradient) when y ranks third.
  """
  x, y = np.asarray(x, np.float32), np.asarray(y).astype(np.int32)
  mesh = sharding.make_mesh() if mesh is None else mesh
  logits_fn = jax.device_put(as_jit_arg(logits_fn), sharding.replicated(mesh))
  correct, norms = sharding.map_batches(
      lambda xb, yb: _gradient_check(logits_fn, xb, yb, loss=loss), mesh, batch_size, [x, y],
      ladder=True)
  zero = norms == 0
  return float(np.mean(zero[correct])) if correct.any() else 0.0


def norm_tolerance(norm, eps, dim):
  """Slack for float32: x + δ rounds each pixel by at most half an ulp of 1 (2⁻²⁴)."""
  rounding = 2.0**-24 * (1.0 if norm == 'linf' else math.sqrt(dim))
  return 1e-5 * eps + 2.0 * rounding


def feasible(x_adv, x, *, norm, eps):
  """Per point: finite, inside [0, 1] and inside the ε-ball up to float32 rounding."""
  flat_adv = x_adv.reshape(x_adv.shape[0], -1).astype(np.float64)
  delta = flat_adv - x.reshape(x.shape[0], -1)
  size = np.abs(delta).max(1) if norm == 'linf' else np.sqrt(np.sum(delta**2, axis=1))
  in_box = (flat_adv >= 0.0).all(1) & (flat_adv <= 1.0).all(1)
  return (np.isfinite(flat_adv).all(1) & in_box &
          (size <= eps + norm_tolerance(norm, eps, delta.shape[1])))


def _check_inputs(x, y, norm, eps):
  projections.check_norm(norm)
  if x.ndim < 2 or y.shape != x.shape[:1] or not x.shape[0]:
    raise ValueError(f'Expected x of shape (n, ...) and y of shape (n,) with n > 0; got x '
                     f'{x.shape}, y {y.shape}.')
  if x.size and (np.nanmin(x) < 0.0 or np.nanmax(x) > 1.0 or not np.isfinite(x).all()):
    raise ValueError(f'x must be finite and in [0, 1]; got values in [{np.nanmin(x)}, '
                     f'{np.nanmax(x)}].')
  if not eps > 0:
    raise ValueError(f'eps must be positive, got {eps}.')


def _check_black_box(broken_by, stage_accuracy):
  """Square breaking points that the gradient-based stages before it missed hints at masking."""
  share = float(np.mean(broken_by == 'square')) if broken_by.size else 0.0
  if 'square' in stage_accuracy and len(stage_accuracy) > 1 and share > 0.002:
    logging.warning('Square broke %.2f%% of the points that the gradient-based attacks missed: '
                    'the gradients may be masked and the evaluation unreliable.', 100 * share)


def _stage_name(stages, index):
  """The stage's name; a repeated name gets '#index' (e.g. 'apgd-ce#2')."""
  name = stages[index].name
  return name if name not in [s.name for s in stages[:index]] else f'{name}#{index}'


def _check_resume(state, robust, x_adv, broken_by, n_stages):
  """The resumed per-point arrays, after checking they fit this cascade and these points."""
  if not 0 <= state.stage <= n_stages or state.next_pass < 0:
    raise ValueError(f'resume: stage {state.stage}, pass {state.next_pass} is not a point of '
                     f'this cascade of {n_stages} stages.')
  for name, mine, theirs in (('robust', robust, state.robust), ('x_adv', x_adv, state.x_adv),
                             ('broken_by', broken_by, state.broken_by)):
    if np.shape(theirs) != mine.shape:
      raise ValueError(f'resume: {name} has shape {np.shape(theirs)}, expected {mine.shape} '
                       '(another set of points?).')
  clean = broken_by == 'clean'
  if not np.array_equal(np.asarray(state.broken_by) == 'clean', clean):
    raise ValueError('resume: the saved state disagrees with the model on which points are '
                     'misclassified before any attack (another model or other points?).')
  return (np.array(state.robust, bool), np.array(state.x_adv, np.float32),
          np.array(state.broken_by, '<U32'))


def _stage_seed(seed, index):
  return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------
# The cascade.
# ---------------------------------------------------------------------------------------------

def _run_pass(stage, name, p, logits_fn, x, y, robust, x_adv, broken_by, *, norm, eps, seed,
              mesh, batch_size):
  """Attacks the points still robust with pass p of `stage`; updates the outputs in place."""
  todo = np.flatnonzero(robust)
  n_chunks = -(-len(todo) // batch_size)
  for b, start in enumerate(range(0, len(todo), batch_size)):
    chunk = todo[start:start + batch_size]
    size = sharding.padded_size(len(chunk), batch_size, mesh, ladder=True)
    candidate = stage.attack(logits_fn, *sharding.shard_rows(mesh, [x[chunk], y[chunk]], size),
                             norm=norm, eps=eps, seed=seed, pass_index=p)
    candidate = np.asarray(candidate, np.float32)[:len(chunk)]
    judged = sharding.shard_rows(mesh, [candidate], size)[0]  # the host copy, padded alike
    wrong = np.asarray(_predict(logits_fn, judged))[:len(chunk)] != y[chunk]
    ok = feasible(candidate, x[chunk], norm=norm, eps=eps)
    if np.any(wrong & ~ok):
      logging.warning('%s returned %d misclassified points outside the threat model; they are '
                      'not counted as broken.', name, np.sum(wrong & ~ok))
    hit = chunk[wrong & ok]
    robust[hit] = False
    x_adv[hit] = candidate[wrong & ok]
    broken_by[hit] = name
    if n_chunks > 1:
      logging.info('%s pass %d batch %d/%d: broke %d of %d', name, p + 1, b + 1, n_chunks,
                   len(hit), len(chunk))
  return len(todo)


def _final_check(x_adv, x, robust, broken_by, *, norm, eps):
  delta = (x_adv.astype(np.float64) - x).reshape(x.shape[0], -1)
  size = np.abs(delta).max(1) if norm == 'linf' else np.sqrt(np.sum(delta**2, axis=1))
  logging.info('max %s perturbation %.6f (eps %.6f), nan %d, x_adv in [%.4f, %.4f]', norm,
               size.max(initial=0.0), eps, np.isnan(x_adv).sum(), x_adv.min(initial=0.0),
               x_adv.max(initial=1.0))
  ok = feasible(x_adv, x, norm=norm, eps=eps)
  if not ok.all():
    raise AssertionError(f'{np.sum(~ok)} adversarial examples lie outside the threat model.')
  if np.any(robust & (broken_by != '')):
    raise AssertionError('A point is marked both robust and broken.')


def autoattack(logits_fn, x, y, *, norm, eps, version='standard', seed=0, batch_size=500,
               mesh=None, progress=False, on_pass=None, resume=None):
  """Runs a cascade of attacks and returns an AutoAttackResult.

  Args:
    logits_fn: x (float32 in [0, 1]) -> logits. Pass `jax.tree_util.Partial(apply, variables)`
      so that the weights are jit arguments rather than constants; they are replicated over the
      mesh.
    x, y: clean inputs (n, ...) in [0, 1] and integer labels (n,), host arrays.
    norm: 'linf' or 'l2' (or fra31/auto-attack's 'Linf', 'L2').
    version: 'standard', 'plus', 'rand' (fra31/auto-attack's), 'aa+mt' (the paper's), or a list
      of stage names, (name, options) pairs or Stages.
    seed: each stage gets its own seed derived from this one.
    batch_size: points per attack call, split over the devices.
    mesh: defaults to `trainer.sharding.make_mesh()` (all devices); any mesh works, the batch
      is split over all of its axes.
    progress: a console progress bar per stage (over its passes), as trainer.evaluate shows.
    on_pass: called with a `CascadeState` (copies) after every finished pass.
    resume: a `CascadeState` of an earlier run of the same cascade on the same points, model,
      seed and batch size: the finished passes are not run again.
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y).astype(np.int32)
  norm = canonical_norm(norm)
  _check_inputs(x, y, norm, eps)
  eps = float(eps)
  mesh = sharding.make_mesh() if mesh is None else mesh
  logits_fn = jax.device_put(as_jit_arg(logits_fn), sharding.replicated(mesh))
  num_classes = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((1,) + x.shape[1:],
                                                               jnp.float32)).shape[-1]
  stages = resolve_stages(version, num_classes)

  robust = _predict_all(logits_fn, x, mesh, batch_size) == y
  clean_accuracy = float(np.mean(robust))
  broken_by = np.where(robust, '', 'clean').astype('<U32')
  x_adv = x.copy()
  logging.info('clean accuracy %.2f%% on %d points; stages: %s', 100 * clean_accuracy, len(y),
               ', '.join(s.name for s in stages))

  stage_accuracy, stage_seconds = collections.OrderedDict(), collections.OrderedDict()
  first_stage, first_pass = 0, 0
  if resume is not None:
    robust, x_adv, broken_by = _check_resume(resume, robust, x_adv, broken_by, len(stages))
    stage_accuracy.update(resume.stage_accuracy)
    stage_seconds.update(resume.stage_seconds)
    first_stage, first_pass = resume.stage, resume.next_pass
  report = lambda stage, p: on_pass and on_pass(CascadeState(
      stage, p, robust.copy(), x_adv.copy(), broken_by.copy(), dict(stage_accuracy),
      dict(stage_seconds)))
  start = time.time()
  for index, stage in enumerate(stages):
    if index < first_stage:
      continue
    name = _stage_name(stages, index)
    stage_start = time.time()
    bar = tqdm.tqdm(total=stage.n_passes, desc=name, unit='pass', dynamic_ncols=True,
                    mininterval=1.0, disable=not progress or jax.process_index() > 0)
    for p in range(first_pass if index == first_stage else 0, stage.n_passes):
      if not robust.any():
        break
      attacked = _run_pass(stage, name, p, logits_fn, x, y, robust, x_adv, broken_by, norm=norm,
                           eps=eps, seed=_stage_seed(seed, index), mesh=mesh,
                           batch_size=batch_size)
      logging.info('%s pass %d/%d: attacked %d, %d robust left (%.2f%%), %.1f s', name, p + 1,
                   stage.n_passes, attacked, robust.sum(), 100 * np.mean(robust),
                   time.time() - start)
      bar.set_postfix(robust=f'{100 * np.mean(robust):.1f}%', refresh=False)
      bar.update(1)
      if p + 1 < stage.n_passes:
        report(index, p + 1)
    bar.close()
    stage_accuracy[name] = float(np.mean(robust))
    stage_seconds[name] = time.time() - stage_start + stage_seconds.get(name, 0.0)
    report(index + 1, 0)
    logging.info('robust accuracy after %s: %.2f%% (%.1f s)', name, 100 * stage_accuracy[name],
                 stage_seconds[name])

  _final_check(x_adv, x, robust, broken_by, norm=norm, eps=eps)
  _check_black_box(broken_by, stage_accuracy)
  return AutoAttackResult(robust, stage_accuracy, clean_accuracy, x_adv, broken_by,
                          stage_seconds)
