"""Importing NVlabs/edm networks (state_dict; trusted .pkl) and our EDM checkpoint format.

The fixture's weights are the state_dict of NVlabs/edm's VPPrecond (tests/fixtures/edm). The
import writes our checkpoint; loaded back, its denoiser must give the reference's outputs.
A real released .pkl embeds NVlabs/edm's source, so the .pkl path is checked here with a
stand-in object of the same shape (class names, attributes, state_dict), and, when EDM_SOURCE
names an NVlabs/edm checkout, with a pickle that checkout writes.
"""
import json
import os
import pickle
import sys
import textwrap

import jax
import numpy as np
import pytest
import torch
from safetensors import torch as st_torch

import edm_reference as ref_lib
from edm_reference import assert_close, nhwc
from models.diffusion import checkpoint
from models.diffusion.edm import checkpoint as edm_checkpoint
from models.interop import edm as edm_import
import trainer_runs
from models.diffusion.edm import precond as edm_precond


def _torch_state():
  return st_torch.load_file(ref_lib.WEIGHTS)


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  """The fixture's state_dict saved as a user would (torch.save), imported by the command."""
  d = tmp_path_factory.mktemp('edm')
  torch.save(_torch_state(), d / 'edm.pt')
  edm_import.import_checkpoint(str(d / 'edm.pt'), str(d / 'gen'), precond='vp', dropout=0.13)
  return d


def test_imported_checkpoint_denoises_as_the_reference(imported):
  gen = edm_checkpoint.load(str(imported / 'gen'))
  assert gen.precond == edm_precond.Precond('vp') and gen.name == 'edm'
  assert gen.num_classes == 4 and gen.image_shape == (8, 8, 3) and gen.network.dropout == 0.13
  np.testing.assert_allclose(gen.sigma_range, (gen.precond.sigma_min, gen.precond.sigma_max))
  ref = ref_lib.reference()
  d = jax.jit(gen.denoiser)(gen.params, nhwc(ref['in_x']), ref['in_sigma'], ref['in_labels'])
  assert_close(d, nhwc(ref['out_vp_D']), 2e-6, 'imported VPPrecond D')
  manifest = json.loads((imported / 'gen' / 'manifest.json').read_text())
  assert manifest['format'] == 'edm-generator' and manifest['precond'] == 'vp'
  assert manifest['num_params'] == ref_lib.config()['param_count']
  assert manifest['source'] == 'NVlabs/edm:edm.pt'


def test_state_dict_formats_agree(imported):
  """A .pt and a .safetensors state_dict import to the same parameters, 'model.' or not."""
  from_pt = edm_import.read(str(imported / 'edm.pt'), precond='vp')
  bare = {k.removeprefix('model.'): v for k, v in _torch_state().items()}
  st_torch.save_file(bare, str(imported / 'bare.safetensors'))
  from_st = edm_import.read(str(imported / 'bare.safetensors'), precond='edm')
  assert from_st.precond.kind == 'edm' and from_st.network == from_pt.network
  flat_pt = checkpoint.flatten(from_pt.params)
  flat_st = checkpoint.flatten(from_st.params)
  assert flat_pt.keys() == flat_st.keys()
  for k in flat_pt:
    np.testing.assert_array_equal(flat_pt[k], flat_st[k], err_msg=k)
  # Conv weights OIHW -> HWIO, linear (out, in) -> (in, out).
  w = _torch_state()['model.enc.8x8_conv.weight'].numpy()
  np.testing.assert_array_equal(flat_pt['enc_8x8_conv/kernel'], w.transpose(2, 3, 1, 0))
  w = _torch_state()['model.map_layer0.weight'].numpy()
  np.testing.assert_array_equal(flat_pt['map_layer0/kernel'], w.T)


def test_a_full_pickle_is_refused_without_trust(tmp_path):
  """torch.load(weights_only=True) refuses pickled objects; the message says what to do."""
  torch.save({'ema': _Opaque()}, tmp_path / 'full.pt')
  with pytest.raises(ValueError, match='not a plain state_dict .* --trust_pickle'):
    edm_import.read(str(tmp_path / 'full.pt'), precond='vp')
  (tmp_path / 'net.pkl').write_bytes(pickle.dumps({'ema': 1}))
  with pytest.raises(ValueError, match='is a pickle: loading it runs the code it carries'):
    edm_import.read(str(tmp_path / 'net.pkl'))
  with pytest.raises(ValueError, match='--precond must be one of'):
    edm_import.read(str(tmp_path / 'full.pt'))


