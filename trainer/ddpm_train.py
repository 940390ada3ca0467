"""DDPM training: python -m trainer.ddpm_train --config=configs/ddpm_digits.py --workdir=DIR

Ho et al. (2020), Alg. 1: x_0 from the training split (without the held-out images), t uniform in
{0..T-1}, eps ~ N(0, I), minimise ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2
(their L_simple). Adam with linear warm-up to a constant rate and gradient-norm clipping, dropout
in the UNet, an EMA of the weights (trainer/ema.py's warm-started decay). The sharded jit step over
the mesh of trainer/sharding.py; Orbax checkpoints (interval + preemption) with exact resume: the
batch of step s and its noise are functions of (seed, s) alone, so no data-iterator state is needed.

The workdir holds config.json, checkpoints/<s>/state, TensorBoard events, and at the end
generator/, the EMA weights as a generator checkpoint (models/diffusion/checkpoint.py).
"""
import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers
from orbax.checkpoint import checkpoint_managers as policies

from data import real
from models.diffusion import checkpoint as generator_checkpoint
from models.diffusion import schedule as schedule_lib
from models.diffusion import unet as unet_lib
from trainer import checkpointing
from trainer import ema as ema_lib
from trainer import sharding

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def unet_config(config: ml_collections.ConfigDict) -> unet_lib.UNetConfig:
  """The UNet of `config.unet` for the dataset's image shape (and classes, if conditional)."""
  info = real.info(config.dataset.name)
  fields = {k: v for k, v in config.unet.items() if k not in ('class_conditional', 'dtype')}
  h, w, c = info.shape
  if h != w:
    raise ValueError(f'config.dataset.name={config.dataset.name!r}: images {info.shape} are not '
                     'square.')
  return unet_lib.UNetConfig(
      sample_size=h, in_channels=c, out_channels=c,
      num_class_embeds=info.num_classes if config.unet.class_conditional else None, **fields)


def noise_schedule(config: ml_collections.ConfigDict) -> schedule_lib.Schedule:
  d = config.diffusion
  return schedule_lib.Schedule(
      betas=schedule_lib.betas_for(d.beta_schedule, d.num_timesteps, d.beta_start, d.beta_end))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Clip the global gradient norm, then Adam at a rate warmed up linearly from 0."""
  lr = optax.linear_schedule(0.0, config.optim.lr, max(1, config.optim.warmup_steps))
  return optax.chain(optax.clip_by_global_norm(config.optim.grad_clip), optax.adam(lr))


def create_state(model: unet_lib.UNet, tx: optax.GradientTransformation, seed: int) -> dict:
  params = unet_lib.init_params(model, jax.random.key(seed))
  return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params),
          'ema': params}


def to_model_scale(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1], the scale the model and samplers work in."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def diffusion_loss(params, model, alphas_cumprod, batch, rng, *, flip: bool):
  """Ho et al.'s L_simple on one batch: mean squared error of the predicted noise."""
  x0 = to_model_scale(batch['image'])
  k_flip, k_t, k_eps, k_drop = jax.random.split(rng, 4)
  if flip:
    mirror = jax.random.bernoulli(k_flip, 0.5, (x0.shape[0], 1, 1, 1))
    x0 = jnp.where(mirror, x0[:, :, ::-1], x0)
  t = jax.random.randint(k_t, (x0.shape[0],), 0, alphas_cumprod.shape[0])
  eps = jax.random.normal(k_eps, x0.shape)
  a = alphas_cumprod[t][:, None, None, None]
  x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps
  y = batch.get('label') if model.cfg.num_class_embeds is not None else None
  pred = model.apply({'params': params}, x_t, t, y, train=True, rngs={'dropout': k_drop})
  return jnp.mean((pred - eps) ** 2)


def make_train_step(config, model, tx, alphas_cumprod):
  """(state, batch) -> (state, metrics); the step's randomness is fold_in(seed key, step)."""
  alphas_cumprod = jnp.asarray(alphas_cumprod, jnp.float32)
  base_key = jax.random.key(config.seed + 1)

  def train_step(state, batch):
    rng = jax.random.fold_in(base_key, state['step'])
    loss, grads = jax.value_and_grad(diffusion_loss)(
        state['params'], model, alphas_cumprod, batch, rng, flip=config.dataset.flip)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    ema = ema_lib.update(state['ema'], params, state['step'], config.ema.decay)
    new = {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state, 'ema': ema}
    return new, {'loss': loss, 'grad_norm': optax.global_norm(grads)}
  return train_step


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
  """The global batch of step `step` (0-based): epoch-wise permutations, dropping the remainder."""
  per_epoch = num_examples // batch_size
  if per_epoch == 0:
    raise ValueError(f'config.train.batch_size={batch_size} exceeds the {num_examples} training '
                     'images.')
  epoch, pos = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return order[pos * batch_size:(pos + 1) * batch_size]


