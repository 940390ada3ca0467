"""EDM's DDPM++ network (`SongUNet` of NVlabs/edm `training/networks.py`, Karras et al. 2022).

The network is the F_theta of EDM's preconditioning (`models.diffusion.edm.precond`): it maps
(c_in x, c_noise, class labels[, augmentation labels]) to F, NHWC, float32 out. What is built is
the DDPM++ configuration the released CIFAR-10 VP checkpoints use: positional noise embedding
(`channel_mult_noise` 1), 'standard' encoder and decoder, resample filter [1, 1] (2x2 mean
pooling down, nearest-neighbour up), one attention head, skip scale sqrt(1/2), no adaptive scale.
NCSN++ (Fourier embedding, residual encoder, [1, 3, 3, 1] filter) is refused by `validate`.

Reference behaviour kept, block by block:
- noise embedding: [sin, cos] of c_noise * 10000^(-i / (C/2 - 1)) (the reference builds
  [cos, sin] with `endpoint=True` and swaps the halves), Ho et al.'s embedding with diffusers'
  freq_shift 1, so `unet.timestep_embedding` serves both;
- labels: `map_label(labels * sqrt(label_dim))` on one-hot (or any float) label vectors, added to
  the noise embedding, with `label_dropout` in training; augmentation labels through a bias-free
  `map_augment`; then Dense, SiLU, Dense, SiLU;
- GroupNorm with min(32, C // 4) groups, eps 1e-6;
- a block: x -> SiLU(norm0) -> [resample] -> 3x3 conv0; + affine(emb); SiLU(norm1); dropout;
  3x3 conv1; + skip (a 1x1 conv after the same resampling when channels or resolution change);
  x sqrt(1/2); then, where the block has attention, norm2, a 1x1 qkv conv whose 3C outputs are
  (C, 3) interleaved as the reference reshapes them, softmax(q k / sqrt(C)) in float32, a 1x1
  proj, residual, x sqrt(1/2);
- encoder: a 3x3 conv at full resolution, then per level a down block (levels > 0) and
  `num_blocks` blocks (attention at `attn_resolutions`); every output is a skip;
- decoder: at the lowest level two blocks (the first with attention), elsewhere an up block;
  then `num_blocks + 1` blocks on [x, skip] (attention on the last one at `attn_resolutions`);
  at full resolution GroupNorm, SiLU and a 3x3 conv to the output channels.

Parameter names are the reference's module names with '.' inside a module dict joined by '_'
(`model.enc.16x16_block0.conv0.weight` is `enc_16x16_block0/conv0/kernel`), so the import
(`models.interop.edm`) is a rename and a transpose.

Numerics: parameters are float32; `dtype` is the compute dtype of the convolutions and attention
(bfloat16 for speed). As in the reference under fp16, the noise/label embedding MLP and each
block's `affine` run in float32 and are cast to the compute dtype; GroupNorm statistics and the
attention softmax are float32, and F comes out in float32.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.diffusion import config_json
from models.diffusion.unet import timestep_embedding

SKIP_SCALE = math.sqrt(0.5)
NORM_EPS = 1e-6


def group_count(channels: int) -> int:
  """The reference GroupNorm's groups, min(32, C // 4); C must split evenly into them."""
  groups = min(32, channels // 4)
  if groups < 1 or channels % groups:
    raise ValueError(f'SongUNet: {channels} channels do not split into min(32, C // 4) = '
                     f'{groups} GroupNorm groups.')
  return groups


@dataclasses.dataclass(frozen=True)
class SongUNetConfig(config_json.JsonConfig):
  """The architecture; field names and defaults are those of the reference `SongUNet`.

  The four fields after `channel_mult_noise` name the DDPM++ choices; `validate` refuses the
  others (they exist so an imported NCSN++ configuration is named, not misread).
  """
  KIND = 'SongUNet'

  img_resolution: int = 32
  in_channels: int = 3
  out_channels: int = 3
  label_dim: int = 0            # classes of a class-conditional model; 0: unconditional
  augment_dim: int = 0          # augmentation-label size of the non-leaking augmentation
  model_channels: int = 128
  channel_mult: tuple[int, ...] = (1, 2, 2, 2)
  channel_mult_emb: int = 4
  num_blocks: int = 4
  attn_resolutions: tuple[int, ...] = (16,)
  dropout: float = 0.10
  label_dropout: float = 0.0
  channel_mult_noise: int = 1
  embedding_type: str = 'positional'
  encoder_type: str = 'standard'
  decoder_type: str = 'standard'
  resample_filter: tuple[int, ...] = (1, 1)

  def __post_init__(self):
    for name in ('channel_mult', 'attn_resolutions', 'resample_filter'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    self.validate()

  def validate(self) -> None:
    """A clear error for a configuration this implementation does not build."""
    ddpmpp = dict(embedding_type='positional', encoder_type='standard', decoder_type='standard',
                  resample_filter=(1, 1), channel_mult_noise=1)
    for key, value in ddpmpp.items():
      if getattr(self, key) != value:
        raise ValueError(f'SongUNet config: {key} = {getattr(self, key)!r} is not supported; '
                         f'only DDPM++ ({key} = {value!r}) is built.')
    levels = len(self.channel_mult)
    if levels < 1 or self.img_resolution % 2 ** (levels - 1):
      raise ValueError(f'SongUNet config: img_resolution {self.img_resolution} must be a '
                       f'multiple of 2 ** (levels - 1) = {2 ** max(levels - 1, 0)}.')
    for c in {self.model_channels * m for m in self.channel_mult}:
      group_count(c)
    if self.model_channels * self.channel_mult_noise % 2:
      raise ValueError(f'SongUNet config: the noise embedding size '
                       f'{self.model_channels * self.channel_mult_noise} must be even.')
    for name in ('dropout', 'label_dropout'):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f'SongUNet config: {name} must be in [0, 1), got '
                         f'{getattr(self, name)}.')

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of x and of D(x)."""
    return (self.img_resolution, self.img_resolution, self.in_channels)

# The released edm-cifar10-32x32-cond-vp network (NVlabs/edm train.py, --arch=ddpmpp --cond=1 on
# CIFAR-10 with the defaults --dropout=0.13 --augment=0.12): 128 x [2, 2, 2] channels, 4 blocks
# per resolution, attention at 16x16, 10 classes, 9 augmentation labels.
CIFAR10_DDPMPP = SongUNetConfig(label_dim=10, augment_dim=9, channel_mult=(2, 2, 2),
                                dropout=0.13)


def digits_config(label_dim: int = 0, dropout: float = 0.0) -> SongUNetConfig:
  """A tiny DDPM++ for 8x8 greyscale digits: 32 x [1, 2] channels (8x8, 4x4 with attention)."""
  return SongUNetConfig(img_resolution=8, in_channels=1, out_channels=1, label_dim=label_dim,
                        model_channels=32, channel_mult=(1, 2), num_blocks=1,
                        attn_resolutions=(4,), dropout=dropout)


def _norm(channels: int, dtype, name: str) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=group_count(channels), epsilon=NORM_EPS, dtype=dtype,
                      use_fast_variance=False, name=name)


def xavier_uniform(weight: float = 1.0) -> nn.initializers.Initializer:
  """The reference's init: `weight` x U(+-sqrt(6 / (fan_in + fan_out))), fans with the kernel's
  area as torch counts them (flax's variance_scaling counts them the same way)."""
  return nn.initializers.variance_scaling(weight ** 2, 'fan_avg', 'uniform')


# The reference's DDPM++ initialisers: xavier_uniform; the last conv of each residual branch,
# of each attention and of the network scaled by 1e-5 ('init_zero'); qkv by sqrt(0.2); biases 0.
INIT = xavier_uniform()
INIT_ZERO = xavier_uniform(1e-5)
INIT_ATTN = xavier_uniform(math.sqrt(0.2))


def _conv(features: int, kernel: int, dtype, name: str, init=INIT) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), dtype=dtype,
                 kernel_init=init, name=name)


