"""EDM training on scikit-learn's 8x8 digits: a tiny class-conditional DDPM++, minutes on a CPU.

    python -m trainer.train_generator --config=configs/edm_digits.py --workdir=DIR

Karras et al.'s objective (EDM preconditioning, ln sigma ~ N(-1.2, 1.2^2), lambda(sigma)
weighting) on the digits, with the size and length of configs/ddpm_digits.py (batch 128, 3,000
steps) so the two generators can be compared at the same budget. EDM's schedules are in images:
its learning-rate ramp is shortened to the DDPM preset's warm-up (200 steps of 128 = 25.6 kimg),
and its EMA half-life (500 kimg) is, in a run this short, set by its ramp-up: 5% of the images
seen, about 150 steps at the end. The grid and `trainer.sample` use Heun's sampler.
"""
import ml_collections

from configs import ddpm_digits


def get_config():
  c = ddpm_digits.get_config()
  c.objective = 'edm'            # trainer/diffusion/edm.py
  del c.unet, c.diffusion
  for key in ('warmup_steps', 'grad_clip', 'ema_decay'):
    del c.optim[key]

  # --- The DDPM++ network (models/diffusion/edm/network.py SongUNetConfig fields) -----------------
  c.network = ml_collections.ConfigDict()
  c.network.model_channels = 32
  c.network.channel_mult = (1, 2)          # 8x8 and 4x4
  c.network.channel_mult_emb = 4
  c.network.num_blocks = 1
  c.network.attn_resolutions = (4,)
  c.network.dropout = 0.1
  c.network.label_dropout = 0.0
  c.network.augment_dim = 0                # EDM's augmentation pipe is not built
  c.network.class_conditional = True
  c.network.dtype = 'float32'              # compute dtype; 'bfloat16' on accelerators

  # --- Preconditioning and loss (models/diffusion/edm/precond.py, edm_loss.py) -----------------
  c.precond = ml_collections.ConfigDict()
  c.precond.kind = 'edm'
  c.precond.sigma_data = 0.5
  c.loss = ml_collections.ConfigDict()
  c.loss.p_mean = -1.2
  c.loss.p_std = 1.2

  # --- EDM's Adam and EMA, in images (thousands) -----------------------------------------------
  c.optim.lr = 1e-3
  c.optim.lr_rampup_kimg = 25.6            # EDM: 10,000 (of 200,000 kimg)
  c.optim.ema_halflife_kimg = 500.0
  c.optim.ema_rampup_ratio = 0.05          # 0: no ramp-up

  c.eval.grid_sampler = 'heun'             # heun (2N - 1 evaluations) | euler (N)
  c.eval.grid_sampler_steps = 10
  return c
