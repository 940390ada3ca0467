"""guided-diffusion's ADM against openai/guided-diffusion's own numbers: import, output, sampling.

tests/fixtures/guided_diffusion/ (README.md there says how it was made) holds two small
random-weight `UNetModel`s as guided-diffusion state_dicts, the outputs guided-diffusion computed
for them, and its samplers' trajectories with the injected noise recorded: `adm` has ADM's
options (scale-shift norm, resblock up/down, the new attention order, 10 classes, learned sigma,
cosine schedule), `legacy` the others (additive time embedding, conv resampling, the legacy
attention order with 2 heads, unconditional, fixed variance, linear schedule).
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors import numpy as st_numpy

from configs.adm import imagenet64, imagenet256
from models.diffusion import checkpoint
from models.interop import guided_diffusion as gdi
from models.diffusion import samplers
from models.diffusion import unet as unet_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures', 'guided_diffusion')
REF = dict(np.load(os.path.join(FIXTURES, 'reference.npz')))
# The fixture's models as guided-diffusion's flags (attention at 4x4: downsampling rate 2).
FLAGS = {
    'adm': dict(image_size=8, num_channels=32, num_res_blocks=2, attention_resolutions='4',
                channel_mult='1,1', class_cond=True, num_classes=10, num_head_channels=16,
                use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=True,
                learn_sigma=True, noise_schedule='cosine'),
    'legacy': dict(image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions='4',
                   channel_mult='1,1', class_cond=False, num_heads=2, num_head_channels=-1,
                   use_scale_shift_norm=False, resblock_updown=False,
                   use_new_attention_order=False, learn_sigma=False, noise_schedule='linear'),
}


def _nhwc(a):
  return np.moveaxis(a, -3, -1)


def _weights(tag):
  return os.path.join(FIXTURES, f'{tag}_small.safetensors')


@pytest.fixture(scope='module', params=['adm', 'legacy'])
def imported(request):
  tag = request.param
  gen = gdi.read_checkpoint(_weights(tag), FLAGS[tag])
  return tag, gen, jax.jit(gen.eps_fn)


def _reference_inputs(tag):
  y = REF.get(f'{tag}_y')
  return _nhwc(REF[f'{tag}_x']), REF[f'{tag}_t'], y


def test_output_equals_guided_diffusion(imported):
  """Every weight placed, every parameter found; eps (and v) equal to float32 precision."""
  tag, gen, eps_fn = imported
  assert unet_lib.count_params(gen.params) == REF[f'{tag}_num_params']
  x, t, y = _reference_inputs(tag)
  want = _nhwc(REF[f'{tag}_out'])
  got = np.asarray(eps_fn(gen.params, x, t, y))
  assert got.shape == want.shape
  rel = np.abs(got - want).max() / np.abs(want).max()
  print(f'{tag}: max |ours - guided-diffusion| / max |guided-diffusion| = {rel:.1e}')
  assert rel < 1e-5


def test_bfloat16_close_to_the_reference(imported):
  tag, gen, _ = imported
  x, t, y = _reference_inputs(tag)
  want = _nhwc(REF[f'{tag}_out'])
  bf16 = gen.with_dtype('bfloat16')
  got = np.asarray(jax.jit(bf16.eps_fn)(bf16.params, x, t, y))
  rel = np.linalg.norm(got - want) / np.linalg.norm(want)
  print(f'{tag}: bfloat16 relative L2 error {rel:.1e}')
  assert 1e-5 < rel < 3e-2


@pytest.mark.integration   # six sampling loops, each compiled
@pytest.mark.parametrize('kind,spec', [('ddpm', '10'), ('ddpm', '5,3'), ('ddim', 'ddim10')])
def test_sampling_equals_guided_diffusion(imported, monkeypatch, kind, spec):
  """p_sample_loop (learned range / fixed large) and ddim_sample_loop (eta 0) on respaced
  timesteps, with guided-diffusion's x_T and step noise injected."""
  tag, gen, _ = imported
  key = f'{tag}_{kind}_{spec.replace(",", "_")}'
  ts = samplers.space_timesteps(gen.schedule.num_timesteps, spec)
  np.testing.assert_array_equal(ts[::-1], REF[f'{key}_timesteps'])   # its respacing
  noise = jnp.asarray(_nhwc(np.concatenate([REF[f'{key}_x_T'][None], REF[f'{key}_noise']])))
  monkeypatch.setattr(samplers, '_normal', lambda keys, index, shape: noise[index])
  y = jnp.array([2, 5]) if gen.num_classes else None
  shape = (2,) + gen.image_shape
  if kind == 'ddpm':
    got = samplers.ddpm(gen.eps_fn, gen.params, gen.alphas_cumprod, jax.random.key(0), shape,
                        y=y, use_timesteps=ts, variance=gen.schedule.variance_type)
  else:
    got = samplers.ddim(gen.eps_fn, gen.params, gen.alphas_cumprod, jax.random.key(0), shape,
                        y=y, use_timesteps=ts, eps_from_x0=True)
  want = _nhwc(REF[f'{key}_sample'])
  err = np.abs(np.asarray(got) - want).max()
  print(f'{key}: max |ours - guided-diffusion| = {err:.1e}')
  assert err < 1e-4