def _dense(features: int, name: str, use_bias: bool = True) -> nn.Dense:
  """A float32 Dense with the reference's init (the mapping network and `affine`)."""
  return nn.Dense(features, use_bias=use_bias, dtype=jnp.float32, kernel_init=INIT, name=name)


def resample(x: jax.Array, up: bool, down: bool) -> jax.Array:
  """The [1, 1] filter: x2 nearest-neighbour up, or 2x2 mean down (the reference's resampling)."""
  if up:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  if down:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4), dtype=jnp.float32).astype(
        x.dtype)
  return x


class UNetBlock(nn.Module):
  """The reference `UNetBlock` with the DDPM++ settings (see the module docstring)."""
  out_channels: int
  up: bool = False
  down: bool = False
  attention: bool = False
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool):
    c, dt = self.out_channels, self.dtype
    orig = x
    h = nn.silu(_norm(x.shape[-1], dt, 'norm0')(x))
    h = _conv(c, 3, dt, 'conv0')(resample(h, self.up, self.down))
    bias = _dense(c, 'affine')(emb)  # float32, as the reference
    h = nn.silu(_norm(c, dt, 'norm1')(h + bias[:, None, None, :].astype(h.dtype)))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = _conv(c, 3, dt, 'conv1', INIT_ZERO)(h)
    if c != x.shape[-1] or self.up or self.down:
      orig = _conv(c, 1, dt, 'skip')(resample(orig, self.up, self.down))
    x = (h + orig) * SKIP_SCALE
    if self.attention:
      x = (self._attention(x) + x) * SKIP_SCALE
    return x

  def _attention(self, x):
    """One head over all channels; qkv's 3C outputs are (C, 3) interleaved, as the reference's."""
    b, hgt, wid, c = x.shape
    qkv = _conv(3 * c, 1, self.dtype, 'qkv', INIT_ATTN)(_norm(c, self.dtype, 'norm2')(x))
    qkv = qkv.reshape(b, hgt * wid, c, 3)
    q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
    k = (k / math.sqrt(c)).astype(jnp.float32)
    logits = jnp.einsum('bqc,bkc->bqk', q.astype(jnp.float32), k)
    w = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    a = jnp.einsum('bqk,bkc->bqc', w, v).reshape(b, hgt, wid, c)
    return _conv(c, 1, self.dtype, 'proj', INIT_ZERO)(a)


