"""Ho et al.'s CIFAR-10 DDPM setting (their App. B), for CIFAR-10, CIFAR-100 and SVHN.

    python -m trainer.train_generator --config=configs/ddpm_cifar10.py --workdir=DIR
    (--config.dataset.name=cifar100 or svhn for the paper's other two datasets; for SVHN
    also --config.dataset.flip=False)

The UNet of google/ddpm-cifar10-32 (35.7M parameters, models/diffusion/unet.py) with dropout
0.1; Adam at 2e-4 after 5000 warm-up steps, gradient norm clipped to 1, batch 128, 800K steps,
EMA 0.9999, random horizontal flips; Ho et al.'s initialisation (`unet.init = 'ddpm'`:
Xavier-uniform, each residual branch's last conv and the output conv near zero). Unconditional,
as Ho et al.; the paper pseudo-labels the samples with a non-robust classifier.
"""
from configs import ddpm_digits


def get_config():
  c = ddpm_digits.get_config()
  c.dataset.name = 'cifar10'
  c.dataset.holdout = 1024
  c.dataset.flip = True
  c.unet.block_out_channels = (128, 256, 256, 256)
  c.unet.down_block_types = ('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D')
  c.unet.up_block_types = ('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D')
  c.unet.layers_per_block = 2
  c.unet.norm_num_groups = 32
  c.unet.downsample_padding = 0
  c.unet.dropout = 0.1
  c.unet.class_conditional = False
  c.unet.dtype = 'bfloat16'
  c.unet.init = 'ddpm'
  c.train.batch_size = 128
  c.train.num_steps = 800_000
  c.train.log_every_steps = 1000
  c.eval.every_steps = 5000   # 5 log periods; 100 samples of 20 DPM-Solver++ steps each
  c.optim.lr = 2e-4
  c.optim.warmup_steps = 5000
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.9999
  c.checkpoint.every_steps = 10_000
  return c
