"""Ho et al.'s DDPM UNet (2020) and Dhariwal & Nichol's ADM (2021), laid out as diffusers'
`UNet2DModel`.

The paper's CIFAR-10 generator is Ho et al.'s released checkpoint, published in the diffusers
format as `google/ddpm-cifar10-32`; `CIFAR10_DDPM` is that model's `config.json` (diffusers 0.0.4
format): block_out_channels (128, 256, 256, 256), layers_per_block 2, down blocks (DownBlock2D,
AttnDownBlock2D, DownBlock2D, DownBlock2D), up blocks (UpBlock2D, UpBlock2D, AttnUpBlock2D,
UpBlock2D) -- so self-attention at 16x16 only, plus the middle block's attention at 4x4 --
attention_head_dim null (one head, as Ho et al.), norm_num_groups 32, norm_eps 1e-6, act_fn silu,
flip_sin_to_cos false, freq_shift 1, downsample_padding 0 (pad right/bottom by one, then a stride-2
3x3 conv, as Ho et al.'s TF code), mid_block_scale_factor 1, time_embedding_type positional,
sample_size 32, in/out channels 3; no dropout key, so diffusers' default 0.0 (Ho et al. trained
with 0.1: a training config sets `dropout`). 35.7M parameters. The values were checked against
published copies of that config.json and diffusers' `UNet2DModel` source (unet_2d.py,
unet_2d_blocks.py, resnet.py, attention_processor.py, embeddings.py); tests compare the output
with diffusers' own model on random weights.

Parameter names follow diffusers' module names with list indices joined by '_'
(`down_blocks.1.attentions.0.to_q.weight` is `down_blocks_1/attentions_0/to_q/kernel`), so the
import from diffusers is a rename and a transpose (`models.interop.diffusers`).

ADM (openai/guided-diffusion's `UNetModel`, the paper's TinyImageNet and ImageNet generators) is
the same network with options diffusers' `UNet2DModel` also spells: scale-shift (adaptive
GroupNorm) time conditioning, `resnet_time_scale_shift='scale_shift'`; BigGAN-style residual
up/down sampling, `downsample_type='resnet'`, `upsample_type='resnet'` and the blocks
`ResnetDownsampleBlock2D` / `ResnetUpsampleBlock2D` where a level has no attention; heads of a
fixed width, `attention_head_dim`; a class embedding added to the time embedding,
`num_class_embeds`; and a learned variance, `out_channels = 2 x in_channels` (the network outputs
eps and v, Nichol & Dhariwal's interpolation between log beta_t and log beta~_t; the samplers
split them). `models.interop.guided_diffusion` maps guided-diffusion's own checkpoints
onto this layout; tests compare with diffusers' model on an ADM-shaped config and with
guided-diffusion's model on a fixture.

Initialisation (`init`, for generators trained here): 'lecun_normal' is flax's default
(truncated-normal kernels of variance 1 / fan_in, zero biases); 'ddpm' is Ho et al.'s
(diffusion_tf/nn.py `default_init`): Xavier-uniform kernels (variance_scaling 1.0, fan_avg,
uniform), zero biases, and scale 1e-10 -- near zero -- for the last conv of each residual branch
(`conv2`), the attention output projection (`to_out_0`) and the output conv, so every residual
block starts as the identity and the network outputs ~0. The class embedding, which Ho et al.'s
model lacks, keeps flax's (normal, std 1 / sqrt(embedding width)) in both.

Numerics: parameters are float32; `dtype` is the compute dtype (bfloat16 for speed). GroupNorm
statistics, the sinusoidal time embedding and the attention softmax stay in float32 (diffusers
upcasts the softmax too), and eps comes out in float32.
"""

import dataclasses
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.diffusion import config_json