@pytest.mark.parametrize('spec', ['250', '50', '25', '7', '1000', 'ddim25', 'ddim50', 'ddim30',
                                  '10,15,20', '5,3'])
def test_space_timesteps_equals_guided_diffusion(spec):
  want = REF[f'space_{spec.replace(",", "_")}']
  np.testing.assert_array_equal(samplers.space_timesteps(1000, spec)[::-1], want)
  if spec.isdigit():
    np.testing.assert_array_equal(samplers.timesteps(1000, int(spec), 'guided')[::-1], want)
  elif spec.startswith('ddim'):
    np.testing.assert_array_equal(
        samplers.timesteps(1000, int(spec[4:]), 'guided_ddim')[::-1], want)


@pytest.mark.parametrize('module,count', [(imagenet64, 'imagenet64'),
                                          (imagenet256, 'imagenet256')])
def test_presets_are_the_released_architectures(module, count):
  """configs/adm: our UNet of the README's flags has guided-diffusion's parameter count
  (295,904,454 and 553,838,086, counted by guided-diffusion's create_model)."""
  flags = module.get_config()
  cfg = gdi.unet_config(flags)
  n = unet_lib.count_params(unet_lib.param_shapes(unet_lib.UNet(cfg)))
  print(f'{count}: {n:,} parameters')
  assert n == REF[f'{count}_num_params']
  assert cfg.num_class_embeds == 1000 and cfg.learned_variance
  sched = gdi.schedule(flags)
  assert sched.variance_type == 'learned_range' and sched.num_timesteps == 1000


def test_schedules_are_guided_diffusions():
  """'linear' is Ho et al.'s stretched to T; 'cosine' Nichol & Dhariwal's (closed form here)."""
  lin = gdi.schedule(dict(noise_schedule='linear', diffusion_steps=500))
  np.testing.assert_allclose(lin.betas, np.linspace(2e-4, 0.04, 500))
  cos = gdi.schedule(dict(noise_schedule='cosine', learn_sigma=True)).alphas_cumprod
  f = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
  np.testing.assert_allclose(cos[:900], f(np.arange(1, 901) / 1000) / f(0), rtol=1e-9)
  assert gdi.schedule(dict(sigma_small=True)).variance_type == 'fixed_small'
  with pytest.raises(ValueError, match="noise_schedule 'sqrt'"):
    gdi.schedule(dict(noise_schedule='sqrt'))


def test_pt_checkpoint_reads_like_the_safetensors(tmp_path, imported):
  """A torch.save-d state_dict (what guided-diffusion ships) imports to the same checkpoint."""
  tag, gen, _ = imported
  state = {k: torch.from_numpy(v) for k, v in st_numpy.load_file(_weights(tag)).items()}
  torch.save(state, tmp_path / 'model.pt')
  loaded = gdi.import_checkpoint(str(tmp_path / 'model.pt'), FLAGS[tag], str(tmp_path / 'ours'))
  assert loaded.name == 'model' and loaded.schedule.variance_type == gen.schedule.variance_type
  assert loaded.unet == gen.unet
  for k, v in checkpoint.flatten(gen.params).items():
    np.testing.assert_array_equal(checkpoint.flatten(loaded.params)[k], v, err_msg=k)