def _local_batch(data, indices):
  """This process's rows of the global batch."""
  n = len(indices) // jax.process_count()
  mine = indices[jax.process_index() * n:(jax.process_index() + 1) * n]
  return {'image': data['image'][mine], 'label': data['label'][mine]}


def _checkpoint_manager(workdir, config):
  policy = policies.AnySavePolicy([policies.FixedIntervalPolicy(config.checkpoint.every_steps),
                                   policies.PreemptionCheckpointingPolicy()])
  return ocp.CheckpointManager(
      os.path.join(workdir, 'checkpoints'), item_names=('state',),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=config.checkpoint.keep, save_decision_policy=policy,
          enable_async_checkpointing=True, cleanup_tmp_directories=True))


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`; returns {'losses': [(step, mean loss)], 'generator',
  'step', 'preempted'}. The generator checkpoint is written once the last step is reached."""
  workdir = os.fspath(workdir)
  mesh = sharding.make_mesh(config)
  train_data, _, _ = real.training_splits(config)
  unet, sched = unet_config(config), noise_schedule(config)
  model = unet_lib.UNet(unet, dtype=_DTYPES[config.unet.dtype])
  tx = make_optimizer(config)
  checkpointing.check_same_run(workdir, config)
  checkpointing.save_config(workdir, config)
  manager = _checkpoint_manager(workdir, config)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)

  # --- State: fresh in its sharded layout, or restored ------------------------------------------
  create = functools.partial(create_state, model, tx, config.seed)
  abstract = jax.eval_shape(create)
  state_sh = sharding.state_shardings(mesh, abstract)
  latest = manager.latest_step()
  if latest is None:
    state = jax.jit(create, out_shardings=state_sh)()
  else:
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
    state = manager.restore(latest, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))['state']
    logging.info('Resumed from step %d in %s.', latest, workdir)
  step_fn = jax.jit(make_train_step(config, model, tx, sched.alphas_cumprod),
                    in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                    out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)

  # --- Loop ---------------------------------------------------------------------------------------
  losses, window, preempted = [], [], False
  first, total = int(state['step']), config.train.num_steps
  start = time.time()
  for s in range(first, total):
    idx = batch_indices(config.seed, s, len(train_data['label']), config.train.batch_size)
    batch = sharding.global_batch(mesh, _local_batch(train_data, idx))
    state, metrics = step_fn(state, batch)
    window.append(metrics['loss'])
    done = s + 1
    if done % config.train.log_every_steps == 0 or done == total:
      mean = float(np.mean(jax.device_get(window)))
      losses.append((done, mean))
      writer.write_scalars(done, {'train/loss': mean,
                                  'train/grad_norm': float(metrics['grad_norm']),
                                  'train/steps_per_sec': len(window) / (time.time() - start)})
      window, start = [], time.time()
    manager.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                 force=done == total)
    if manager.reached_preemption(done):
      preempted = True
      break
  manager.wait_until_finished()
  manager.close()
  writer.flush()

  # --- The EMA generator --------------------------------------------------------------------------
  generator = os.path.join(workdir, 'generator')
  if not preempted and int(state['step']) == total and jax.process_index() == 0:
    generator_checkpoint.save(generator, unet, sched, jax.device_get(state['ema']),
                              name=f'ddpm-{config.dataset.name}', source=f'trainer.ddpm_train '
                              f'step {total}')
  return {'losses': losses, 'generator': generator, 'step': int(state['step']),
          'preempted': preempted}


def main(argv):
  from absl import app  # pylint: disable=g-import-not-at-top
  from trainer import cli  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if config.distributed:
    jax.distributed.initialize()
  workdir = cli.absolute(_WORKDIR.value)
  cli.start(workdir)
  result = train(config, workdir)
  last = result['losses'][-1] if result['losses'] else (result['step'], float('nan'))
  print(f'step {result["step"]}: loss {last[1]:.4f}; generator: {result["generator"]}'
        + (' (preempted: rerun the same command to resume)' if result['preempted'] else ''),
        flush=True)


if __name__ == '__main__':
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from trainer import cli  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/ddpm_*.py).',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and the generator.')
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main)