DOWN_BLOCKS = ('DownBlock2D', 'AttnDownBlock2D', 'ResnetDownsampleBlock2D')
UP_BLOCKS = ('UpBlock2D', 'AttnUpBlock2D', 'ResnetUpsampleBlock2D')
TIME_SCALE_SHIFTS = ('default', 'scale_shift')
RESAMPLE_TYPES = ('conv', 'resnet')
INITS = ('lecun_normal', 'ddpm')
ACTIVATIONS = {
    'silu': nn.silu, 'swish': nn.silu, 'relu': nn.relu,
    'gelu': lambda x: nn.gelu(x, approximate=False),  # torch.nn.GELU() is the exact erf form
    'mish': lambda x: x * jnp.tanh(nn.softplus(x)),
}


@dataclasses.dataclass(frozen=True)
class UNetConfig(config_json.JsonConfig):
  """The architecture; field names and meanings are those of diffusers' `UNet2DModel`.

  The subset Ho et al.'s model and ADM need is supported (positional time embedding, the
  `UNetMidBlock2D`, conv or resnet down/upsampling, 'default' or 'scale_shift' time
  conditioning); `validate` names anything else. As in diffusers, `downsample_type` and
  `upsample_type` apply to the attention blocks (`DownBlock2D`/`UpBlock2D` always resample with
  a conv, the `Resnet*sampleBlock2D`s always with a resnet). `init` is ours (see the module
  docstring).
  """
  KIND = 'UNet'

  sample_size: int = 32
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 256, 256)
  down_block_types: tuple[str, ...] = (
      'DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D')
  up_block_types: tuple[str, ...] = ('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D')
  layers_per_block: int = 2
  attention_head_dim: Optional[int] = None  # None: one head over all channels
  norm_num_groups: int = 32
  norm_eps: float = 1e-6
  act_fn: str = 'silu'
  flip_sin_to_cos: bool = False
  freq_shift: float = 1
  downsample_padding: int = 0
  mid_block_scale_factor: float = 1.0
  center_input_sample: bool = False
  time_embedding_dim: Optional[int] = None  # None: 4 x block_out_channels[0]
  num_class_embeds: Optional[int] = None  # classes of a class-conditional model
  dropout: float = 0.0
  resnet_time_scale_shift: str = 'default'
  # GroupNorm groups of the middle block's attention; None: norm_num_groups with 'default' time
  # conditioning, and no norm at all with 'scale_shift' (diffusers' UNetMidBlock2D: an ADM-shaped
  # diffusers config must set it to 32 for ADM's normalised middle attention).
  attn_norm_num_groups: Optional[int] = None
  downsample_type: str = 'conv'
  upsample_type: str = 'conv'
  init: str = 'lecun_normal'

  def __post_init__(self):
    for name in ('block_out_channels', 'down_block_types', 'up_block_types'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    self.validate()

  def validate(self) -> None:
    """A clear error for a configuration this implementation does not build."""
    n = len(self.block_out_channels)
    if len(self.down_block_types) != n or len(self.up_block_types) != n:
      raise ValueError(
          f'UNet config: block_out_channels {self.block_out_channels}, down_block_types '
          f'{self.down_block_types} and up_block_types {self.up_block_types} must have the same '
          'length.')
    for name, allowed in (('down_block_types', DOWN_BLOCKS), ('up_block_types', UP_BLOCKS)):
      bad = [b for b in getattr(self, name) if b not in allowed]
      if bad:
        raise ValueError(f'UNet config: {name} {bad} not supported; use {allowed}.')
    for name, allowed in (('resnet_time_scale_shift', TIME_SCALE_SHIFTS),
                          ('downsample_type', RESAMPLE_TYPES), ('upsample_type', RESAMPLE_TYPES),
                          ('init', INITS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f'UNet config: {name} {getattr(self, name)!r} not in {allowed}.')
    if self.act_fn.lower() not in ACTIVATIONS:
      raise ValueError(f'UNet config: act_fn {self.act_fn!r} not in {sorted(ACTIVATIONS)}.')
    if self.downsample_padding not in (0, 1):
      raise ValueError(f'UNet config: downsample_padding must be 0 or 1, got '
                       f'{self.downsample_padding}.')
    if self.sample_size % 2 ** (n - 1):
      raise ValueError(f'UNet config: sample_size {self.sample_size} must be a multiple of '
                       f'2 ** (levels - 1) = {2 ** (n - 1)}.')
    attention = {c for c, d, u in zip(self.block_out_channels, self.down_block_types,
                                      self.up_block_types[::-1]) if 'Attn' in d + u}
    for c in self.block_out_channels:
      if c % self.norm_num_groups:
        raise ValueError(f'UNet config: block_out_channels {c} is not divisible by '
                         f'norm_num_groups {self.norm_num_groups}.')
      attends = c in attention or c == self.block_out_channels[-1]   # the middle block attends
      if self.attention_head_dim and attends and c % self.attention_head_dim:
        raise ValueError(f'UNet config: block_out_channels {c} is not divisible by '
                         f'attention_head_dim {self.attention_head_dim}.')
    if self.attn_norm_num_groups and self.block_out_channels[-1] % self.attn_norm_num_groups:
      raise ValueError(f'UNet config: block_out_channels[-1] {self.block_out_channels[-1]} is not '
                       f'divisible by attn_norm_num_groups {self.attn_norm_num_groups}.')
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f'UNet config: dropout must be in [0, 1), got {self.dropout}.')

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of x_t and eps."""
    return (self.sample_size, self.sample_size, self.in_channels)

  @property
  def learned_variance(self) -> bool:
    """Whether the output is [eps, v] (2 x in_channels), v the log-variance interpolation."""
    return self.out_channels == 2 * self.in_channels

# google/ddpm-cifar10-32 (Ho et al.'s CIFAR-10 model): the dataclass defaults are its config.
CIFAR10_DDPM = UNetConfig()


def digits_config(num_classes: Optional[int] = None, dropout: float = 0.0) -> UNetConfig:
  """A tiny UNet for 8x8 greyscale digits: two levels (8x8, 4x4 with attention), 32/64 channels."""
  return UNetConfig(
      sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64),
      down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
      up_block_types=('AttnUpBlock2D', 'UpBlock2D'), layers_per_block=1, norm_num_groups=8,
      downsample_padding=1, num_class_embeds=num_classes, dropout=dropout)


def timestep_embedding(t: jax.Array, dim: int, flip_sin_to_cos: bool,
                       freq_shift: float) -> jax.Array:
  """Ho et al.'s sinusoidal embedding with diffusers' conventions, float32.

  Frequencies exp(-ln(10^4) i / (dim/2 - freq_shift)), i < dim/2; [sin, cos] ([cos, sin] when
  flip_sin_to_cos); a zero column pads an odd dim.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if flip_sin_to_cos:
    emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def _group_norm(cfg: UNetConfig, dtype, name: str, groups: Optional[int] = None) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=groups or cfg.norm_num_groups, epsilon=cfg.norm_eps, dtype=dtype,
                      use_fast_variance=False, name=name)


