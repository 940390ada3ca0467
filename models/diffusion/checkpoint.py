"""Our diffusion-generator checkpoint: a directory anyone can read without pickle.

    DIR/unet.json           the architecture (`unet.UNetConfig.to_dict`)
    DIR/schedule.json       the noise schedule: betas (float64 as JSON), variance type, clipping
    DIR/params.safetensors  float32 parameters, one tensor per leaf, keyed 'a/b/c' by tree path
    DIR/manifest.json       format and version, name, where it came from, image shape, classes,
                            parameter count; written last, so a directory without it is incomplete

`load(DIR)` returns a `Generator`: `eps_fn(params, x_t, t[, y])`, `params`, `alphas_cumprod`,
`num_classes` (None if unconditional) and `image_shape`. Local paths or gs:// (via etils.epath).
"""

import dataclasses
import functools
import json
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util
from safetensors import numpy as st_numpy

from models import dtypes
from models.diffusion import schedule as schedule_lib
from models.diffusion import unet as unet_lib

FORMAT = 'ddpm-generator'
VERSION = 1


@dataclasses.dataclass(frozen=True)
class Generator:
  """A loaded diffusion generator.

  Attributes:
    unet: the architecture.
    schedule: the noise schedule it was trained with.
    params: float32 parameter tree for `eps_fn`.
    name: a name for manifests of generated data (e.g. 'ddpm-cifar10-32').
    dtype: compute dtype of `eps_fn`, 'float32' or 'bfloat16'.
  """
  unet: unet_lib.UNetConfig
  schedule: schedule_lib.Schedule
  params: Any
  name: str = 'ddpm'
  dtype: str = 'float32'

  @functools.cached_property
  def model(self) -> unet_lib.UNet:
    return unet_lib.UNet(self.unet, dtype=dtypes.get(self.dtype, 'generator dtype'))

  @functools.cached_property
  def eps_fn(self) -> unet_lib.EpsFn:
    """`eps_fn(params, x_t, t[, y]) -> eps` (see `unet.make_eps_fn`); pure, jit it as you like."""
    return unet_lib.make_eps_fn(self.model)

  @property
  def alphas_cumprod(self) -> np.ndarray:
    """(T,) float64 alpha_bar_t, t = 0..T-1."""
    return self.schedule.alphas_cumprod

  @property
  def num_classes(self) -> Optional[int]:
    return self.unet.num_class_embeds

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.unet.image_shape

  def with_dtype(self, dtype: str) -> 'Generator':
    return dataclasses.replace(self, dtype=_check_dtype(dtype))


def _check_dtype(dtype: str) -> str:
  dtypes.get(dtype, 'generator dtype')
  return dtype


def flatten(params: Any) -> dict[str, np.ndarray]:
  """{'a/b/c': array} of a parameter tree."""
  return {k: np.asarray(v) for k, v in
          traverse_util.flatten_dict(jax.device_get(params), sep='/').items()}


def expected_shapes(unet: unet_lib.UNetConfig) -> dict[str, jax.ShapeDtypeStruct]:
  """{'a/b/c': shape} of the architecture's parameters, computed abstractly."""
  return traverse_util.flatten_dict(unet_lib.param_shapes(unet_lib.UNet(unet)), sep='/')


def check_params(expected: dict[str, Any], actual: dict[str, Any], source: str,
                 origin: dict[str, str] | None = None) -> None:
  """A clear error naming each missing, unexpected or wrong-shaped key of `actual`.

  Args:
    expected: key -> anything with a `.shape` (the architecture's parameters).
    actual: key -> array (what the file holds).
    source: the file, for the message.
    origin: our key -> the file's own key, named beside ours in the message (imports).
  """
  if origin:
    label = lambda k: f'{k} (from {origin[k]})' if k in origin else k  # noqa: E731
    expected = {label(k): v for k, v in expected.items()}
    actual = {label(k): v for k, v in actual.items()}
  missing = sorted(set(expected) - set(actual))
  unexpected = sorted(set(actual) - set(expected))
  shapes = sorted(f'{k}: file {tuple(actual[k].shape)}, architecture {tuple(expected[k].shape)}'
                  for k in set(expected) & set(actual)
                  if tuple(actual[k].shape) != tuple(expected[k].shape))
  if missing or unexpected or shapes:
    parts = [f'{name} ({len(keys)}): {", ".join(keys[:8])}{" ..." if len(keys) > 8 else ""}'
             for name, keys in (('missing keys', missing), ('unexpected keys', unexpected),
                                ('wrong shapes', shapes)) if keys]
    raise ValueError(f'{source} does not match the UNet architecture: ' + '; '.join(parts))


