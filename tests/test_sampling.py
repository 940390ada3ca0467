"""Sampling at scale: device-count invariance, two hosts, exactly once after a kill, top-K memory.

A toy generator (eps = 0.3 x, DDIM with 4 steps, 4x4x1 images) and a toy labeller (class = pixel
sum mod 3, score = mean / 255) keep every test short; the machinery under test (noise per sample
id, sharding over the mesh, host plans, shard commits, resume, top-K state) is the real one.
The subprocess runs are this file run as a script (`python tests/test_sampling.py SPEC`).
"""
import functools
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from models.diffusion import samplers

pytestmark = pytest.mark.integration  # the integration tier (pytest.ini)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (4, 4, 1)
CLASSES = 3


def toy_functions(devices, batch_size, sleep=0.0):
  """(sample_batch, label_batch) of the toy generator on a mesh of `devices`."""
  from trainer import sharding  # pylint: disable=g-import-not-at-top
  from trainer.generation import sample as sample_cli  # pylint: disable=g-import-not-at-top
  mesh = jax.make_mesh((len(devices), 1), sharding.BATCH_AXES,
                       axis_types=(AxisType.Auto,) * 2, devices=devices)
  ac = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
  draw = lambda params, keys, shape, y: samplers.sample(  # noqa: E731
      lambda p, x, t: p * x, params, ac, keys, shape, sampler='ddim', steps=4, y=y)
  sample = sample_cli.make_sample_batch(draw, jnp.float32(0.3), mesh, batch_size=batch_size,
                                        image_shape=SHAPE)

  @jax.jit
  def label(images):
    total = images.astype(jnp.int32).sum((1, 2, 3))
    return total % CLASSES, images.astype(jnp.float32).mean((1, 2, 3)) / 255.0

  def slow_sample(key, b):
    time.sleep(sleep)
    return sample(key, b)
  return (slow_sample if sleep else sample), label


def write(out, devices=None, *, num=120, batch_size=8, shards=5, top_k=0, sleep=0.0, **kw):
  from data.generation import sampling  # pylint: disable=g-import-not-at-top
  sample, label = toy_functions(devices or jax.local_devices(), batch_size, sleep)
  return sampling.write_samples(sample, label, out, num=num, batch_size=batch_size,
                                num_shards=shards, image_shape=SHAPE, num_classes=CLASSES,
                                generator='toy', sampler='ddim', steps=4, seed=7, top_k=top_k,
                                progress=False, **kw)


def read_set(manifest):
  from data.records import shards  # pylint: disable=g-import-not-at-top
  batch = next(shards.read_examples(manifest, batch_size=10 ** 6))
  order = np.argsort(batch['id'])
  return {k: v[order] for k, v in batch.items()}, batch['id']


# ------------------------------------------------------------------------------------------------
# Subprocess worker.
# ------------------------------------------------------------------------------------------------


def _worker(spec):
  kwargs = dict(spec['kwargs'])
  if spec.get('processes'):
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize(f'127.0.0.1:{spec["port"]}', spec['processes'], spec['process'])
    kwargs.update(process_index=jax.process_index(), process_count=jax.process_count(),
                  barrier=lambda: multihost_utils.sync_global_devices('test_sampling'))
  result = write(spec['out'], **kwargs)
  print(json.dumps({'manifest': result.manifest, 'host_manifest': result.host_manifest,
                    'sampled': result.sampled}), flush=True)


def _env(devices):
  """A worker's environment: `devices` virtual CPU devices, the project on the path."""
  env = dict(os.environ)
  flags = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                   if not f.startswith('--xla_force_host_platform_device_count'))
  env.update(XLA_FLAGS=f'{flags} --xla_force_host_platform_device_count={devices}'.strip(),
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=ROOT + os.pathsep + env.get('PYTHONPATH', ''))
  return env


def launch(spec, log_path, devices=8):
  log = open(log_path, 'wb')
  proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), json.dumps(spec)],
                          cwd=ROOT, env=_env(devices), stdout=log, stderr=subprocess.STDOUT)
  log.close()
  proc.log_path = log_path
  return proc


