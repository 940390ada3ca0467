"""The EDM objective of the generator task (Karras et al. 2022; `config.objective='edm'`).

The DDPM++ network of `config.network` (models/diffusion/edm/network.py) behind EDM's
preconditioning (`config.precond`, models/diffusion/edm/precond.py); EDM's loss (ln sigma ~
N(`loss.p_mean`, `loss.p_std`^2), lambda(sigma) weighting, `precond.sigma_data`;
models/diffusion/edm/loss.py) with dropout; Adam with EDM's learning-rate ramp over
`optim.lr_rampup_kimg` thousand images and its gradient clean-up; the EMA with a half-life of
`optim.ema_halflife_kimg` thousand images ramped up by `optim.ema_rampup_ratio`. The grid uses EDM's
sampler (`eval.grid_sampler`: heun | euler, `eval.grid_sampler_steps` noise levels); the generator
is a models/diffusion/edm/checkpoint.py directory. Not built: EDM's non-leaking augmentation pipe
(the network takes its labels; `network.augment_dim` stays 0), and VP preconditioning's own loss
(a VP network is imported, not trained here).
"""
import jax.numpy as jnp

from data import real
from models import dtypes
from models.diffusion.edm import checkpoint as edm_checkpoint
from models.diffusion.edm import ema as edm_ema
from models.diffusion.edm import loss as edm_loss
from models.diffusion.edm import optimizer as edm_optimizer
from models.diffusion.edm import precond as edm_precond
from models.diffusion.edm import sampler as edm_sampler
from models.diffusion.edm import network as song_unet
from trainer.diffusion import objective

_NOT_NETWORK = ('class_conditional', 'dtype')


def network_config(config) -> song_unet.SongUNetConfig:
  """The DDPM++ of `config.network` for the dataset's images (and classes, if conditional)."""
  info = real.info(config.dataset)
  h, w, c = info.shape
  if h != w:
    raise ValueError(f'config.dataset.name={config.dataset.name!r}: images {info.shape} are not '
                     'square.')
  fields = {k: v for k, v in config.network.items() if k not in _NOT_NETWORK}
  return song_unet.SongUNetConfig(
      img_resolution=h, in_channels=c, out_channels=c,
      label_dim=info.num_classes if config.network.class_conditional else 0, **fields)


def preconditioning(config) -> edm_precond.Precond:
  if config.precond.kind != 'edm':
    raise ValueError(f'config.precond.kind={config.precond.kind!r}: training builds EDM\'s own '
                     "preconditioning ('edm'); a VP network can be imported, not trained here.")
  return edm_precond.Precond(kind='edm', sigma_data=config.precond.sigma_data)


class EDMObjective(objective.Objective):
  name = 'edm'

  def __init__(self, config):
    self.config = config
    self.network, self.precond = network_config(config), preconditioning(config)
    self.model = song_unet.SongUNet(self.network,
                                    dtype=dtypes.get(config.network.dtype, 'network.dtype'))
    self.denoiser = edm_precond.make_denoiser(self.model, self.precond)
    self.num_classes = self.network.label_dim or None
    self.image_shape = self.network.image_shape

  def init_params(self, key):
    return song_unet.init_params(self.model, key)

  def optimizer(self):
    o = self.config.optim
    return edm_optimizer.adam(self.config.train.batch_size, o.lr, o.lr_rampup_kimg)

  def loss(self, params, x0, y, key):
    l = self.config.loss
    return jnp.mean(edm_loss.edm_loss(self.denoiser, params, x0, key, y=y, p_mean=l.p_mean,
                                      p_std=l.p_std, sigma_data=self.precond.sigma_data))

  def ema(self, ema, params, step):
    o, batch = self.config.optim, self.config.train.batch_size
    beta = edm_ema.ema_beta(step * batch, batch, o.ema_halflife_kimg, o.ema_rampup_ratio or None)
    return edm_ema.ema_update(ema, params, beta)

  def grid_sampler(self, params):
    e = self.config.eval
    return lambda keys, shape, y: edm_sampler.sample(
        self.denoiser, params, keys, shape, num_steps=e.grid_sampler_steps,
        solver=e.grid_sampler, y=y)

  def check_grid(self, config):
    e = config.eval
    if e.every_steps and e.grid_sampler not in edm_sampler.SOLVERS:
      raise ValueError(f'config.eval.grid_sampler={e.grid_sampler!r}; an EDM generator samples '
                       f'with one of {edm_sampler.SOLVERS}.')
    if e.every_steps and e.grid_sampler_steps < 1:
      raise ValueError(f'config.eval.grid_sampler_steps={e.grid_sampler_steps} must be >= 1.')

  def save(self, path, params, source):
    edm_checkpoint.save(path, self.network, self.precond, params,
                        name=f'edm-{self.config.dataset.name}', source=source)