def kernel_init(cfg: UNetConfig, *, zero: bool = False) -> nn.initializers.Initializer:
  """The kernel initialiser of `cfg.init`; `zero` marks a layer Ho et al. start near zero."""
  if cfg.init == 'ddpm':
    # diffusion_tf's default_init(scale): variance_scaling(1e-10 if scale == 0 else scale,
    # 'fan_avg', 'uniform'); scale 0 for the last conv of a residual branch and the output conv.
    return nn.initializers.variance_scaling(1e-10 if zero else 1.0, 'fan_avg', 'uniform')
  return nn.initializers.lecun_normal()   # flax's default for Conv and Dense


def _conv(cfg: UNetConfig, features: int, dtype, name: str, kernel: int = 3, stride: int = 1,
          padding=1, zero: bool = False) -> nn.Conv:
  pad = ((padding, padding),) * 2 if isinstance(padding, int) else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, dtype=dtype,
                 kernel_init=kernel_init(cfg, zero=zero), name=name)


def _dense(cfg: UNetConfig, features: int, dtype, name: str, zero: bool = False) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, kernel_init=kernel_init(cfg, zero=zero), name=name)


def _upsample_nearest(x):
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _downsample_mean(x):
  """2x2 average pooling, stride 2 (torch's AvgPool2d(2, 2), guided-diffusion's avg_pool_nd)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class ResnetBlock(nn.Module):
  """diffusers' `ResnetBlock2D` (pre-norm), guided-diffusion's `ResBlock`.

  Time conditioning 'default' adds a projection of the embedding before norm2; 'scale_shift'
  projects it to (scale, shift) and computes norm2(h) * (1 + scale) + shift (ADM's adaptive
  GroupNorm). `resample` 'up' / 'down' makes it BigGAN's resampling block: after norm1 and the
  activation, both branches are resampled (nearest x2 / 2x2 mean) before conv1 and the shortcut.
  """
  cfg: UNetConfig
  features: int
  output_scale_factor: float = 1.0
  resample: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, train: bool):
    cfg, dt = self.cfg, self.dtype
    act = ACTIVATIONS[cfg.act_fn.lower()]
    h = act(_group_norm(cfg, dt, 'norm1')(x))
    if self.resample is not None:
      resample = _upsample_nearest if self.resample == 'up' else _downsample_mean
      h, x = resample(h), resample(x)
    h = _conv(cfg, self.features, dt, 'conv1')(h)
    scale_shift = cfg.resnet_time_scale_shift == 'scale_shift'
    temb = _dense(cfg, self.features * (2 if scale_shift else 1), dt, 'time_emb_proj')(act(temb))
    temb = temb[:, None, None, :]
    if scale_shift:
      scale, shift = jnp.split(temb, 2, axis=-1)
      h = _group_norm(cfg, dt, 'norm2')(h) * (1 + scale) + shift
    else:
      h = _group_norm(cfg, dt, 'norm2')(h + temb)
    h = nn.Dropout(cfg.dropout, deterministic=not train)(act(h))
    h = _conv(cfg, self.features, dt, 'conv2', zero=True)(h)
    if x.shape[-1] != self.features:
      x = _conv(cfg, self.features, dt, 'conv_shortcut', kernel=1, padding=0)(x)
    return (x + h) / self.output_scale_factor


class AttentionBlock(nn.Module):
  """diffusers' `Attention` as the UNet blocks build it: GroupNorm (of `groups` groups; 0: none),
  q/k/v, out, residual."""
  cfg: UNetConfig
  output_scale_factor: float = 1.0
  groups: Optional[int] = None   # None: cfg.norm_num_groups
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg, dt = self.cfg, self.dtype
    b, hgt, wid, c = x.shape
    head_dim = cfg.attention_head_dim or c
    heads = c // head_dim
    h = x if self.groups == 0 else _group_norm(cfg, dt, 'group_norm', self.groups)(x)
    h = h.reshape(b, hgt * wid, c)
    split = lambda z: z.reshape(b, hgt * wid, heads, head_dim)
    q, k, v = (split(_dense(cfg, c, dt, n)(h)) for n in ('to_q', 'to_k', 'to_v'))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits / math.sqrt(head_dim), axis=-1).astype(dt)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, hgt * wid, c)
    out = _dense(cfg, c, dt, 'to_out_0', zero=True)(out).reshape(b, hgt, wid, c)
    return (out + x) / self.output_scale_factor


class Downsample(nn.Module):
  """A stride-2 3x3 conv; padding 0 means diffusers' (and Ho et al.'s) pad right/bottom by 1."""
  cfg: UNetConfig
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    pad = ((0, 1), (0, 1)) if self.cfg.downsample_padding == 0 else 1
    return _conv(self.cfg, self.features, self.dtype, 'conv', stride=2, padding=pad)(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2, then a 3x3 conv."""
  cfg: UNetConfig
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _conv(self.cfg, self.features, self.dtype, 'conv')(_upsample_nearest(x))


