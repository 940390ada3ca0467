"""Import from diffusers: our eps_fn equals diffusers' UNet2DModel, our schedule its DDPMScheduler.

Every diffusers parameter is perturbed with noise before saving (a fresh UNet2DModel has zero
output convs in places, which would hide a wrong mapping), so the equality tests can fail.
"""
import inspect
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors import numpy as st_numpy

from models.diffusion import checkpoint
from models.interop import diffusers as diffusers_import
from models.diffusion import schedule as schedule_lib
from models.diffusion import unet as unet_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# google/ddpm-cifar10-32's config.json (see models/diffusion/unet.py for the sources).
CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
    layers_per_block=2, down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D',
                                          'DownBlock2D'),
    up_block_types=('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'),
    attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, act_fn='silu',
    flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, mid_block_scale_factor=1,
    center_input_sample=False, time_embedding_type='positional')
# Small, and different wherever a convention could hide: padding 1, flipped sin/cos, shift 0,
# two heads, a middle-block scale, centred input, three levels with attention on two.
SMALL = dict(
    sample_size=8, in_channels=1, out_channels=2, block_out_channels=(16, 32, 32),
    layers_per_block=1, down_block_types=('AttnDownBlock2D', 'DownBlock2D', 'AttnDownBlock2D'),
    up_block_types=('AttnUpBlock2D', 'UpBlock2D', 'AttnUpBlock2D'), attention_head_dim=8,
    norm_num_groups=8, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
    mid_block_scale_factor=2.0, center_input_sample=True)
# ADM-shaped (Dhariwal & Nichol's guided-diffusion UNet, small): scale-shift conditioning,
# resnet up/down sampling (a ResnetDownsampleBlock2D where a level has no attention), 16-channel
# heads, GroupNorm eps 1e-5, [cos, sin] embedding without shift, classes, learned variance (6 out).
ADM_SMALL = dict(
    sample_size=16, in_channels=3, out_channels=6, block_out_channels=(32, 64, 64),
    layers_per_block=2,
    down_block_types=('ResnetDownsampleBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D'),
    up_block_types=('AttnUpBlock2D', 'AttnUpBlock2D', 'ResnetUpsampleBlock2D'),
    attention_head_dim=16, norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0,
    downsample_padding=1, resnet_time_scale_shift='scale_shift', downsample_type='resnet',
    upsample_type='resnet', attn_norm_num_groups=32, num_class_embeds=10)
TIMESTEPS = (0, 1, 500, 999)