@pytest.mark.integration
def test_command_errors_are_one_line(tmp_path):
  (tmp_path / 'net.pkl').write_bytes(pickle.dumps({'ema': 1}))
  proc = trainer_runs.run_command(str(tmp_path), 'trainer.import_generator', '--format=edm',
                                  '--source=net.pkl', '--out=gen')
  trainer_runs.one_line_error(proc, f'{tmp_path / "net.pkl"} is a pickle')
  assert not (tmp_path / 'gen').exists()


class _Opaque:
  pass


_STANDIN = '''
import torch

class SongUNet(torch.nn.Module):
  pass

class VPPrecond(torch.nn.Module):
  """The shape of NVlabs/edm's pickled network: class names, attributes, a state_dict."""

  def __init__(self, state):
    super().__init__()
    self.model = SongUNet()
    self.beta_d, self.beta_min, self.M, self.epsilon_t = 19.5, 0.2, 1000, 1e-5
    self.init_kwargs = dict(model_type='SongUNet', dropout=0.13, label_dropout=0.1)
    self._weights = dict(state)

  def state_dict(self):
    return dict(self._weights)
'''


def test_trusted_pickle_of_the_reference_layout(tmp_path):
  source = tmp_path / 'edm_checkout'
  source.mkdir()
  (source / 'edm_standin.py').write_text(textwrap.dedent(_STANDIN))
  sys.path.insert(0, str(source))
  try:
    import edm_standin  # pylint: disable=g-import-not-at-top
    data = {'ema': edm_standin.VPPrecond(_torch_state()), 'augment_pipe': None}
    (tmp_path / 'net.pkl').write_bytes(pickle.dumps(data))
  finally:
    sys.path.remove(str(source))
    sys.modules.pop('edm_standin', None)
  with pytest.raises(ValueError, match=r"needs the module 'edm_standin'.*--edm_source"):
    edm_import.read(str(tmp_path / 'net.pkl'), trust_pickle=True)
  gen = edm_import.read(str(tmp_path / 'net.pkl'), trust_pickle=True, edm_source=str(source))
  assert gen.precond == edm_precond.Precond('vp', beta_d=19.5, beta_min=0.2)
  assert gen.network.dropout == 0.13 and gen.network.label_dropout == 0.1
  assert gen.name == 'net' and str(source) not in sys.path


@pytest.mark.skipif(not os.environ.get('EDM_SOURCE'),
                    reason='EDM_SOURCE (an NVlabs/edm checkout) not set')
@pytest.mark.integration
def test_pickle_written_by_nvlabs_edm(tmp_path):
  """A VPPrecond pickled by NVlabs/edm's own code (its persistence embeds the source)."""
  source = os.environ['EDM_SOURCE']
  sys.path.insert(0, source)
  try:
    from training import networks  # pylint: disable=g-import-not-at-top
    cfg = ref_lib.config()
    keys = ('img_resolution', 'img_channels', 'label_dim', 'model_type', 'augment_dim',
            'model_channels', 'channel_mult', 'channel_mult_emb', 'num_blocks',
            'attn_resolutions', 'dropout', 'embedding_type', 'channel_mult_noise',
            'encoder_type', 'decoder_type', 'resample_filter')
    net = networks.VPPrecond(**{k: cfg[k] for k in keys})
    net.load_state_dict(_torch_state())
    (tmp_path / 'net.pkl').write_bytes(pickle.dumps({'ema': net}))
  finally:
    sys.path.remove(source)
    for name in [m for m in sys.modules if m.split('.')[0] in ('training', 'torch_utils',
                                                               'dnnlib')]:
      sys.modules.pop(name)
  gen = edm_import.read(str(tmp_path / 'net.pkl'), trust_pickle=True, edm_source=source)
  assert gen.precond == edm_precond.Precond('vp')
  ref = ref_lib.reference()
  d = jax.jit(gen.denoiser)(gen.params, nhwc(ref['in_x']), ref['in_sigma'], ref['in_labels'])
  assert_close(d, nhwc(ref['out_vp_D']), 2e-6, 'VPPrecond D from the NVlabs/edm pickle')


def _bare_state():
  return {k.removeprefix('model.'): v.numpy() for k, v in _torch_state().items()}


