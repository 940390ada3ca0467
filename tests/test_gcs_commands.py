"""Every gs:// path the README names, driven as a user would (`python -m …` in subprocesses)
against a local GCS emulator (tests/gcs_emulator.py): npz import, DDPM sampling and
pseudo-labelling writing shards to a bucket; `trainer.method` end to end in a bucket workdir
(its shards read back by the Grain pipeline, checkpoints, best, done, events, evaluation, the
report); `trainer.evaluate` and `trainer.export` of bucket workdirs.

Each check reads the bucket through the emulator's own API, so a path that quietly wrote to the
local disk (e.g. a folder named `gs:`) fails. Resume and faults: tests/test_gcs_faults.py.
"""
import io
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import trainer_runs as runs
from configs import base
from data.records import shards

pytestmark = pytest.mark.integration

TOY = {'model.name': 'wrn-10-1', 'pipeline.classifier_model': 'wrn-10-1',
       'dataset.holdout': 32, 'dataset.test_size': 32, 'train.batch_size': 32,
       'train.epoch_size': 128, 'train.num_epochs': 1, 'pipeline.classifier_epochs': 1,
       'train.attack_steps': 1, 'eval.every_steps': 4, 'eval.pgd_steps': 1,
       'eval.batch_size': 32, 'pipeline.num_generated': 200, 'pipeline.num_shards': 2,
       'pipeline.metrics_samples': 50, 'pipeline.eval_examples': 16,
       'eval.attacks': 'pgd-1', 'loader.prefetch': 0,
       'pipeline.class_balanced': False}   # a 4-step classifier's labels need not fill a class
NUM_IMPORTED = 40



@pytest.fixture(scope='module')
def cwd(tmp_path_factory):
  return tmp_path_factory.mktemp('cwd')