def block_resampler(kind: str, cfg: UNetConfig, direction: str) -> str:
  """'conv' or 'resnet': how a block of type `kind` resamples (diffusers' get_*_block rules)."""
  if kind.startswith('Resnet'):
    return 'resnet'
  if kind.startswith('Attn'):
    return cfg.downsample_type if direction == 'down' else cfg.upsample_type
  return 'conv'


class DownBlock(nn.Module):
  """`DownBlock2D` / `AttnDownBlock2D` / `ResnetDownsampleBlock2D`: resnets (each followed by
  attention in the Attn block), then a downsampler ('conv' or 'resnet', None on the last level)."""
  cfg: UNetConfig
  features: int
  attention: bool
  downsample: Optional[str]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, train: bool):
    cfg, dt = self.cfg, self.dtype
    skips = []
    for i in range(cfg.layers_per_block):
      x = ResnetBlock(cfg, self.features, dtype=dt, name=f'resnets_{i}')(x, temb, train)
      if self.attention:
        x = AttentionBlock(cfg, dtype=dt, name=f'attentions_{i}')(x)
      skips.append(x)
    if self.downsample == 'resnet':
      x = ResnetBlock(cfg, self.features, resample='down', dtype=dt, name='downsamplers_0')(
          x, temb, train)
    elif self.downsample == 'conv':
      x = Downsample(cfg, self.features, dtype=dt, name='downsamplers_0')(x)
    if self.downsample is not None:
      skips.append(x)
    return x, skips