def finish(proc, timeout=300):
  try:
    code = proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  text = open(proc.log_path).read()
  assert code == 0, text[-3000:]
  return json.loads(text.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# Tests.
# ------------------------------------------------------------------------------------------------


def tiny_unet_config(num_classes=None):
  """A one-level UNet on 4x4x1 images (convs, GroupNorm, the middle block's attention): the
  smallest program with every kind of layer, so the tests compile fast."""
  from models.diffusion import unet  # pylint: disable=g-import-not-at-top
  return unet.UNetConfig(sample_size=4, in_channels=1, out_channels=1, block_out_channels=(8,),
                         down_block_types=('DownBlock2D',), up_block_types=('UpBlock2D',),
                         layers_per_block=1, norm_num_groups=4, num_class_embeds=num_classes)


@functools.lru_cache(maxsize=None)
def tiny_unet(num_classes=None):
  """(config, model, random parameters) of the tiny UNet, built once per test process."""
  from models.diffusion import unet  # pylint: disable=g-import-not-at-top
  cfg = tiny_unet_config(num_classes)
  model = unet.UNet(cfg)
  return cfg, model, unet.init_params(model, jax.random.key(0))


def unet_sample_batch(devices, batch_size):
  """The tiny UNet (random weights), DDIM with 2 steps, on a mesh of `devices`."""
  from models.diffusion import unet  # pylint: disable=g-import-not-at-top
  from trainer import sharding  # pylint: disable=g-import-not-at-top
  from trainer.generation import sample as sample_cli  # pylint: disable=g-import-not-at-top
  mesh = jax.make_mesh((len(devices), 1), sharding.BATCH_AXES,
                       axis_types=(AxisType.Auto,) * 2, devices=devices)
  _, model, params = tiny_unet()
  ac = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
  draw = lambda params, keys, shape, y: samplers.sample(  # noqa: E731
      unet.make_eps_fn(model), params, ac, keys, shape, sampler='ddim', steps=2, y=y)
  return sample_cli.make_sample_batch(draw, params, mesh, batch_size=batch_size,
                                      image_shape=SHAPE)


def test_eight_devices_give_the_same_images_as_one():
  eight, _ = toy_functions(jax.devices()[:8], 16)
  one, _ = toy_functions(jax.devices()[:1], 16)
  key = jax.random.key(7)
  for b in (0, 3):
    got = eight(key, b)
    assert len(got.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(got), np.asarray(one(key, b)))
  # The UNet too: convolutions and GroupNorm of each sample see only that sample.
  got = np.asarray(unet_sample_batch(jax.devices()[:8], 16)(key, 2))
  want = np.asarray(unet_sample_batch(jax.devices()[:1], 16)(key, 2))
  assert got.std() > 0
  np.testing.assert_array_equal(got, want)
  # Sample ids, not batch positions, fix the noise: batch 1 of size 8 is rows 8..15 of batch 0.
  half, _ = toy_functions(jax.devices()[:8], 8)
  np.testing.assert_array_equal(np.asarray(half(key, 1)), np.asarray(one(key, 0))[8:])


def test_the_labeller_labels_images_on_the_mesh_with_the_classifiers_arg_max():
  from models import registry  # pylint: disable=g-import-not-at-top
  from trainer.generation import labeller  # pylint: disable=g-import-not-at-top
  from trainer.generation import sample as sample_cli  # pylint: disable=g-import-not-at-top
  model = registry.get_model('wrn-10-1', num_classes=CLASSES, mean=[0.5], std=[0.25])
  variables = model.init(jax.random.key(0), jnp.zeros((1,) + SHAPE), train=False)
  images, _ = toy_functions(jax.devices()[:8], 16)
  x = images(jax.random.key(7), 0)                 # uint8, sharded over 8 devices
  labels, scores = labeller.on_mesh(model, variables, sample_cli.local_mesh())(x)
  probs = jax.nn.softmax(model.apply(variables, np.asarray(x) / 255.0, train=False))
  np.testing.assert_array_equal(labels, np.argmax(probs, -1))
  np.testing.assert_allclose(scores, np.max(probs, -1), rtol=1e-5)


def test_writes_every_sample_once_with_its_label(tmp_path):
  result = write(str(tmp_path / 'gen' / 'toy'), num=100, shards=3)
  data, ids = read_set(result.manifest)
  assert sorted(ids.tolist()) == list(range(100))
  sample, label = toy_functions(jax.local_devices(), 8)
  want = np.concatenate([np.asarray(sample(jax.random.key(7), b)) for b in range(13)])[:100]
  np.testing.assert_array_equal(data['image'], want)
  labels, scores = label(want)
  np.testing.assert_array_equal(data['label'], labels)
  np.testing.assert_allclose(data['score'], scores, rtol=1e-6)
  manifest = json.load(open(result.manifest))
  assert manifest['count'] == 100 and len(manifest['shards']) == 3
  assert manifest['generator'] == 'toy' and manifest['seed'] == 7
  assert manifest['metadata']['sampling']['sampler'] == 'ddim'
  assert manifest['metadata']['sampling']['steps'] == 4
  assert not [f for f in os.listdir(tmp_path / 'gen') if 'tmp' in f or 'progress' in f]
  # Rerunning the finished command samples nothing; other settings are refused by name.
  assert write(str(tmp_path / 'gen' / 'toy'), num=100, shards=3).sampled == 0
  with pytest.raises(ValueError, match='other settings.*num'):
    write(str(tmp_path / 'gen' / 'toy'), num=101, shards=3)


def test_png_samples_are_the_raw_samples_and_the_encoding_is_a_setting(tmp_path):
  raw = write(str(tmp_path / 'raw' / 'toy'), num=40, shards=2)
  png = write(str(tmp_path / 'png' / 'toy'), num=40, shards=2, encoding='png')
  assert json.load(open(png.manifest))['image_encoding'] == 'png'
  want, got = read_set(raw.manifest)[0], read_set(png.manifest)[0]
  np.testing.assert_array_equal(got['image'], want['image'])
  np.testing.assert_array_equal(got['label'], want['label'])
  with pytest.raises(ValueError, match='other settings.*encoding'):
    write(str(tmp_path / 'png' / 'toy'), num=40, shards=2, encoding='jpeg')


def _kill_when(proc, condition, timeout=120):
  deadline = time.time() + timeout
  while not condition():
    assert proc.poll() is None, open(proc.log_path).read()[-3000:]
    assert time.time() < deadline, 'condition not reached'
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def _committed(path):
  try:
    return len(json.load(open(path))['committed'])
  except (FileNotFoundError, ValueError):
    return 0


@pytest.mark.parametrize('top_k,class_balanced', [(0, False), (12, False), (0, True)])
def test_killed_and_rerun_ends_with_exactly_the_uninterrupted_set(tmp_path, top_k,
                                                                  class_balanced):
  num, kwargs = 240, {'shards': 6, 'top_k': top_k, 'checkpoint_every': 4}
  if class_balanced:
    kwargs['class_balanced'] = True
  out = str(tmp_path / 'killed' / 'toy')
  state = out + ('.topk.npz' if top_k else '.progress.json')
  proc = launch({'out': out, 'kwargs': {'num': num, 'sleep': 0.05, **kwargs}},
                str(tmp_path / 'first.log'), devices=2)
  _kill_when(proc, (lambda: os.path.exists(state)) if top_k else
             (lambda: _committed(state) >= 2))
  assert not os.path.exists(out + '.json')
  neighbour = tmp_path / 'killed' / 'toy2-00000-of-00002.tfrecord.tmp-0'   # another set's
  neighbour.write_bytes(b'')
  again = finish(launch({'out': out, 'kwargs': {'num': num, **kwargs}},
                        str(tmp_path / 'second.log'), devices=2))
  want = write(str(tmp_path / 'whole' / 'toy'), num=num, **kwargs)
  assert 0 < again['sampled'] < want.sampled  # it resumed rather than starting over
  got, ids = read_set(again['manifest'])
  ref, _ = read_set(want.manifest)
  assert len(ids) == len(set(ids.tolist())) == (top_k * CLASSES if top_k else num)
  for key in ('id', 'image', 'label', 'score'):
    np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
  if class_balanced:
    assert np.bincount(got['label']).tolist() == [num // CLASSES] * CLASSES
  neighbour.unlink()                        # still there: only this set's leftovers go
  assert sorted(os.listdir(tmp_path / 'killed')) == sorted(os.listdir(tmp_path / 'whole'))


def test_two_processes_write_disjoint_ids_that_make_up_the_one_process_set(tmp_path):
  import trainer_runs  # pylint: disable=g-import-not-at-top
  port, out = trainer_runs.free_port(), str(tmp_path / 'two' / 'toy')
  procs = [launch({'out': out, 'processes': 2, 'process': i, 'port': port,
                   'kwargs': {'num': 100, 'shards': 5}}, str(tmp_path / f'host{i}.log'), 4)
           for i in range(2)]
  results = [finish(p) for p in procs]
  hosts = [set(read_set(r['host_manifest'])[1].tolist()) for r in results]
  assert hosts[0] and hosts[1] and not hosts[0] & hosts[1]
  assert hosts[0] | hosts[1] == set(range(100))
  got, _ = read_set(results[0]['manifest'])        # OUT.json lists both hosts' shards
  manifest = json.load(open(results[0]['manifest']))
  assert manifest['count'] == 100 and len(manifest['shards']) == 5
  ref, _ = read_set(write(str(tmp_path / 'one' / 'toy'), num=100, shards=5).manifest)
  for key in ('id', 'image', 'label', 'score'):
    np.testing.assert_array_equal(got[key], ref[key], err_msg=key)


def test_top_k_memory_is_bounded_by_k_times_classes(tmp_path):
  k = 5
  per_sample = int(np.prod(SHAPE)) + 8 + 8 + 8      # image bytes, id, score, stream position
  peaks = []
  for num in (80, 640):
    result = write(str(tmp_path / f'n{num}' / 'toy'), num=num, shards=3, top_k=k)
    data, _ = read_set(result.manifest)
    assert np.bincount(data['label'], minlength=CLASSES).tolist() == [k] * CLASSES
    peaks.append(result.peak_selector_bytes)
  print(f'top-{k} selector peak bytes for 80 and 640 samples: {peaks}')
  assert 0 < peaks[0] == peaks[1] <= k * CLASSES * per_sample


@pytest.mark.parametrize('balanced', [False, True])
def test_the_command_samples_a_conditional_unet_checkpoint(tmp_path, balanced):
  """trainer.sample end to end on a tiny class-conditional UNet: labels are the classes it was
  conditioned on, the set reads back, and the manifest names generator, sampler, steps, seed;
  --class_balanced draws each class's share directly and the manifest says so."""
  from models.diffusion import checkpoint, schedule  # pylint: disable=g-import-not-at-top
  cfg, _, params = tiny_unet(10)
  checkpoint.save(str(tmp_path / 'ckpt'), cfg, schedule.ho_linear(), params, name='tiny-ddpm')
  args = [sys.executable, '-m', 'trainer.sample', f'--generator={tmp_path / "ckpt"}',
          '--num=20', f'--out={tmp_path / "gen" / "tiny"}', '--shards=2', '--sampler=ddim',
          '--steps=2', '--seed=3', '--batch_size=8', '--noprogress'] + (
              ['--class_balanced'] if balanced else [])
  done = subprocess.run(args, cwd=ROOT, env=_env(2), capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  manifest_path = done.stdout.strip().splitlines()[-1]
  assert manifest_path == str(tmp_path / 'gen' / 'tiny.json')
  data, ids = read_set(manifest_path)
  assert sorted(ids.tolist()) == list(range(20))
  np.testing.assert_array_equal(data['label'], np.arange(20) % 10)
  assert data['image'].shape == (20,) + SHAPE and np.isnan(data['score']).all()
  manifest = json.load(open(manifest_path))
  assert (manifest['generator'], manifest['seed']) == ('tiny-ddpm', 3)
  assert (manifest['metadata']['sampler'], manifest['metadata']['steps']) == ('ddim', 2)
  assert manifest['metadata']['selection'] == ('class-balanced' if balanced else 'all')
  if balanced:
    odd = subprocess.run(args[:4] + ['--num=21'] + args[5:], cwd=ROOT, env=_env(2),
                         capture_output=True, text=True, timeout=300)
    assert odd.returncode == 1 and 'not a multiple of the 10 classes' in odd.stdout + odd.stderr


if __name__ == '__main__':
  _worker(json.loads(sys.argv[1]))
