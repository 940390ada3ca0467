"""Clean and PGD robust accuracy of the EMA weights: the test-set curve and checkpoint selection.

Selection follows the paper: PGD-40 on the margin loss against the first `holdout` training
images, which are never trained on. The attack is built once from the config
(`trainer.attacks.compositions.selection_attack`: `eval.selection_attack` 'pgd' is the same
`pgd-40` stage the evaluation command runs; 'reference' is DeepMind's Adam PGD-40).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from trainer import sharding
from trainer.attacks.pgd import pgd_attack


def make_eval_batch(model, attack=None, *, norm=None, eps=None, steps=None):
  """Returns jit-able `(variables, x, y, mask, key) -> (#clean correct, #robust)` for one batch.

  `attack(logits_fn, x, y, key) -> x_adv`, built once; without one, PGD-`steps` on the margin
  for `norm`, `eps`.
  """
  if attack is None:
    attack = pgd_attack(norm=norm, eps=eps, steps=steps, loss='margin')

  def eval_batch(variables, x, y, mask, key):
    logits_fn = functools.partial(model.apply, variables, train=False)
    clean = jnp.argmax(logits_fn(x), -1) == y
    x_adv = attack(logits_fn, x, y, key)
    robust = clean & (jnp.argmax(logits_fn(x_adv), -1) == y)
    return jnp.sum(clean & mask), jnp.sum(robust & mask)
  return eval_batch


def measure(eval_batch, variables, images, labels, *, batch_size, mesh, seed=0):
  """Accuracy over uint8 `images`; the last batch is padded (and masked) to keep one shape."""
  total_clean = total_robust = 0
  for start in range(0, len(images), batch_size):
    x = images[start:start + batch_size].astype(np.float32) / 255.0
    y = labels[start:start + batch_size].astype(np.int32)
    n = len(y)
    pad = batch_size - n
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros((pad,), y.dtype)])
    mask = np.arange(batch_size) < n
    x, y, mask = sharding.replicated_batch(mesh, [x, y, mask])
    key = jax.random.fold_in(jax.random.PRNGKey(seed), start)
    clean, robust = eval_batch(variables, x, y, mask, key)
    total_clean += int(clean)
    total_robust += int(robust)
  return {'clean': total_clean / len(images), 'robust': total_robust / len(images)}