class UpBlock(nn.Module):
  """`UpBlock2D` / `AttnUpBlock2D` / `ResnetUpsampleBlock2D`: layers_per_block + 1 resnets on
  [x, skip] (each followed by attention in the Attn block), then an upsampler or None."""
  cfg: UNetConfig
  features: int
  attention: bool
  upsample: Optional[str]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, skips, temb, train: bool):
    cfg, dt = self.cfg, self.dtype
    for i in range(cfg.layers_per_block + 1):
      x = jnp.concatenate([x, skips[-1 - i]], axis=-1)
      x = ResnetBlock(cfg, self.features, dtype=dt, name=f'resnets_{i}')(x, temb, train)
      if self.attention:
        x = AttentionBlock(cfg, dtype=dt, name=f'attentions_{i}')(x)
    if self.upsample == 'resnet':
      x = ResnetBlock(cfg, self.features, resample='up', dtype=dt, name='upsamplers_0')(
          x, temb, train)
    elif self.upsample == 'conv':
      x = Upsample(cfg, self.features, dtype=dt, name='upsamplers_0')(x)
    return x


class MidBlock(nn.Module):
  """`UNetMidBlock2D`: resnet, attention, resnet (the attention's norm: `attn_norm_num_groups`)."""
  cfg: UNetConfig
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, train: bool):
    cfg, s = self.cfg, self.cfg.mid_block_scale_factor
    groups = cfg.attn_norm_num_groups or (0 if cfg.resnet_time_scale_shift == 'scale_shift'
                                          else cfg.norm_num_groups)
    x = ResnetBlock(cfg, self.features, s, dtype=self.dtype, name='resnets_0')(x, temb, train)
    x = AttentionBlock(cfg, s, groups, dtype=self.dtype, name='attentions_0')(x)
    return ResnetBlock(self.cfg, self.features, s, dtype=self.dtype, name='resnets_1')(
        x, temb, train)


class TimestepMLP(nn.Module):
  """diffusers' `TimestepEmbedding`: Dense, SiLU, Dense."""
  cfg: UNetConfig
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = _dense(self.cfg, self.features, self.dtype, 'linear_1')(x)
    return _dense(self.cfg, self.features, self.dtype, 'linear_2')(nn.silu(x))


