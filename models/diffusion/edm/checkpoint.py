"""Our EDM-generator checkpoint: a directory anyone can read without pickle.

    DIR/network.json        the architecture (`song_unet.SongUNetConfig.to_dict`)
    DIR/precond.json        the preconditioning (`edm_precond.Precond.to_dict`)
    DIR/params.safetensors  float32 parameters, one tensor per leaf, keyed 'a/b/c' by tree path
    DIR/manifest.json       format and version, name, where it came from, image shape, classes,
                            parameter count; written last, so a directory without it is incomplete

`load(DIR)` returns an `EDMGenerator`: `denoiser(params, x, sigma[, y])`, `params`, `num_classes`
(None if unconditional), `image_shape` and the noise range its preconditioning supports. The
layout follows `models.diffusion.checkpoint` (the DDPM generator's), with the EDM network and
preconditioning in place of the UNet and schedule. Local paths or gs:// (via etils.epath).
"""

import dataclasses
import functools
import json
from typing import Any, Optional

import jax.numpy as jnp
from flax import traverse_util

from models import dtypes
from models.diffusion import checkpoint
from models.diffusion.edm import precond as edm_precond
from models.diffusion.edm import network as song_unet

FORMAT = 'edm-generator'
VERSION = 1


@dataclasses.dataclass(frozen=True)
class EDMGenerator:
  """A loaded EDM generator.

  Attributes:
    network: the architecture of F.
    precond: the preconditioning that makes F a denoiser.
    params: float32 parameter tree.
    name: a name for manifests of generated data (e.g. 'edm-cifar10-32x32-cond-vp').
    dtype: compute dtype of the network, 'float32' or 'bfloat16'.
  """
  network: song_unet.SongUNetConfig
  precond: edm_precond.Precond
  params: Any
  name: str = 'edm'
  dtype: str = 'float32'

  @functools.cached_property
  def model(self) -> song_unet.SongUNet:
    return song_unet.SongUNet(self.network, dtype=dtypes.get(self.dtype, 'generator dtype'))

  @functools.cached_property
  def denoiser(self) -> edm_precond.Denoiser:
    """`denoiser(params, x, sigma, y=None, ...) -> D` (`edm_precond.make_denoiser`); pure."""
    return edm_precond.make_denoiser(self.model, self.precond)

  @property
  def num_classes(self) -> Optional[int]:
    return self.network.label_dim or None

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.network.image_shape

  @property
  def sigma_range(self) -> tuple[float, float]:
    """The noise levels the preconditioning supports, for `edm_sampler.sample(supported=...)`."""
    return self.precond.sigma_min, self.precond.sigma_max

  def with_dtype(self, dtype: str) -> 'EDMGenerator':
    return dataclasses.replace(self, dtype=_check_dtype(dtype))


def _check_dtype(dtype: str) -> str:
  dtypes.get(dtype, 'generator dtype')
  return dtype


def expected_shapes(network: song_unet.SongUNetConfig) -> dict[str, Any]:
  """{'a/b/c': shape} of the architecture's parameters, computed abstractly."""
  return traverse_util.flatten_dict(song_unet.param_shapes(network), sep='/')


def save(path: str, network: song_unet.SongUNetConfig, precond: edm_precond.Precond,
         params: Any, *, name: str = 'edm', source: str = '') -> None:
  """Writes an EDM generator checkpoint to directory `path` (created; existing files replaced).

  Args:
    path: the checkpoint directory.
    network: the architecture `params` belong to (checked).
    precond: the preconditioning.
    params: parameter tree (cast to float32).
    name: the generator's name, for manifests downstream.
    source: where it came from (an NVlabs/edm file, a training workdir), for people.
  """
  flat = {k: v.astype('float32') for k, v in checkpoint.flatten(params).items()}
  checkpoint.check_params(expected_shapes(network), flat, 'the parameters given to save()')
  manifest = {'format': FORMAT, 'version': VERSION, 'name': name, 'source': source,
              'image_shape': list(network.image_shape),
              'num_classes': network.label_dim or None, 'precond': precond.kind}
  precond_json = json.dumps(precond.to_dict(), indent=2, sort_keys=True)
  checkpoint.write_directory(path, manifest, {'network': ('network.json', network.to_json()),
                                              'precond': ('precond.json', precond_json)}, flat)


def load(path: str, dtype: str = 'float32') -> EDMGenerator:
  """The generator in checkpoint directory `path`, parameters checked against its architecture.

  Raises:
    FileNotFoundError: for a directory without the manifest or another listed file.
    ValueError: naming the file and key, for another format or version, an unknown
      architecture or preconditioning key, or parameters of another architecture.
  """
  manifest, texts, flat, params_path = checkpoint.read_directory(
      path, FORMAT, VERSION, 'models.diffusion.edm.checkpoint.save')
  network = song_unet.SongUNetConfig.from_dict(texts['network'], source=f'{path}/network.json')
  precond = edm_precond.Precond.from_dict(texts['precond'], source=f'{path}/precond.json')
  checkpoint.check_params(expected_shapes(network), flat, str(params_path))
  params = traverse_util.unflatten_dict({k: jnp.asarray(v, jnp.float32) for k, v in flat.items()},
                                        sep='/')
  return EDMGenerator(network=network, precond=precond, params=params,
                      name=manifest.get('name', 'edm'), dtype=_check_dtype(dtype))
