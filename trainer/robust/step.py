"""The train step: one adversarial objective, one SGD update, one EMA update."""
import functools

import jax
import jax.numpy as jnp
import optax

from data import images
from trainer.harness import ema
from trainer.robust import objectives


def make_train_step(config, model, tx, num_classes):
  """Returns `train_step(state, batch) -> (state, metrics)`, pure and ready for jax.jit."""
  objective = objectives.build(config, num_classes)

  def train_step(state, batch):
    batch = dict(batch, image=images.to_float(batch['image']))  # uint8 up to here
    key = jax.random.fold_in(state.rng, state.step)

    def forward(params, x):  # training-mode BatchNorm: batch statistics, updated copy returned
      logits, mutated = model.apply({'params': params, 'batch_stats': state.batch_stats}, x,
                                    train=True, mutable=['batch_stats'])
      return logits, mutated['batch_stats']

    loss_fn = functools.partial(objective, forward, batch=batch, key=key)
    (loss, (batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    tau = config.optim.ema_decay
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
        ema_params=ema.update(state.ema_params, params, state.step, tau),
        ema_batch_stats=ema.update(state.ema_batch_stats, batch_stats, state.step, tau))
    return new_state, _metrics(loss, aux, grads, batch)

  return train_step


def _metrics(loss, aux, grads, batch):
  metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads)}
  for name in ('loss_natural', 'loss_robust'):
    if name in aux:
      metrics[name] = aux[name]
  for name, key in (('accuracy_clean', 'logits_clean'), ('accuracy_adv', 'logits_adv')):
    if key in aux:
      metrics[name] = jnp.mean(jnp.argmax(aux[key], -1) == batch['label'])
  metrics['generated_fraction'] = jnp.mean(batch['is_generated'].astype(jnp.float32))
  return metrics