class UNet(nn.Module):
  """eps-prediction UNet: (x_t NHWC in [-1, 1], integer t, optional labels y) -> float32 output
  of `out_channels` channels: eps, or [eps, v] for a learned-variance model (2 x in_channels)."""
  cfg: UNetConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, t, y=None, *, train: bool = False):
    cfg, dt = self.cfg, self.dtype
    if (y is None) != (cfg.num_class_embeds is None):
      raise ValueError(
          'Class labels y are required by a class-conditional UNet (num_class_embeds='
          f'{cfg.num_class_embeds}) and refused by an unconditional one; got '
          f'{"none" if y is None else "labels"}.')
    if cfg.center_input_sample:
      x = 2 * x - 1.0
    t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
    c0 = cfg.block_out_channels[0]
    temb = timestep_embedding(t, c0, cfg.flip_sin_to_cos, cfg.freq_shift)
    temb = TimestepMLP(cfg, cfg.time_embedding_dim or 4 * c0, dtype=dt, name='time_embedding')(
        temb.astype(dt))
    if y is not None:
      temb = temb + nn.Embed(cfg.num_class_embeds, temb.shape[-1], dtype=dt,
                             name='class_embedding')(y)

    h = _conv(cfg, c0, dt, 'conv_in')(x.astype(dt))
    skips = [h]
    n = len(cfg.block_out_channels)
    for i, (kind, c) in enumerate(zip(cfg.down_block_types, cfg.block_out_channels)):
      down = block_resampler(kind, cfg, 'down') if i < n - 1 else None
      h, s = DownBlock(cfg, c, kind.startswith('Attn'), down, dtype=dt,
                       name=f'down_blocks_{i}')(h, temb, train)
      skips += s
    h = MidBlock(cfg, cfg.block_out_channels[-1], dtype=dt, name='mid_block')(h, temb, train)
    per_block = cfg.layers_per_block + 1
    for i, (kind, c) in enumerate(zip(cfg.up_block_types, cfg.block_out_channels[::-1])):
      up = block_resampler(kind, cfg, 'up') if i < n - 1 else None
      h = UpBlock(cfg, c, kind.startswith('Attn'), up, dtype=dt,
                  name=f'up_blocks_{i}')(h, tuple(skips[-per_block:]), temb, train)
      skips = skips[:-per_block]
    h = nn.silu(_group_norm(cfg, dt, 'conv_norm_out')(h))
    return _conv(cfg, cfg.out_channels, dt, 'conv_out', zero=True)(h).astype(jnp.float32)


EpsFn = Callable[..., jax.Array]


def make_eps_fn(model: UNet) -> EpsFn:
  """The DESIGN.md contract: `eps_fn(params, x_t, t[, y]) -> eps`, a pure function.

  x_t: (B, H, W, C) in the model's scale ([-1, 1] for data); t: integer timesteps in
  [0, num_train_timesteps), a scalar or (B,); y: (B,) int labels for a class-conditional model.
  Deterministic (no dropout); returns float32 eps of x_t's shape, or for a learned-variance
  model (`UNetConfig.learned_variance`) eps and v concatenated on the channel axis, as
  guided-diffusion's model and diffusers' schedulers lay them out.
  """
  def eps_fn(params, x_t, t, y=None):
    return model.apply({'params': params}, x_t, t, y, train=False)
  return eps_fn


def init_params(model: UNet, rng: jax.Array) -> Any:
  """Fresh float32 parameters for `model`, initialised as `model.cfg.init` says."""
  cfg = model.cfg
  x = jnp.zeros((1,) + cfg.image_shape, jnp.float32)
  y = None if cfg.num_class_embeds is None else jnp.zeros((1,), jnp.int32)
  return jax.jit(lambda r: model.init(r, x, jnp.zeros((1,), jnp.int32), y)['params'])(rng)


def param_shapes(model: UNet) -> Any:
  """The parameter tree as `jax.ShapeDtypeStruct`s, without computing anything."""
  return jax.eval_shape(lambda: init_params(model, jax.random.key(0)))


def count_params(params: Any) -> int:
  return sum(int(math.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
