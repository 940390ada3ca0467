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


def make_measure(model, attack, mesh, batch_size: int, seed: int = 0):
  """Returns `measure(variables, uint8 images, labels) -> {'clean', 'robust'}` accuracies.

  `attack(logits_fn, x, y, key) -> x_adv`, built once (compositions.selection_attack). Batches go
  through the device layer (`sharding.batched_apply`); batch b's attack key is
  fold_in(PRNGKey(seed), its first row's index), so results do not depend on the device count.
  """
  def per_example(variables, x, y, index):
    logits_fn = functools.partial(model.apply, variables, train=False)
    clean = jnp.argmax(logits_fn(x), -1) == y
    x_adv = attack(logits_fn, x, y, jax.random.fold_in(jax.random.PRNGKey(seed), index[0]))
    return clean, clean & (jnp.argmax(logits_fn(x_adv), -1) == y)
  apply = sharding.batched_apply(per_example, mesh, batch_size, with_params=True)

  def measure(variables, images, labels):
    clean, robust = apply(variables, images, np.asarray(labels, np.int32),
                          np.arange(len(labels), dtype=np.int32))
    return {'clean': float(np.mean(clean)), 'robust': float(np.mean(robust))}
  return measure
