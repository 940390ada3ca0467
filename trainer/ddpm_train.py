"""DDPM training: python -m trainer.ddpm_train --config=configs/ddpm_digits.py --workdir=DIR

Ho et al. (2020), Alg. 1: x_0 from the training split (without the held-out images), t uniform in
{0..T-1}, eps ~ N(0, I), minimise ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2
(their L_simple). Adam with linear warm-up to a constant rate and gradient-norm clipping, dropout
in the UNet, an EMA of the weights (trainer/ema.py's warm-started decay). The sharded jit step over
the mesh of trainer/sharding.py; Orbax checkpoints (interval + preemption) with exact resume: the
batch of step s and its noise are functions of (seed, s) alone, so no data-iterator state is needed.

Every `train.eval_every_steps` (and at the last step) a grid of `train.grid_samples` EMA samples
goes to TensorBoard as the image 'samples': the project's sampler (`train.grid_sampler`, e.g.
DPM-Solver++ with `train.grid_sampler_steps` evaluations) from the same noise at every step, so
grids of one run are comparable, one row per class for a class-conditional UNet. The noise is its
own key, never the training key, and the state is only read, so resume stays bitwise exact.

The workdir holds config.json, checkpoints/<s>/state, TensorBoard events, and at the end
generator/, the EMA weights as a generator checkpoint (models/diffusion/checkpoint.py).
"""
import functools
import math
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
from data.generation import metrics as grid_lib
from models.diffusion import checkpoint as generator_checkpoint
from models.diffusion import samplers
from models.diffusion import schedule as schedule_lib
from models.diffusion import unet as unet_lib
from trainer import checkpointing
from trainer import ema as ema_lib
from trainer import sharding
from trainer import train as train_lib

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# The rate is constant after warm-up, the EMA ignores the total, batches are a function of the
# step and the log and grid periods touch no state: a run may be lengthened or shortened and
# resume (its generator is written at the new last step), or change how often it reports.
RESUMABLE = ('train.num_steps', 'train.log_every', 'train.eval_every', 'train.grid_')
# Folded into key(seed) for the grid's noise: a stream of its own, apart from init (key(seed))
# and the train steps (key(seed + 1)).
_GRID_STREAM = 0x67726964


def unet_config(config: ml_collections.ConfigDict) -> unet_lib.UNetConfig:
  """The UNet of `config.unet` for the dataset's image shape (and classes, if conditional)."""
  info = real.info(config.dataset)
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


# ------------------------------------------------------------------------------------------------
# The sample grid
# ------------------------------------------------------------------------------------------------

def check_grid_config(config: ml_collections.ConfigDict, num_classes: int | None) -> None:
  """Refuses grid settings that cannot make a grid, by key, before any training."""
  t = config.train
  if t.eval_every_steps < 0:
    raise ValueError(f'config.train.eval_every_steps={t.eval_every_steps}: use 0 for no grids.')
  if t.eval_every_steps == 0:
    return
  if t.grid_samples < 1:
    raise ValueError(f'config.train.grid_samples={t.grid_samples} must be >= 1 (or set '
                     'train.eval_every_steps=0 for no grids).')
  if num_classes and t.grid_samples % num_classes:
    raise ValueError(f'config.train.grid_samples={t.grid_samples} must be a multiple of the '
                     f'{num_classes} classes: the grid has one row per class.')
  if t.grid_sampler not in samplers.SAMPLERS:
    raise ValueError(f'config.train.grid_sampler={t.grid_sampler!r}; use one of '
                     f'{samplers.SAMPLERS}.')
  a = noise_schedule(config).alphas_cumprod
  try:   # the sampler's own timestep rule says which step counts it can take
    if t.grid_sampler == 'dpm++2m':
      samplers.dpm_timesteps(a, t.grid_sampler_steps)
    else:
      samplers.timesteps(a.size, t.grid_sampler_steps)
  except ValueError as e:
    raise ValueError(f'config.train.grid_sampler_steps={t.grid_sampler_steps} '
                     f'({t.grid_sampler}): {e}') from e


def grid_labels(n: int, num_classes: int | None) -> np.ndarray | None:
  """Class of grid sample i: n // C consecutive samples per class (one grid row each)."""
  return None if not num_classes else np.arange(n) // (n // num_classes)


