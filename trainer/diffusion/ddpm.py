"""DDPM training as a harness task (Ho et al. 2020, Alg. 1).

x_0 from the training split (without the held-out images), t uniform in {0..T-1}, eps ~ N(0, I),
minimise ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2 (their L_simple). Adam
with linear warm-up to a constant rate and gradient-norm clipping, dropout in the UNet, an EMA of
the weights (trainer/harness/ema.py's warm-started decay, `optim.ema_decay`). The batch of step s
and its noise are functions of (seed, s) alone, so a restart needs no input-iterator state and
resumes bitwise. Every `eval.every_steps` a sample grid goes to TensorBoard (trainer/diffusion/
grid.py); at the end the EMA weights become WORKDIR/generator (models/diffusion/checkpoint.py).
"""
import itertools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from data import real
from models import dtypes
from models.diffusion import checkpoint as generator_checkpoint
from models.diffusion import schedule as schedule_lib
from models.diffusion import unet as unet_lib
from trainer.diffusion import grid
from trainer.harness import ema as ema_lib
from trainer.harness import loop

# The rate is constant after warm-up, the EMA ignores the total, batches are a function of the
# step and the log and grid periods touch no state: a run may be lengthened or shortened and
# resume (its generator is written at the new last step), or change how often it reports.
RESUMABLE = ('train.num_steps', 'train.log_every', 'eval.every', 'eval.grid_')


@flax.struct.dataclass
class DiffusionState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema: Any


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
    rng = jax.random.fold_in(base_key, state.step)
    loss, grads = jax.value_and_grad(diffusion_loss)(
        state.params, model, alphas_cumprod, batch, rng, flip=config.dataset.flip)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = ema_lib.update(state.ema, params, state.step, config.optim.ema_decay)
    new = DiffusionState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema)
    return new, {'loss': loss, 'grad_norm': optax.global_norm(grads)}
  return train_step


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
  """The global batch of step `step` (0-based): epoch-wise permutations, dropping the remainder.

  A set smaller than the batch (a data-scarce subset, dataset.train_fraction) fills each batch
  with whole permutations, k = ceil(batch / set) of them, cut to the batch: every image at least
  k - 1 times, at most k.
  """
  if num_examples < 1:
    raise ValueError('no training images')
  per_epoch = num_examples // batch_size
  if per_epoch == 0:
    k = -(-batch_size // num_examples)
    return np.concatenate([np.random.default_rng([seed, step * k + j]).permutation(num_examples)
                           for j in range(k)])[:batch_size]
  epoch, pos = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return order[pos * batch_size:(pos + 1) * batch_size]


class DDPMTraining(loop.Task):
  """The state is a DiffusionState; no best checkpoint (the generator is the last EMA)."""
  resumable = RESUMABLE

  def __init__(self, config):
    self.config = config
    self.train_data, _, _ = real.training_splits(config)
    self.unet, self.schedule = unet_config(config), noise_schedule(config)
    self.model = unet_lib.UNet(self.unet, dtype=dtypes.get(config.unet.dtype, 'unet.dtype'))
    grid.check_config(config, self.schedule.alphas_cumprod, self.unet.num_class_embeds)
    self.tx = make_optimizer(config)
    self.total_steps = config.train.num_steps
    self.train_step = make_train_step(config, self.model, self.tx, self.schedule.alphas_cumprod)

  def init_state(self):
    params = unet_lib.init_params(self.model, jax.random.key(self.config.seed))
    return DiffusionState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), ema=params)

  def data(self, first_step):
    n, rows = len(self.train_data['label']), self.config.train.batch_size // jax.process_count()
    for s in itertools.count(first_step):
      indices = batch_indices(self.config.seed, s, n, self.config.train.batch_size)
      mine = indices[jax.process_index() * rows:(jax.process_index() + 1) * rows]
      yield {'image': self.train_data['image'][mine], 'label': self.train_data['label'][mine]}

  def setup(self, run):
    self.writer = run.writer
    if self.config.eval.every_steps:
      self.sample_grid = grid.make_sampler(self.config, self.model, self.schedule.alphas_cumprod,
                                           run.mesh, run.state_shardings.ema)
    self.generator = str(epath.Path(run.workdir, 'generator'))

  def evaluate(self, step, state):
    if self.config.eval.every_steps:
      images = grid.tile(self.sample_grid(state.ema), self.unet.num_class_embeds)
      if jax.process_index() == 0:
        self.writer.write_images(step, {'samples': images[None]})
    return {}

  def finish(self, state, results):
    if jax.process_index() == 0:
      generator_checkpoint.save(
          self.generator, self.unet, self.schedule, jax.device_get(state.ema),
          name=f'ddpm-{self.config.dataset.name}',
          source=f'trainer.ddpm_train step {self.total_steps}')
    return {**results, 'generator': self.generator}


def train(config: ml_collections.ConfigDict, workdir: str, *, progress_name: str | None = None):
  """Trains (or resumes) in `workdir`; returns {'step', 'finished', 'history', 'generator' (once
  finished)}. `progress_name` names the console progress bar (None: none)."""
  return loop.run(DDPMTraining(config), config, workdir, progress_name=progress_name)