class SongUNet(nn.Module):
  """F(x, c_noise, labels[, augment_labels]) -> float32 NHWC, the reference's DDPM++.

  x: (B, H, W, C) already scaled by c_in; c_noise: (B,) or a scalar; labels: (B,) int classes
  or (B, label_dim) float vectors (one-hot, or zeros), required by a class-conditional network
  and refused by an unconditional one; augment_labels: (B, augment_dim) or None.
  """
  cfg: SongUNetConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, c_noise, labels=None, augment_labels=None, *, train: bool = False):
    cfg, dt = self.cfg, self.dtype
    emb = self._embedding(x.shape[0], c_noise, labels, augment_labels, train)
    h = x.astype(dt)
    skips = []
    for level, mult in enumerate(cfg.channel_mult):
      res = cfg.img_resolution >> level
      if level == 0:
        h = _conv(cfg.model_channels, 3, dt, f'enc_{res}x{res}_conv')(h)
      else:
        h = self._block(h.shape[-1], f'enc_{res}x{res}_down', down=True)(h, emb, train)
      skips.append(h)
      for idx in range(cfg.num_blocks):
        h = self._block(cfg.model_channels * mult, f'enc_{res}x{res}_block{idx}',
                        attention=res in cfg.attn_resolutions)(h, emb, train)
        skips.append(h)
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
      res = cfg.img_resolution >> level
      if level == len(cfg.channel_mult) - 1:
        h = self._block(h.shape[-1], f'dec_{res}x{res}_in0', attention=True)(h, emb, train)
        h = self._block(h.shape[-1], f'dec_{res}x{res}_in1')(h, emb, train)
      else:
        h = self._block(h.shape[-1], f'dec_{res}x{res}_up', up=True)(h, emb, train)
      for idx in range(cfg.num_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        attn = idx == cfg.num_blocks and res in cfg.attn_resolutions
        h = self._block(cfg.model_channels * mult, f'dec_{res}x{res}_block{idx}',
                        attention=attn)(h, emb, train)
    res = cfg.img_resolution
    h = nn.silu(_norm(h.shape[-1], dt, f'dec_{res}x{res}_aux_norm')(h))
    h = _conv(cfg.out_channels, 3, dt, f'dec_{res}x{res}_aux_conv', INIT_ZERO)(h)
    return h.astype(jnp.float32)

  def _block(self, out_channels, name, **kwargs) -> UNetBlock:
    return UNetBlock(out_channels, dropout=self.cfg.dropout, dtype=self.dtype, name=name,
                     **kwargs)

  def _embedding(self, batch, c_noise, labels, augment_labels, train):
    """The mapping network, float32: noise, label and augmentation embeddings, two Dense+SiLU."""
    cfg = self.cfg
    noise_channels = cfg.model_channels * cfg.channel_mult_noise
    c_noise = jnp.broadcast_to(jnp.asarray(c_noise, jnp.float32).reshape(-1), (batch,))
    emb = timestep_embedding(c_noise, noise_channels, flip_sin_to_cos=False, freq_shift=1)
    if (labels is None) != (cfg.label_dim == 0):
      raise ValueError(
          f'Class labels are required by a class-conditional SongUNet (label_dim='
          f'{cfg.label_dim}; the reference fills None with zero vectors: pass '
          f'jnp.zeros((B, {cfg.label_dim})) for that) and refused by an unconditional one; '
          f'got {"none" if labels is None else "labels"}.')
    if labels is not None:
      vectors = label_vectors(labels, cfg.label_dim)
      if train and cfg.label_dropout:
        keep = jax.random.uniform(self.make_rng('dropout'), (batch, 1)) >= cfg.label_dropout
        vectors = vectors * keep
      emb = emb + _dense(noise_channels, 'map_label')(
          vectors * math.sqrt(cfg.label_dim))
    if cfg.augment_dim and augment_labels is not None:
      emb = emb + _dense(noise_channels, 'map_augment', use_bias=False)(
          jnp.asarray(augment_labels, jnp.float32))
    emb = nn.silu(_dense(cfg.model_channels * cfg.channel_mult_emb, 'map_layer0')(emb))
    return nn.silu(_dense(cfg.model_channels * cfg.channel_mult_emb, 'map_layer1')(emb))


def label_vectors(labels, label_dim: int) -> jax.Array:
  """(B,) int classes -> one-hot float32 (B, label_dim); (B, label_dim) floats pass through."""
  labels = jnp.asarray(labels)
  if labels.ndim == 1 and jnp.issubdtype(labels.dtype, jnp.integer):
    return jax.nn.one_hot(labels, label_dim, dtype=jnp.float32)
  if labels.ndim == 2 and labels.shape[-1] == label_dim:
    return labels.astype(jnp.float32)
  raise ValueError(f'SongUNet labels must be (B,) integer classes or (B, {label_dim}) vectors, '
                   f'got {labels.dtype} {labels.shape}.')


def init_params(model: SongUNet, rng: jax.Array) -> Any:
  """Fresh float32 parameters for `model`, drawn as the reference's DDPM++ initialises them.

  The augmentation embedding is created when `augment_dim` > 0, as in the reference.
  """
  cfg = model.cfg
  x = jnp.zeros((1,) + cfg.image_shape, jnp.float32)
  y = None if not cfg.label_dim else jnp.zeros((1,), jnp.int32)
  aug = None if not cfg.augment_dim else jnp.zeros((1, cfg.augment_dim), jnp.float32)
  return jax.jit(lambda r: model.init(r, x, jnp.zeros((1,)), y, aug)['params'])(rng)


def param_shapes(cfg: SongUNetConfig) -> Any:
  """The parameter tree as `jax.ShapeDtypeStruct`s, without computing anything."""
  return jax.eval_shape(lambda: init_params(SongUNet(cfg), jax.random.key(0)))


def count_params(params: Any) -> int:
  return sum(int(math.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