@pytest.mark.parametrize('edit,match', [
    (lambda s: s.pop('dec.8x8_block2.conv1.bias'),
     r'missing keys \(1\): dec_8x8_block2/conv1/bias'),
    (lambda s: s.update({'enc.4x4_block1.extra.weight': np.zeros(3, np.float32)}),
     r'unexpected keys \(1\): model.enc.4x4_block1.extra.weight'),
    (lambda s: s.update({'dec.4x4_up.affine.weight': np.zeros((8, 31), np.float32)}),
     r'wrong shapes .*dec_4x4_up/affine/kernel \(from model.dec.4x4_up.affine.weight\)'),
    (lambda s: s.update({'enc.4x4_down.conv0.resample_filter': np.ones((1, 1, 4, 4))}),
     r'model.enc.4x4_down.conv0.resample_filter is not the \[1, 1\] resampling filter'),
    (lambda s: s.update({'map_noise.freqs': np.zeros(4, np.float32)}),
     'map_noise.freqs belongs to a SongUNet variant other than DDPM'),
    (lambda s: s.pop('enc.8x8_conv.weight'), 'expected one input conv'),
])
def test_bad_state_dicts_name_the_key(tmp_path, edit, match):
  state = _bare_state()
  edit(state)
  path = str(tmp_path / 'edm.safetensors')
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  st_numpy.save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}, path)
  with pytest.raises(ValueError, match=match):
    edm_import.read(path, precond='vp')


def test_checkpoint_errors_name_the_file(imported, tmp_path):
  gen = edm_checkpoint.load(str(imported / 'gen'), dtype='bfloat16')
  assert gen.model.dtype == np.dtype('bfloat16')
  d = tmp_path / 'g'
  edm_checkpoint.save(str(d), gen.network, gen.precond, gen.params, name='x')
  net_json = json.loads((d / 'network.json').read_text())
  (d / 'network.json').write_text(json.dumps(dict(net_json, model_channels=16)))
  with pytest.raises(ValueError, match=r'params\.safetensors does not match .*wrong shapes'):
    edm_checkpoint.load(str(d))
  (d / 'network.json').write_text(json.dumps(dict(net_json, no_such_key=1)))
  with pytest.raises(ValueError, match=r"network\.json: unknown SongUNet config keys"):
    edm_checkpoint.load(str(d))
  (d / 'network.json').write_text(json.dumps(net_json))
  (d / 'precond.json').write_text(json.dumps({'kind': 've'}))
  with pytest.raises(ValueError, match=r"precond\.json: Precond kind must be one of"):
    edm_checkpoint.load(str(d))
  (d / 'manifest.json').unlink()
  with pytest.raises(FileNotFoundError, match='manifest.json not found'):
    edm_checkpoint.load(str(d))
  with pytest.raises(ValueError, match='missing keys'):
    edm_checkpoint.save(str(tmp_path / 'h'), gen.network,
                        gen.precond, {k: v for k, v in gen.params.items() if k != 'map_label'})
  assert not (tmp_path / 'h' / 'manifest.json').exists()


def test_edm_precond_round_trips_infinite_sigma_max():
  p = edm_precond.Precond('edm', sigma_data=0.6)
  assert edm_precond.Precond.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_trainer_sample_draws_an_edm_generator_into_shards(imported, tmp_path):
  """generators.load reads the EDM checkpoint; Heun's sampler makes class-balanced shards."""
  from data.records import shards  # pylint: disable=g-import-not-at-top
  from trainer.generation import sample  # pylint: disable=g-import-not-at-top
  out = sample.sample_to_shards(str(imported / 'gen'), str(tmp_path / 'edm'), num=16,
                                num_shards=2, sampler='heun', steps=2, batch_size=8,
                                progress=False)
  data = next(shards.read_examples(out.manifest, batch_size=16))
  assert data['image'].shape == (16, 8, 8, 3) and data['image'].dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(data['label'], minlength=4), [4, 4, 4, 4])
  assert shards.load_manifest(out.manifest)['metadata']['sampler'] == 'heun'
  with pytest.raises(ValueError, match="--sampler='ddim': edm is an EDM generator; it samples "
                                       'with heun or euler'):
    sample.sample_to_shards(str(imported / 'gen'), str(tmp_path / 'x'), num=8, num_shards=1,
                            sampler='ddim', batch_size=8, progress=False)
