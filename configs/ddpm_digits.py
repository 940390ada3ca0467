"""DDPM training on scikit-learn's 8x8 digits: a tiny class-conditional UNet, minutes on a CPU.

    python -m trainer.train_generator --config=configs/ddpm_digits.py --workdir=DIR

Ho et al.'s objective and schedule (eps-prediction, uniform t, linear beta 1e-4..0.02 over 1000
steps); Adam with linear warm-up and gradient-norm clipping; EMA of the weights. The EMA
generator lands in DIR/generator (models/diffusion/checkpoint.py), ready for `trainer.sample`;
TensorBoard shows a grid of its samples every `eval.every_steps`. Keys the classifier configs
also have (optim.ema_decay, eval.every_steps, train.log_every_steps, checkpoint.*, mesh.*) mean
the same thing here.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.objective = 'ddpm'           # trainer/diffusion/ddpm.py
  c.seed = 0
  c.distributed = False

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'digits'
  c.dataset.data_dir = ''
  c.dataset.holdout = 128        # the classifier's held-out head: never trained on here either
  c.dataset.test_size = 0
  c.dataset.train_fraction = 1.0   # a class-balanced subset (configs/base.py)
  c.dataset.flip = False         # a mirrored digit is a different (or no) digit

  # --- The UNet (models/diffusion/unet.py UNetConfig fields) -------------------------------------
  c.unet = ml_collections.ConfigDict()
  c.unet.block_out_channels = (32, 64)
  c.unet.down_block_types = ('DownBlock2D', 'AttnDownBlock2D')
  c.unet.up_block_types = ('AttnUpBlock2D', 'UpBlock2D')
  c.unet.layers_per_block = 1
  c.unet.norm_num_groups = 8
  c.unet.downsample_padding = 1
  c.unet.dropout = 0.1           # Ho et al.'s CIFAR-10 value
  c.unet.class_conditional = True  # num_class_embeds = the dataset's classes
  c.unet.dtype = 'float32'       # compute dtype; 'bfloat16' on accelerators
  # 'lecun_normal' (flax's default) or 'ddpm' (Ho et al.'s: Xavier-uniform, the last conv of each
  # residual branch, the attention output and the output conv near zero; models/diffusion/unet.py)
  c.unet.init = 'lecun_normal'

  # --- Noise schedule (models/diffusion/schedule.py) ---------------------------------------------
  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_schedule = 'linear'
  c.diffusion.beta_start = 1e-4
  c.diffusion.beta_end = 0.02

  # --- Optimisation (Ho et al.: Adam 2e-4, 5000 warm-up steps, clip 1.0, EMA 0.9999) -----------
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.num_steps = 3000
  c.train.log_every_steps = 100
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 200
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.995      # shorter than Ho et al.'s 0.9999 for a run of 3000 steps

  # --- A TensorBoard grid of EMA samples ('samples') every eval period and at the end ------------
  # (every_steps 0 = none): the same noise every time, one row per class when class-conditional
  # (grid_samples must then be a multiple of the classes).
  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 500         # 5 log periods
  c.eval.grid_samples = 100        # 10 x 10: ten per class for digits
  c.eval.grid_sampler = 'dpm++2m'  # models/diffusion/samplers.py SAMPLERS
  c.eval.grid_sampler_steps = 20

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 500
  c.checkpoint.keep = 2

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  return c
