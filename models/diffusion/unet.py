"""Ho et al.'s DDPM UNet (2020), laid out exactly as diffusers' `UNet2DModel`.

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
import from diffusers is a rename and a transpose (`models.diffusion.diffusers_import`).

Numerics: parameters are float32; `dtype` is the compute dtype (bfloat16 for speed). GroupNorm
statistics, the sinusoidal time embedding and the attention softmax stay in float32 (diffusers
upcasts the softmax too), and eps comes out in float32.
"""

import dataclasses
import json
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

DOWN_BLOCKS = ('DownBlock2D', 'AttnDownBlock2D')
UP_BLOCKS = ('UpBlock2D', 'AttnUpBlock2D')
ACTIVATIONS = {
    'silu': nn.silu, 'swish': nn.silu, 'relu': nn.relu,
    'gelu': lambda x: nn.gelu(x, approximate=False),  # torch.nn.GELU() is the exact erf form
    'mish': lambda x: x * jnp.tanh(nn.softplus(x)),
}


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """The architecture; field names and meanings are those of diffusers' `UNet2DModel`.

  Only the subset Ho et al.'s model needs is supported (positional time embedding, the
  `UNetMidBlock2D`, conv down/upsampling, 'default' time-embedding addition); `validate` names
  anything else.
  """
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
    if self.act_fn.lower() not in ACTIVATIONS:
      raise ValueError(f'UNet config: act_fn {self.act_fn!r} not in {sorted(ACTIVATIONS)}.')
    if self.downsample_padding not in (0, 1):
      raise ValueError(f'UNet config: downsample_padding must be 0 or 1, got '
                       f'{self.downsample_padding}.')
    if self.sample_size % 2 ** (n - 1):
      raise ValueError(f'UNet config: sample_size {self.sample_size} must be a multiple of '
                       f'2 ** (levels - 1) = {2 ** (n - 1)}.')
    for c in self.block_out_channels:
      if c % self.norm_num_groups:
        raise ValueError(f'UNet config: block_out_channels {c} is not divisible by '
                         f'norm_num_groups {self.norm_num_groups}.')
      if self.attention_head_dim and c % self.attention_head_dim:
        raise ValueError(f'UNet config: block_out_channels {c} is not divisible by '
                         f'attention_head_dim {self.attention_head_dim}.')
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f'UNet config: dropout must be in [0, 1), got {self.dropout}.')

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of x_t and eps."""
    return (self.sample_size, self.sample_size, self.in_channels)

  def to_dict(self) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()}

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any], *, source: str = 'UNet config') -> 'UNetConfig':
    """From `to_dict`'s output; an unknown key is an error that names it and the source."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'{source}: unknown UNet config keys {unknown}; known: {sorted(names)}.')
    return cls(**d)


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


def _group_norm(cfg: UNetConfig, dtype, name: str) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=cfg.norm_num_groups, epsilon=cfg.norm_eps, dtype=dtype,
                      use_fast_variance=False, name=name)


def _conv(features: int, dtype, name: str, kernel: int = 3, stride: int = 1,
          padding=1) -> nn.Conv:
  pad = ((padding, padding),) * 2 if isinstance(padding, int) else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, dtype=dtype,
                 name=name)


class ResnetBlock(nn.Module):
  """diffusers' `ResnetBlock2D` ('default' time-embedding addition, pre-norm)."""
  cfg: UNetConfig
  features: int
  output_scale_factor: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, train: bool):
    act = ACTIVATIONS[self.cfg.act_fn.lower()]
    h = act(_group_norm(self.cfg, self.dtype, 'norm1')(x))
    h = _conv(self.features, self.dtype, 'conv1')(h)
    temb = nn.Dense(self.features, dtype=self.dtype, name='time_emb_proj')(act(temb))
    h = h + temb[:, None, None, :]
    h = act(_group_norm(self.cfg, self.dtype, 'norm2')(h))
    h = nn.Dropout(self.cfg.dropout, deterministic=not train)(h)
    h = _conv(self.features, self.dtype, 'conv2')(h)
    if x.shape[-1] != self.features:
      x = _conv(self.features, self.dtype, 'conv_shortcut', kernel=1, padding=0)(x)
    return (x + h) / self.output_scale_factor


class AttentionBlock(nn.Module):
  """diffusers' `Attention` as the UNet blocks build it: GroupNorm, q/k/v, out, residual."""
  cfg: UNetConfig
  output_scale_factor: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, hgt, wid, c = x.shape
    head_dim = self.cfg.attention_head_dim or c
    heads = c // head_dim
    h = _group_norm(self.cfg, self.dtype, 'group_norm')(x).reshape(b, hgt * wid, c)
    split = lambda z: z.reshape(b, hgt * wid, heads, head_dim)
    q, k, v = (split(nn.Dense(c, dtype=self.dtype, name=n)(h)) for n in ('to_q', 'to_k', 'to_v'))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits / math.sqrt(head_dim), axis=-1).astype(self.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, hgt * wid, c)
    out = nn.Dense(c, dtype=self.dtype, name='to_out_0')(out).reshape(b, hgt, wid, c)
    return (out + x) / self.output_scale_factor


