"""Everything that changes during training, as one pytree that Orbax saves and restores whole."""
from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  ema_batch_stats: Any
  rng: jax.Array  # raw uint32 key data, so checkpoints stay plain arrays

  def ema_variables(self):
    return {'params': self.ema_params, 'batch_stats': self.ema_batch_stats}


def create(model, tx, image_shape, seed):
  """Initial state; jit this with out_shardings to build it directly in its sharded layout."""
  init_key, rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init(init_key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), ema_params=params, ema_batch_stats=batch_stats,
                    rng=rng)