def _run(gcs, cwd, module, *args):
  env = gcs.env(runs.env(2, cwd / 'jax_cache'))
  env['PYTHONPATH'] = runs.ROOT
  proc = subprocess.run([sys.executable, '-m', module, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
  assert not os.path.exists(cwd / 'gs:')  # no local stand-in for the bucket
  return proc


def _download_set(gcs, manifest_name, directory):
  """A shard set's objects copied out of the bucket; the local manifest's path."""
  prefix = manifest_name.rsplit('/', 1)[0] + '/'
  os.makedirs(directory, exist_ok=True)
  for name in gcs.objects(prefix):
    if name.endswith(('.tfrecord', '.json')):
      with open(os.path.join(directory, name.rsplit('/', 1)[1]), 'wb') as f:
        f.write(gcs.read(name))
  return os.path.join(directory, manifest_name.rsplit('/', 1)[1])


@pytest.fixture(scope='module')
def imported(gcs, cwd):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (NUM_IMPORTED, 8, 8, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, NUM_IMPORTED)
  np.savez(cwd / 'set.npz', image=images, label=labels)
  _run(gcs, cwd, 'trainer.import_npz', '--npz=set.npz', f'--out={gcs.url("gen/imported")}',
       '--shards=2')
  return images, labels


def test_import_npz_writes_the_set_to_the_bucket(gcs, cwd, imported):
  images, labels = imported
  names = gcs.objects('gen/imported')
  assert sorted(names) == ['gen/imported-00000-of-00002.tfrecord',
                           'gen/imported-00001-of-00002.tfrecord', 'gen/imported.json']
  local = list(shards.read_examples(_download_set(gcs, 'gen/imported.json', cwd / 'copy'),
                                    batch_size=NUM_IMPORTED))[0]
  np.testing.assert_array_equal(local['image'][np.argsort(local['id'])], images)
  np.testing.assert_array_equal(local['label'][np.argsort(local['id'])], labels)


@pytest.fixture(scope='module')
def method(gcs, cwd):
  args = ['--config=' + os.path.join(runs.ROOT, 'configs', 'demo.py'),
          f'--workdir={gcs.url("method")}', *(f'--config.{k}={v}' for k, v in TOY.items())]
  return _run(gcs, cwd, 'trainer.method', *args)


def test_method_end_to_end_in_a_bucket(gcs, method):
  names = gcs.objects('method/')
  assert 'The method ran to the end:' in method.stdout
  for name in ('classifier/done.json', 'classifier/config.json', 'generated/gaussian.json',
               'generated/data_metrics.json', 'generated/samples.png', 'robust/config.json',
               'robust/done.json', 'robust/best.json', 'robust/eval.json', 'report.md',
               'robust_curves.png'):
    assert f'method/{name}' in names, name
  assert sum(re.fullmatch(r'method/generated/gaussian-\d{5}-of-00002\.tfrecord', n) is not None
             for n in names) == 2
  assert gcs.committed_steps('method/robust/checkpoints') and gcs.committed_steps(
      'method/robust/best')
  assert any(n.startswith('method/robust/events.out.tfevents.') for n in names)
  config = json.loads(gcs.read('method/robust/config.json'))
  assert config['generated']['path'] == gcs.url('method/generated/gaussian.json')
  evaluation = json.loads(gcs.read('method/robust/eval.json'))
  assert evaluation['num_examples'] == 16 and 'pgd-1' in evaluation['cascades']
  report = gcs.read('method/report.md').decode()
  assert '| pgd-1 | clean |' in report and f'tensorboard --logdir {gcs.url("method")}' in report


def test_the_pipeline_reads_the_generated_shards_from_the_bucket(gcs, method):
  """What the robust stage read: the whole set, CRC-checked, straight from the bucket."""
  del method
  path = gcs.url('method/generated/gaussian.json')
  manifest = shards.load_manifest(path)
  batches = list(shards.read_examples(path, batch_size=64))
  assert sum(len(b['id']) for b in batches) == manifest['count']
  assert sorted(np.concatenate([b['id'] for b in batches]).tolist()) == list(
      range(manifest['count']))


def test_evaluate_a_bucket_workdir(gcs, cwd, method):
  del method
  before = json.loads(gcs.read('method/robust/eval.json'))
  _run(gcs, cwd, 'trainer.evaluate', f'--workdir={gcs.url("method/robust")}',
       '--attacks=pgd-2', '--num_examples=8')
  after = json.loads(gcs.read('method/robust/eval.json'))
  assert after['num_examples'] == 8 and 'pgd-2' in after['cascades'] and after != before


def test_pseudolabel_from_and_to_the_bucket(gcs, cwd, imported, method):
  del imported, method
  _run(gcs, cwd, 'trainer.pseudolabel', f'--classifier={gcs.url("method/classifier")}',
       f'--source={gcs.url("gen/imported.json")}', f'--out={gcs.url("gen/labelled")}',
       '--shards=2', '--batch_size=16')
  manifest = json.loads(gcs.read('gen/labelled.json'))
  assert manifest['count'] == NUM_IMPORTED and len(manifest['shards']) == 2
  local = list(shards.read_examples(_download_set(gcs, 'gen/labelled.json', cwd / 'labelled'),
                                    batch_size=NUM_IMPORTED))[0]
  assert np.all((local['score'] > 0) & (local['score'] <= 1))
  assert sorted(local['id'].tolist()) == list(range(NUM_IMPORTED))


def test_sample_a_bucket_generator_into_the_bucket(gcs, cwd):
  from models.diffusion import checkpoint, schedule, unet  # pylint: disable=g-import-not-at-top
  cfg = unet.UNetConfig(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8,),
                        down_block_types=('DownBlock2D',), up_block_types=('UpBlock2D',),
                        layers_per_block=1, norm_num_groups=4, num_class_embeds=10)
  checkpoint.save(gcs.url('gen/unet'), cfg, schedule.ho_linear(),
                  unet.init_params(unet.UNet(cfg), jax.random.key(0)), name='tiny-ddpm')
  proc = _run(gcs, cwd, 'trainer.sample', f'--generator={gcs.url("gen/unet")}', '--num=20',
              f'--out={gcs.url("gen/sampled")}', '--shards=2', '--sampler=ddim', '--steps=2',
              '--batch_size=8', '--noprogress')
  assert proc.stdout.strip().splitlines()[-1] == gcs.url('gen/sampled.json')
  local = list(shards.read_examples(_download_set(gcs, 'gen/sampled.json', cwd / 'sampled'),
                                    batch_size=20))[0]
  assert sorted(local['id'].tolist()) == list(range(20))
  np.testing.assert_array_equal(local['label'][np.argsort(local['id'])], np.arange(20) % 10)


def test_export_a_bucket_workdir_to_the_bucket(gcs, cwd):
  """RobustBench's 32x32 WRN (digits are 8x8): a workdir with random EMA weights saved to the
  bucket here, exported by the command to the bucket, read back equal to an export made here."""
  import torch  # pylint: disable=g-import-not-at-top
  from trainer.harness import checkpoints  # pylint: disable=g-import-not-at-top
  from trainer.harness import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from trainer.interop import export  # pylint: disable=g-import-not-at-top
  from trainer.robust import classifier  # pylint: disable=g-import-not-at-top
  config = base.get_config()
  config.model.name = 'wrn-16-2'
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(
      lambda a: rng.normal(0.0, 0.1, a.shape).astype(np.float32),
      classifier.abstract_state(config).ema_variables())
  workdir = gcs.url('cifar')
  workdir_lib.save_config(workdir, config)
  ckpt = checkpoints.Checkpoints(workdir, config, keeps_best=True)
  ckpt.maybe_save_best(5, variables, {'holdout/robust_accuracy': 0.5}, 'holdout/robust_accuracy')
  ckpt.close()
  _run(gcs, cwd, 'trainer.export', f'--workdir={workdir}', f'--out={gcs.url("export/m.pt")}')
  assert {'export/m.pt', 'export/m.json'} <= set(gcs.objects('export/'))
  exported = torch.load(io.BytesIO(gcs.read('export/m.pt')), weights_only=True)
  export.export(workdir, str(cwd / 'here.pt'))
  here = torch.load(cwd / 'here.pt', weights_only=True)
  assert exported.keys() == here.keys() and len(here) > 10
  for key, value in here.items():
    assert torch.equal(exported[key], value), key
  assert json.loads(gcs.read('export/m.json'))['architecture'] == json.loads(
      (cwd / 'here.json').read_text())['architecture']