class Downsample(nn.Module):
  """A stride-2 3x3 conv; padding 0 means diffusers' (and Ho et al.'s) pad right/bottom by 1."""
  cfg: UNetConfig
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    pad = ((0, 1), (0, 1)) if self.cfg.downsample_padding == 0 else 1
    return _conv(self.features, self.dtype, 'conv', stride=2, padding=pad)(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2, then a 3x3 conv."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(self.features, self.dtype, 'conv')(x)


class DownBlock(nn.Module):
  """`DownBlock2D` / `AttnDownBlock2D`: resnets (each followed by attention), then downsample."""
  cfg: UNetConfig
  features: int
  attention: bool
  downsample: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, train: bool):
    skips = []
    for i in range(self.cfg.layers_per_block):
      x = ResnetBlock(self.cfg, self.features, dtype=self.dtype, name=f'resnets_{i}')(
          x, temb, train)
      if self.attention:
        x = AttentionBlock(self.cfg, dtype=self.dtype, name=f'attentions_{i}')(x)
      skips.append(x)
    if self.downsample:
      x = Downsample(self.cfg, self.features, dtype=self.dtype, name='downsamplers_0')(x)
      skips.append(x)
    return x, skips


class UpBlock(nn.Module):
  """`UpBlock2D` / `AttnUpBlock2D`: layers_per_block + 1 resnets on [x, skip], then upsample."""
  cfg: UNetConfig
  features: int
  attention: bool
  upsample: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, skips, temb, train: bool):
    for i in range(self.cfg.layers_per_block + 1):
      x = jnp.concatenate([x, skips[-1 - i]], axis=-1)
      x = ResnetBlock(self.cfg, self.features, dtype=self.dtype, name=f'resnets_{i}')(
          x, temb, train)
      if self.attention:
        x = AttentionBlock(self.cfg, dtype=self.dtype, name=f'attentions_{i}')(x)
    if self.upsample:
      x = Upsample(self.features, dtype=self.dtype, name='upsamplers_0')(x)
    return x


class MidBlock(nn.Module):
  """`UNetMidBlock2D`: resnet, attention, resnet."""
  cfg: UNetConfig
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, train: bool):
    s = self.cfg.mid_block_scale_factor
    x = ResnetBlock(self.cfg, self.features, s, dtype=self.dtype, name='resnets_0')(x, temb, train)
    x = AttentionBlock(self.cfg, s, dtype=self.dtype, name='attentions_0')(x)
    return ResnetBlock(self.cfg, self.features, s, dtype=self.dtype, name='resnets_1')(
        x, temb, train)


class TimestepMLP(nn.Module):
  """diffusers' `TimestepEmbedding`: Dense, SiLU, Dense."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.features, dtype=self.dtype, name='linear_1')(x)
    return nn.Dense(self.features, dtype=self.dtype, name='linear_2')(nn.silu(x))


class UNet(nn.Module):
  """eps-prediction UNet: (x_t NHWC in [-1, 1], integer t, optional labels y) -> eps, float32."""
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
    temb = TimestepMLP(cfg.time_embedding_dim or 4 * c0, dtype=dt, name='time_embedding')(
        temb.astype(dt))
    if y is not None:
      temb = temb + nn.Embed(cfg.num_class_embeds, temb.shape[-1], dtype=dt,
                             name='class_embedding')(y)

    h = _conv(c0, dt, 'conv_in')(x.astype(dt))
    skips = [h]
    n = len(cfg.block_out_channels)
    for i, (kind, c) in enumerate(zip(cfg.down_block_types, cfg.block_out_channels)):
      h, s = DownBlock(cfg, c, kind == 'AttnDownBlock2D', i < n - 1, dtype=dt,
                       name=f'down_blocks_{i}')(h, temb, train)
      skips += s
    h = MidBlock(cfg, cfg.block_out_channels[-1], dtype=dt, name='mid_block')(h, temb, train)
    per_block = cfg.layers_per_block + 1
    for i, (kind, c) in enumerate(zip(cfg.up_block_types, cfg.block_out_channels[::-1])):
      h = UpBlock(cfg, c, kind == 'AttnUpBlock2D', i < n - 1, dtype=dt,
                  name=f'up_blocks_{i}')(h, tuple(skips[-per_block:]), temb, train)
      skips = skips[:-per_block]
    h = nn.silu(_group_norm(cfg, dt, 'conv_norm_out')(h))
    return _conv(cfg.out_channels, dt, 'conv_out')(h).astype(jnp.float32)


EpsFn = Callable[..., jax.Array]


def make_eps_fn(model: UNet) -> EpsFn:
  """The DESIGN.md contract: `eps_fn(params, x_t, t[, y]) -> eps`, a pure function.

  x_t: (B, H, W, C) in the model's scale ([-1, 1] for data); t: integer timesteps in
  [0, num_train_timesteps), a scalar or (B,); y: (B,) int labels for a class-conditional model.
  Deterministic (no dropout); returns float32 eps of x_t's shape.
  """
  def eps_fn(params, x_t, t, y=None):
    return model.apply({'params': params}, x_t, t, y, train=False)
  return eps_fn


def init_params(model: UNet, rng: jax.Array) -> Any:
  """Fresh float32 parameters (flax's default initialisers) for `model`."""
  cfg = model.cfg
  x = jnp.zeros((1,) + cfg.image_shape, jnp.float32)
  y = None if cfg.num_class_embeds is None else jnp.zeros((1,), jnp.int32)
  return jax.jit(lambda r: model.init(r, x, jnp.zeros((1,), jnp.int32), y)['params'])(rng)


def param_shapes(model: UNet) -> Any:
  """The parameter tree as `jax.ShapeDtypeStruct`s, without computing anything."""
  return jax.eval_shape(lambda: init_params(model, jax.random.key(0)))


def count_params(params: Any) -> int:
  return sum(int(math.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
