"""The DDPM objective of the generator task (Ho et al. 2020, Alg. 1; `config.objective='ddpm'`).

t uniform in {0..T-1}, eps ~ N(0, I), minimise ||eps - eps_theta(sqrt(abar_t) x_0 +
sqrt(1 - abar_t) eps, t)||^2 (their L_simple), with the UNet of `config.unet` and the noise
schedule of `config.diffusion`. Adam with linear warm-up to a constant rate and gradient-norm
clipping (`optim.*`), dropout in the UNet, and the EMA of trainer/harness/ema.py (warm-started
decay min(`optim.ema_decay`, (1+t)/(10+t))). The grid uses the project's samplers
(`eval.grid_sampler`: ddpm | ddim | dpm++2m); the generator is a models/diffusion/checkpoint.py
directory.
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax

from data import real
from models import dtypes
from models.diffusion import checkpoint as generator_checkpoint
from models.diffusion import samplers
from models.diffusion import schedule as schedule_lib
from models.diffusion import unet as unet_lib
from trainer.diffusion import objective
from trainer.harness import ema as ema_lib


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


class DDPMObjective(objective.Objective):
  name = 'ddpm'

  def __init__(self, config):
    self.config = config
    self.unet, self.schedule = unet_config(config), noise_schedule(config)
    self.model = unet_lib.UNet(self.unet, dtype=dtypes.get(config.unet.dtype, 'unet.dtype'))
    self.num_classes, self.image_shape = self.unet.num_class_embeds, self.unet.image_shape
    self.alphas_cumprod = jnp.asarray(self.schedule.alphas_cumprod, jnp.float32)

  def init_params(self, key):
    return unet_lib.init_params(self.model, key)

  def optimizer(self):
    """Clip the global gradient norm, then Adam at a rate warmed up linearly from 0."""
    o = self.config.optim
    lr = optax.linear_schedule(0.0, o.lr, max(1, o.warmup_steps))
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), optax.adam(lr))

  def loss(self, params, x0, y, key):
    """Ho et al.'s L_simple on one batch: mean squared error of the predicted noise."""
    k_t, k_eps, k_drop = jax.random.split(key, 3)
    t = jax.random.randint(k_t, (x0.shape[0],), 0, self.alphas_cumprod.shape[0])
    eps = jax.random.normal(k_eps, x0.shape)
    x_t = schedule_lib.add_noise(self.alphas_cumprod, x0, t, eps)
    pred = self.model.apply({'params': params}, x_t, t, y, train=True, rngs={'dropout': k_drop})
    return jnp.mean((pred - eps) ** 2)

  def ema(self, ema, params, step):
    return ema_lib.update(ema, params, step, self.config.optim.ema_decay)

  def grid_sampler(self, params):
    e, eps_fn = self.config.eval, unet_lib.make_eps_fn(self.model)
    return lambda keys, shape, y: samplers.sample(
        eps_fn, params, self.alphas_cumprod, keys, shape, sampler=e.grid_sampler,
        steps=e.grid_sampler_steps, y=y)

  def check_grid(self, config):
    e = config.eval
    if not e.every_steps:
      return
    if e.grid_sampler not in samplers.SAMPLERS:
      raise ValueError(f'config.eval.grid_sampler={e.grid_sampler!r}; use one of '
                       f'{samplers.SAMPLERS}.')
    try:   # the sampler's own timestep rule says which step counts it can take
      if e.grid_sampler == 'dpm++2m':
        samplers.dpm_timesteps(self.schedule.alphas_cumprod, e.grid_sampler_steps)
      else:
        samplers.timesteps(self.schedule.alphas_cumprod.size, e.grid_sampler_steps)
    except ValueError as err:
      raise ValueError(f'config.eval.grid_sampler_steps={e.grid_sampler_steps} '
                       f'({e.grid_sampler}): {err}') from err

  def save(self, path, params, source):
    generator_checkpoint.save(path, self.unet, self.schedule, params,
                              name=f'ddpm-{self.config.dataset.name}', source=source)