def _diffusers_dir(path, config, seed=0, scheduler=None):
  torch.manual_seed(seed)
  model = UNet2DModel(**config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(path)
  (scheduler or DDPMScheduler()).save_pretrained(path)
  return model


def _diffusers_eps(model, x, t, y=None):
  with torch.no_grad():
    out = model(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                class_labels=None if y is None else torch.from_numpy(y)).sample
  return out.numpy().transpose(0, 2, 3, 1)


def _assert_equal_eps(gen, model, batch, y=None, seed=0):
  rng = np.random.default_rng(seed)
  eps_fn = jax.jit(gen.eps_fn)
  for t in TIMESTEPS:
    x = rng.standard_normal((batch,) + gen.image_shape).astype(np.float32)
    t_batch = np.full((batch,), t, np.int64)
    ref = _diffusers_eps(model, x, t_batch, y)
    ours = np.asarray(eps_fn(gen.params, x, t_batch, y))
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    print(f't={t}: max |ours - diffusers| / max |diffusers| = {rel:.2e}')
    assert rel <= 1e-4, (t, rel)


@pytest.mark.integration
@pytest.mark.parametrize('config,batch', [(SMALL, 3), (CIFAR10, 2)], ids=['small', 'cifar10'])
def test_eps_equals_diffusers(tmp_path, config, batch):
  model = _diffusers_dir(tmp_path / 'hf', config)
  gen = diffusers_import.import_pretrained(str(tmp_path / 'hf'), str(tmp_path / 'ours'))
  assert gen.image_shape == (config['sample_size'],) * 2 + (config['in_channels'],)
  assert gen.num_classes is None
  assert unet_lib.count_params(gen.params) == sum(p.numel() for p in model.parameters())
  _assert_equal_eps(gen, model, batch)


def test_class_conditional_equals_diffusers(tmp_path):
  model = _diffusers_dir(tmp_path / 'hf', dict(SMALL, num_class_embeds=10))
  gen = diffusers_import.import_pretrained(str(tmp_path / 'hf'), str(tmp_path / 'ours'))
  assert gen.num_classes == 10
  _assert_equal_eps(gen, model, 3, y=np.array([0, 3, 9]))


@pytest.mark.integration
def test_adm_shaped_output_equals_diffusers(tmp_path):
  """ADM's options as diffusers spells them; both halves of the output (eps and v) compared."""
  model = _diffusers_dir(tmp_path / 'hf', ADM_SMALL)
  gen = diffusers_import.import_pretrained(str(tmp_path / 'hf'), str(tmp_path / 'ours'))
  assert gen.unet.learned_variance and gen.num_classes == 10
  assert unet_lib.count_params(gen.params) == sum(p.numel() for p in model.parameters())
  flat = checkpoint.flatten(gen.params)
  assert 'down_blocks_0/downsamplers_0/time_emb_proj/kernel' in flat      # a resnet downsampler
  assert flat['up_blocks_0/resnets_0/time_emb_proj/kernel'].shape[-1] == 2 * 64  # scale, shift
  _assert_equal_eps(gen, model, 2, y=np.array([3, 9]))


@pytest.mark.integration
def test_adm_shaped_config_with_conv_resampling(tmp_path):
  """Scale-shift without resnet resampling: DownBlock2D and the attention blocks' convs."""
  config = dict(ADM_SMALL, down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D'),
                up_block_types=('AttnUpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'),
                downsample_type='conv', upsample_type='conv', num_class_embeds=None,
                attn_norm_num_groups=None)   # diffusers: no norm in the middle attention then
  model = _diffusers_dir(tmp_path / 'hf', config)
  gen = diffusers_import.import_pretrained(str(tmp_path / 'hf'), str(tmp_path / 'ours'))
  flat = checkpoint.flatten(gen.params)
  assert 'down_blocks_1/downsamplers_0/conv/kernel' in flat
  assert 'mid_block/attentions_0/group_norm/scale' not in flat
  _assert_equal_eps(gen, model, 2)


def test_cifar10_parameter_count():
  """Ho et al.'s CIFAR-10 model has 35.7M parameters; ours and diffusers' count the same."""
  ours = unet_lib.count_params(unet_lib.param_shapes(unet_lib.UNet(unet_lib.CIFAR10_DDPM)))
  theirs = sum(p.numel() for p in UNet2DModel(**CIFAR10).parameters())
  print(f'CIFAR-10 UNet: {ours:,} parameters (diffusers: {theirs:,})')
  assert ours == theirs
  assert round(ours / 1e6, 1) == 35.7


def test_cifar10_preset_is_the_diffusers_config():
  cfg = diffusers_import.unet_config(UNet2DModel(**CIFAR10).config)
  assert cfg == unet_lib.CIFAR10_DDPM


def test_defaults_are_diffusers_defaults():
  """A config.json may omit keys; they must mean what the installed diffusers takes them to."""
  sig = inspect.signature(UNet2DModel.__init__).parameters
  theirs = {k: p.default for k, p in sig.items() if k != 'self'}
  assert theirs == diffusers_import.DIFFUSERS_DEFAULTS


def test_deprecated_attention_names(tmp_path):
  """Checkpoints from before diffusers 0.12 name the attention query/key/value/proj_attn."""
  model = _diffusers_dir(tmp_path / 'hf', SMALL)
  path = tmp_path / 'hf' / diffusers_import.WEIGHTS
  old = {'to_q': 'query', 'to_k': 'key', 'to_v': 'value', 'to_out.0': 'proj_attn'}
  state = st_numpy.load_file(str(path))
  renamed = {}
  for k, v in state.items():
    for new, dep in old.items():
      k = k.replace(f'.{new}.', f'.{dep}.')
    renamed[k] = v
  assert any('.query.' in k for k in renamed)
  st_numpy.save_file(renamed, str(path))
  gen = diffusers_import.read_pretrained(str(tmp_path / 'hf'))
  _assert_equal_eps(gen, model, 2)


def test_pipeline_layout(tmp_path):
  """A DDPMPipeline directory keeps the model in unet/ and the schedule in scheduler/."""
  model = _diffusers_dir(tmp_path / 'hf' / 'unet', SMALL)
  os.rename(tmp_path / 'hf' / 'unet' / 'scheduler_config.json', tmp_path / 'sched.json')
  os.makedirs(tmp_path / 'hf' / 'scheduler')
  os.rename(tmp_path / 'sched.json', tmp_path / 'hf' / 'scheduler' / 'scheduler_config.json')
  gen = diffusers_import.read_pretrained(str(tmp_path / 'hf'))
  _assert_equal_eps(gen, model, 1)


def test_wrong_architecture_names_the_key(tmp_path):
  _diffusers_dir(tmp_path / 'hf', SMALL)
  config_path = tmp_path / 'hf' / 'config.json'
  config = json.loads(config_path.read_text())
  config['layers_per_block'] = 2  # the weights have one resnet per level
  config_path.write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r'missing keys \(\d+\): down_blocks_0/attentions_1/'):
    diffusers_import.read_pretrained(str(tmp_path / 'hf'))
  config['layers_per_block'] = 1
  config['block_out_channels'] = [16, 32, 64]
  config_path.write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r'wrong shapes .*from down_blocks\.2\.'):
    diffusers_import.read_pretrained(str(tmp_path / 'hf'))