def make_grid_sampler(config, model, alphas_cumprod, mesh, ema_shardings):
  """`sample(ema) -> (n, H, W, C) uint8` from fixed noise, one jit over the whole mesh.

  Every process takes part (the EMA may be sharded over hosts); the samples come back replicated.
  Sample i draws from fold_in(grid key, i), so padding n to the device count changes nothing.
  """
  n, num_classes = config.train.grid_samples, model.cfg.num_class_embeds
  padded = math.ceil(n / mesh.size) * mesh.size
  labels = grid_labels(n, num_classes)
  labels = None if labels is None else np.concatenate([labels, np.zeros(padded - n, np.int64)])
  key = jax.random.fold_in(jax.random.key(config.seed), _GRID_STREAM)
  eps_fn, shape = unet_lib.make_eps_fn(model), (padded,) + model.cfg.image_shape

  def sample(ema):
    ids = jax.lax.with_sharding_constraint(jnp.arange(padded), sharding.batch_sharding(mesh))
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
    y = None if labels is None else jnp.asarray(labels, jnp.int32)
    x = samplers.sample(eps_fn, ema, alphas_cumprod, keys, shape, sampler=config.train.grid_sampler,
                        steps=config.train.grid_sampler_steps, y=y)
    return samplers.to_uint8(x)

  jitted = jax.jit(sample, in_shardings=(ema_shardings,), out_shardings=sharding.replicated(mesh))
  return lambda ema: np.asarray(jitted(ema).addressable_data(0))[:n]


def sample_grid(images: np.ndarray, num_classes: int | None) -> np.ndarray:
  """(H', W', 3) uint8: a row per class (conditional) or a near-square tiling; tiles >= 32 px."""
  n, h = images.shape[:2]
  scale = max(1, 32 // h)
  if num_classes:
    return grid_lib.sample_grid(images, grid_labels(n, num_classes), num_classes,
                                n // num_classes, scale=scale)
  cols = math.ceil(math.sqrt(n))
  return grid_lib.sample_grid(images, np.arange(n) // cols, math.ceil(n / cols), cols,
                              scale=scale)


def _write_grid(writer, step, sample_for_grid, ema, num_classes) -> float:
  """Samples and writes the grid of `step` (process 0 writes); returns the seconds it took."""
  jax.block_until_ready(ema)   # the train steps still queued are not the grid's time
  tic = time.time()
  grid = sample_grid(sample_for_grid(ema), num_classes)
  if jax.process_index() == 0:
    writer.write_images(step, {'samples': grid[None]})
  return time.time() - tic


# ------------------------------------------------------------------------------------------------
# Data, checkpoints, the loop
# ------------------------------------------------------------------------------------------------

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


def train(config: ml_collections.ConfigDict, workdir: str, *,
          progress_name: str | None = None) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`; returns {'losses': [(step, mean loss)], 'generator',
  'step', 'preempted'}. The generator checkpoint is written once the last step is reached.
  `progress_name` names the console progress bar (None: no bar)."""
  workdir = os.fspath(workdir)
  mesh = sharding.make_mesh(config)
  train_data, _, _ = real.training_splits(config)
  unet, sched = unet_config(config), noise_schedule(config)
  model = unet_lib.UNet(unet, dtype=_DTYPES[config.unet.dtype])
  check_grid_config(config, unet.num_class_embeds)
  tx = make_optimizer(config)
  checkpointing.check_same_run(workdir, config, resumable=RESUMABLE)
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
  grid_every = config.train.eval_every_steps
  if grid_every:
    sample_for_grid = make_grid_sampler(config, model, sched.alphas_cumprod, mesh,
                                        state_sh['ema'])

  # --- Loop ---------------------------------------------------------------------------------------
  losses, window, preempted = [], [], False
  first, total = int(state['step']), config.train.num_steps
  start, gridding = time.time(), 0.0   # steps/sec counts the train steps, not the grids
  bar = train_lib.progress_bar(progress_name, first, total)
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
                                  'train/steps_per_sec':
                                      len(window) / (time.time() - start - gridding)})
      window, start, gridding = [], time.time(), 0.0
      if bar:
        bar.set_postfix(loss=f'{mean:.4f}', refresh=False)
    if grid_every and (done % grid_every == 0 or done == total):
      gridding += _write_grid(writer, done, sample_for_grid, state['ema'], unet.num_class_embeds)
    manager.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                 force=done == total)
    if bar:
      bar.update(1)
    if manager.reached_preemption(done):
      preempted = True
      break
  if bar:
    bar.close()
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
  result = train(config, workdir, progress_name='ddpm')
  loss = f'loss {result["losses"][-1][1]:.4f}' if result['losses'] else 'no step left to train'
  print(f'step {result["step"]}: {loss}; generator: {result["generator"]}'
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
