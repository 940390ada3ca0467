"""EDM's CIFAR-10 class-conditional setting (Karras et al. 2022; NVlabs/edm `train.py
--cond=1 --arch=ddpmpp`, its defaults): the generator of today's best robust CIFAR-10 models
(Wang et al. 2023 sample it with Heun, 18-20 steps).

    python -m trainer.train_generator --config=configs/edm_cifar10.py --workdir=DIR

DDPM++ of 128 x [2, 2, 2] channels, 4 blocks per resolution, attention at 16x16, dropout 0.13
(55.7M parameters with the augmentation labels, 55.7M without); EDM preconditioning and loss;
Adam at 1e-3 ramped over 10,000 kimg, batch 512, 200 Mimg (390,625 steps); EMA half-life 500
kimg with ramp-up 0.05; float32 as the reference's default (`--fp16=False`). Not built here: the
non-leaking augmentation pipe (`--augment=0.12`; the network's 9 augmentation labels are left
out), which the reference credits with part of its FID on CIFAR-10 (docs/fidelity.md).
"""
from configs import edm_digits


def get_config():
  c = edm_digits.get_config()
  c.dataset.name = 'cifar10'
  c.dataset.holdout = 1024
  c.dataset.flip = False                   # the reference's --xflip=False (its augment pipe flips)
  c.network.model_channels = 128
  c.network.channel_mult = (2, 2, 2)
  c.network.num_blocks = 4
  c.network.attn_resolutions = (16,)
  c.network.dropout = 0.13
  c.train.batch_size = 512
  c.train.num_steps = 390_625              # 200 Mimg
  c.train.log_every_steps = 1000
  c.optim.lr_rampup_kimg = 10_000.0
  c.eval.every_steps = 20_000
  c.eval.grid_samples = 100
  c.eval.grid_sampler_steps = 18           # 35 evaluations
  c.checkpoint.every_steps = 10_000
  return c
