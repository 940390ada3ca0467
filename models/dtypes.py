"""Compute dtypes by the names configs use; parameters always stay float32."""
import jax.numpy as jnp

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def get(name: str, key: str = 'dtype'):
  """The dtype called `name`; a clear error naming the config key otherwise."""
  if name not in DTYPES:
    raise ValueError(f'{key}={name!r}: use one of {sorted(DTYPES)}.')
  return DTYPES[name]