def test_unexpected_weight_names_the_key(tmp_path):
  _diffusers_dir(tmp_path / 'hf', SMALL)
  path = str(tmp_path / 'hf' / diffusers_import.WEIGHTS)
  state = st_numpy.load_file(path)
  state['down_blocks.0.extra.weight'] = np.zeros(3, np.float32)
  st_numpy.save_file(state, path)
  with pytest.raises(ValueError, match=r'unexpected keys .*down_blocks\.0\.extra\.weight'):
    diffusers_import.read_pretrained(str(tmp_path / 'hf'))


def test_unsupported_config_names_the_key(tmp_path):
  _diffusers_dir(tmp_path / 'hf', dict(SMALL, class_embed_type='timestep'))
  with pytest.raises(ValueError, match=r'config\.json: class_embed_type'):
    diffusers_import.read_pretrained(str(tmp_path / 'hf'))


def test_pickle_weights_are_refused(tmp_path):
  _diffusers_dir(tmp_path / 'hf', SMALL)
  os.remove(tmp_path / 'hf' / diffusers_import.WEIGHTS)
  with pytest.raises(FileNotFoundError, match='never loaded'):
    diffusers_import.read_pretrained(str(tmp_path / 'hf'))


@pytest.mark.integration
def test_the_command_writes_a_loadable_checkpoint(tmp_path):
  model = _diffusers_dir(tmp_path / 'hf', SMALL)
  proc = subprocess.run([sys.executable, '-m', 'trainer.import_generator', '--format=diffusers',
                         f'--source={tmp_path / "hf"}', f'--out={tmp_path / "ours"}',
                         '--name=tiny'], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'parameters' in proc.stdout
  gen = checkpoint.load(str(tmp_path / 'ours'))
  assert gen.name == 'tiny'
  _assert_equal_eps(gen, model, 1)


@pytest.mark.parametrize('kwargs', [
    {}, dict(beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule='squaredcos_cap_v2'), dict(beta_schedule='sigmoid'),
    dict(beta_schedule='linear', rescale_betas_zero_snr=True, num_train_timesteps=500),
    dict(trained_betas=np.linspace(1e-3, 0.05, 200).tolist(), variance_type='fixed_large'),
], ids=['ho-linear', 'scaled_linear', 'cosine', 'sigmoid', 'zero-snr', 'trained'])
def test_alphas_cumprod_equals_ddpm_scheduler(tmp_path, kwargs):
  scheduler = DDPMScheduler(**kwargs)
  scheduler.save_pretrained(tmp_path)
  ours = schedule_lib.load_scheduler_config(str(tmp_path))
  theirs = scheduler.alphas_cumprod.numpy().astype(np.float64)
  err = np.abs(ours.alphas_cumprod - theirs).max()
  print(f'{kwargs}: max |alphas_cumprod - DDPMScheduler| = {err:.1e} (it computes in float32)')
  np.testing.assert_allclose(ours.alphas_cumprod, theirs, rtol=1e-5, atol=1e-7)
  assert ours.variance_type == scheduler.config.variance_type


def test_default_schedule_is_ho():
  np.testing.assert_allclose(schedule_lib.ho_linear().alphas_cumprod,
                             DDPMScheduler().alphas_cumprod.numpy(), rtol=1e-5)


@pytest.mark.parametrize('kwargs,match', [
    (dict(beta_schedule='exp'), "beta_schedule 'exp'"),
    (dict(prediction_type='v_prediction'), "prediction_type 'v_prediction'"),
    (dict(variance_type='learned'), "variance_type 'learned'"),
    (dict(no_such_key=1), r"unknown DDPMScheduler keys \['no_such_key'\]"),
])
def test_unsupported_scheduler_config(tmp_path, kwargs, match):
  path = tmp_path / 'scheduler_config.json'
  path.write_text(json.dumps(kwargs))
  with pytest.raises(ValueError, match=match):
    schedule_lib.load_scheduler_config(str(path))