def save(path: str, unet: unet_lib.UNetConfig, schedule: schedule_lib.Schedule, params: Any, *,
         name: str = 'ddpm', source: str = '') -> None:
  """Writes a generator checkpoint to directory `path` (created; existing files replaced).

  Args:
    path: the checkpoint directory.
    unet: the architecture `params` belong to (checked).
    schedule: the noise schedule.
    params: parameter tree (cast to float32).
    name: the generator's name, for manifests downstream.
    source: where it came from (a diffusers directory, a training workdir), for people.
  """
  flat = {k: np.ascontiguousarray(v, np.float32) for k, v in flatten(params).items()}
  check_params(expected_shapes(unet), flat, 'the parameters given to save()')
  manifest = {'format': FORMAT, 'version': VERSION, 'name': name, 'source': source,
              'image_shape': list(unet.image_shape), 'num_classes': unet.num_class_embeds,
              'num_timesteps': schedule.num_timesteps}
  write_directory(path, manifest, {'unet': ('unet.json', unet.to_json()),
                                   'schedule': ('schedule.json', json.dumps(schedule.to_dict()))},
                  flat)


def write_directory(path: str, manifest: dict[str, Any], texts: dict[str, tuple[str, str]],
                    flat: dict[str, np.ndarray]) -> None:
  """Writes a checkpoint directory: `texts` ({key: (file name, text)}), the parameters, and the
  manifest last, listing them; a directory without its manifest is not a checkpoint, so a save
  cut short never passes for one."""
  d = epath.Path(path)
  d.mkdir(parents=True, exist_ok=True)
  (d / 'manifest.json').unlink(missing_ok=True)
  for file_name, text in texts.values():
    (d / file_name).write_text(text)
  (d / 'params.safetensors').write_bytes(st_numpy.save(flat))
  files = {**{key: file_name for key, (file_name, _) in texts.items()},
           'params': 'params.safetensors'}
  manifest = {**manifest, 'num_params': int(sum(v.size for v in flat.values())), 'files': files}
  (d / 'manifest.json').write_text(json.dumps(manifest, indent=2))


def _read_json(path: epath.Path, saved_by: str) -> dict[str, Any]:
  if not path.exists():
    raise FileNotFoundError(f'{path} not found: is {path.parent} a checkpoint of {saved_by}?')
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON: {e}') from None


def read_directory(path: str, fmt: str, version: int, saved_by: str):
  """(manifest, {key: the JSON of each listed file}, flat parameters, their path) of a checkpoint
  directory written by `write_directory` in format `fmt` (`saved_by` names the writer)."""
  d = epath.Path(path)
  manifest = _read_json(d / 'manifest.json', saved_by)
  if manifest.get('format') != fmt or manifest.get('version') != version:
    raise ValueError(f'{d / "manifest.json"}: format {manifest.get("format")!r} version '
                     f'{manifest.get("version")!r}, expected {fmt!r} version {version}.')
  files = dict(manifest['files'])
  params_path = d / files.pop('params')
  texts = {key: _read_json(d / name, saved_by) for key, name in files.items()}
  if not params_path.exists():
    raise FileNotFoundError(f'{params_path} not found (listed in {d / "manifest.json"}).')
  try:
    flat = st_numpy.load(params_path.read_bytes())
  except Exception as e:  # safetensors raises its own error type for a damaged file
    raise ValueError(f'{params_path}: not a readable safetensors file ({e}).') from None
  return manifest, texts, flat, params_path


def load(path: str, dtype: str = 'float32') -> Generator:
  """The generator in checkpoint directory `path`, parameters checked against its architecture.

  Args:
    path: a directory written by `save`.
    dtype: compute dtype of `eps_fn` ('float32' or 'bfloat16'); parameters stay float32.

  Raises:
    FileNotFoundError: for a directory without the manifest or another listed file.
    ValueError: naming the file and key, for another format or version, an unknown architecture
      key, or parameters of another architecture (missing, unexpected or wrong-shaped keys).
  """
  manifest, texts, flat, params_path = read_directory(path, FORMAT, VERSION,
                                                      'models.diffusion.checkpoint.save')
  unet = unet_lib.UNetConfig.from_dict(texts['unet'], source=f'{path}/unet.json')
  schedule = schedule_lib.Schedule.from_dict(texts['schedule'])
  check_params(expected_shapes(unet), flat, str(params_path))
  params = traverse_util.unflatten_dict({k: jnp.asarray(v, jnp.float32) for k, v in flat.items()},
                                        sep='/')
  return Generator(unet=unet, schedule=schedule, params=params, name=manifest.get('name', 'ddpm'),
                   dtype=_check_dtype(dtype))