@pytest.mark.integration   # a subprocess
def test_the_command_writes_a_loadable_checkpoint(tmp_path):
  flags = tmp_path / 'flags.py'
  flags.write_text('import ml_collections\n\n\ndef get_config():\n'
                   f'  return ml_collections.ConfigDict({dict(FLAGS["adm"], dropout=0.0)!r})\n')
  proc = subprocess.run(
      [sys.executable, '-m', 'trainer.import_generator', '--format=guided-diffusion',
       f'--source={_weights("adm")}', f'--flags={flags}', '--flags.dropout=0.1',
       f'--out={tmp_path / "ours"}', '--name=tiny-adm'],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '494,918 parameters' in proc.stdout
  gen = checkpoint.load(str(tmp_path / 'ours'))
  assert gen.name == 'tiny-adm' and gen.unet.dropout == 0.1 and gen.num_classes == 10
  missing = subprocess.run(
      [sys.executable, '-m', 'trainer.import_generator', '--format=guided-diffusion',
       f'--source={_weights("adm")}', f'--out={tmp_path / "other"}'],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert missing.returncode != 0 and 'needs --flags=' in missing.stderr


def test_a_pickle_is_refused(tmp_path):
  """weights_only: a .pt that needs more than tensors and containers is not loaded."""
  torch.save({'model': _NotATensor()}, tmp_path / 'evil.pt')
  with pytest.raises(ValueError, match=r'evil\.pt: not a readable weights-only torch checkpoint'):
    gdi.read_state_dict(str(tmp_path / 'evil.pt'))
  (tmp_path / 'broken.safetensors').write_bytes(b'not safetensors')
  with pytest.raises(ValueError, match=r'broken\.safetensors: not a readable safetensors file'):
    gdi.read_state_dict(str(tmp_path / 'broken.safetensors'))


class _NotATensor:
  pass


def test_mismatches_name_the_key():
  state = st_numpy.load_file(_weights('adm'))
  extra = dict(state, **{'input_blocks.1.0.extra.weight': np.zeros(3, np.float16)})
  with pytest.raises(ValueError, match=r'unexpected keys \(1\): input_blocks\.1\.0\.extra'):
    gdi.convert_weights(extra, gdi.unet_config(FLAGS['adm']), new_attention_order=True)
  missing = {k: v for k, v in state.items() if k != 'output_blocks.2.2.in_layers.2.weight'}
  with pytest.raises(ValueError, match=r'missing keys \(1\): up_blocks_0/upsamplers_0/conv1'):
    gdi.convert_weights(missing, gdi.unet_config(FLAGS['adm']), new_attention_order=True)
  odd = dict(state, **{'middle_block.1.qkv.weight': np.zeros((100, 32, 1), np.float16)})
  with pytest.raises(ValueError, match=r'middle_block\.1\.qkv\.weight of shape \(100, 32, 1\)'):
    gdi.convert_weights(odd, gdi.unet_config(FLAGS['legacy']), new_attention_order=False)
  wider = dict(FLAGS['adm'], num_channels=64)
  with pytest.raises(ValueError, match=r'wrong shapes .*from input_blocks\.0\.0\.weight'):
    gdi.convert_weights(state, gdi.unet_config(wider), new_attention_order=True)
  with pytest.raises(ValueError, match=r"unknown guided-diffusion flags \['num_chanels'\]"):
    gdi.unet_config(dict(num_chanels=64))
  with pytest.raises(ValueError, match='predict_xstart=True'):
    gdi.unet_config(dict(FLAGS['adm'], predict_xstart=True))
  with pytest.raises(ValueError, match='num_heads=3 gives heads of widths'):
    gdi.unet_config(dict(FLAGS['legacy'], num_heads=3))


def test_class_labels_follow_sorted_wnids():
  """guided-diffusion labels ImageNet by the sorted WordNet ids (image_datasets.py)."""
  imagenet = ['n03000134', 'n01440764', 'n09999999', 'n01443537', 'n02085620']
  labels = gdi.class_labels(['n02085620', 'n01440764', 'n09999999'], imagenet)
  np.testing.assert_array_equal(labels, [2, 0, 4])
  with pytest.raises(ValueError, match=r"not ImageNet classes: \['n00000001'\]"):
    gdi.class_labels(['n00000001'], imagenet)
  with pytest.raises(ValueError, match='1 duplicates'):
    gdi.class_labels(['n01440764'], imagenet + ['n01440764'])
