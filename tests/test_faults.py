"""Faults and mistakes (docs/reliability.md): each gets one console line and a non-zero exit, and
nothing already saved is lost or changed."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import trainer_runs
from trainer import cli
from trainer.harness import checkpoints
from trainer.harness import loop
from trainer.harness import workdir as workdir_lib
from trainer.robust import classifier

CONFIG = os.path.join(trainer_runs.ROOT, 'configs', 'demo.py')


def _tiny_config():
  return trainer_runs.config(trainer_runs.tiny_overrides(steps=2))


# --- Mistakes on the command line ----------------------------------------------------------------

def test_a_near_typo_of_a_key_is_one_line_with_the_suggestion():
  config = ml_collections.ConfigDict({'train': {'num_epochs': 1}})
  with pytest.raises(AttributeError) as raised:
    config.train.num_epoch  # pylint: disable=pointless-statement  (ml_collections' own error)
  message = cli.unknown_key_message(['main', '--config.train.num_epoch=2'], raised.value)
  assert message == ("unknown config key in --config.train.num_epoch=2: 'num_epoch' is not a key "
                     "of the config (did you mean 'num_epochs'? every key is documented in "
                     'configs/base.py)')


@pytest.mark.integration
def test_the_typo_on_the_command_line(tmp_path):
  proc = trainer_runs.run_command(str(tmp_path), 'trainer.main', f'--config={CONFIG}',
                                  '--config.train.num_epoch=2', '--workdir=runs/x')
  trainer_runs.one_line_error(proc, "'num_epoch'", "did you mean 'num_epochs'?")
  assert not (tmp_path / 'runs').exists()


# --- Non-finite weights -------------------------------------------------------------------------

def _workdir_with_nan_best(workdir):
  config = _tiny_config()
  abstract = classifier.abstract_state(config).ema_variables()
  nan = jax.tree_util.tree_map(lambda a: jnp.full(a.shape, jnp.nan, a.dtype), abstract)
  workdir_lib.save_config(workdir, config)
  ckpt = checkpoints.Checkpoints(workdir, config, keeps_best=True)
  ckpt.maybe_save_best(6, nan, {'holdout/robust_accuracy': 0.1}, 'holdout/robust_accuracy')
  ckpt.close()
  return config


def test_non_finite_weights_are_refused_for_evaluation(tmp_path):
  _workdir_with_nan_best(str(tmp_path))
  with pytest.raises(loop.NonFiniteError, match="the 'best' checkpoint .* non-finite EMA weights"):
    classifier.load(str(tmp_path))


@pytest.mark.integration
def test_evaluate_on_non_finite_weights_is_one_line(tmp_path):
  _workdir_with_nan_best(str(tmp_path / 'nan'))
  proc = trainer_runs.run_command(str(tmp_path), 'trainer.evaluate', '--workdir=nan',
                                  '--num_examples=8')
  trainer_runs.one_line_error(proc, 'non-finite EMA weights')
  assert not (tmp_path / 'nan' / 'eval.json').exists()


@pytest.mark.integration
def test_diverging_training_never_saves_nan_weights_as_best(tmp_path):
  """A learning rate of 1e6: the evaluation of step 6 came before the loss check of step 8 and
  saved all-NaN weights as best/6; now the weights are checked first, and the run stops."""
  overrides = trainer_runs.tiny_overrides(steps=12, **{
      'optim.lr_per_256': 1e6, 'train.log_every_steps': 8, 'eval.every_steps': 3,
      'checkpoint.every_steps': 3})
  proc = trainer_runs.run_command(str(tmp_path), 'trainer.main', f'--config={CONFIG}',
                                  '--workdir=runs/nan',
                                  *[f'--config.{k}={v}' for k, v in overrides.items()])
  trainer_runs.one_line_error(proc, 'Non-finite')
  if (tmp_path / 'runs' / 'nan' / 'best.json').exists():  # an early evaluation may be finite
    config = trainer_runs.config(overrides)
    variables = checkpoints.read_best(str(tmp_path / 'runs' / 'nan'),
                                      classifier.abstract_state(config).ema_variables())
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree_util.tree_leaves(variables))
  assert not (tmp_path / 'runs' / 'nan' / 'done.json').exists()


# --- Torn files ----------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['eval.json', 'done.json', 'config.json'])
def test_a_torn_json_file_names_itself(tmp_path, name):
  (tmp_path / name).write_text('{"final": {"test/clean_accuracy": 0.')
  with pytest.raises(ValueError, match=f'{name} is not valid JSON .* delete it'):
    {'eval.json': lambda: workdir_lib.read_json(tmp_path / name),
     'done.json': lambda: workdir_lib.read_done(tmp_path),
     'config.json': lambda: workdir_lib.load_config(tmp_path)}[name]()


# --- Two runs on one workdir ---------------------------------------------------------------------

@pytest.mark.integration
def test_a_second_run_on_a_busy_workdir_is_refused_and_the_first_finishes(tmp_path):
  overrides = [f'--config.{k}={v}' for k, v in trainer_runs.tiny_overrides(steps=30).items()]
  first = trainer_runs.launch(str(tmp_path / 'runs' / 'x'), trainer_runs.tiny_overrides(steps=30),
                              trainer_runs.env(2, tmp_path / 'cache'), str(tmp_path / 'log'))
  trainer_runs.wait_until(lambda: trainer_runs.last_step_logged(str(tmp_path / 'runs' / 'x')) >= 1,
                          first, timeout=600)
  second = trainer_runs.run_command(str(tmp_path), 'trainer.main', f'--config={CONFIG}',
                                    '--workdir=runs/x', *overrides)
  trainer_runs.one_line_error(second, 'is in use by another run', f'pid {first.pid}')
  assert trainer_runs.finish(first) == 0, trainer_runs.log_tail(first)
  assert (tmp_path / 'runs' / 'x' / 'done.json').exists()
  assert not (tmp_path / 'runs' / 'x' / 'lease.json').exists()


# --- A full disk ---------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
  """A 3 MB tmpfs (root only; skipped with the reason where mounting is not allowed)."""
  mount = tmp_path / 'disk'
  mount.mkdir()
  proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', str(mount)],
                        capture_output=True, text=True)
  if proc.returncode:
    pytest.skip(f'cannot mount a small tmpfs here: {proc.stderr.strip()}')
  yield mount
  subprocess.run(['umount', '-l', str(mount)], check=False)


def _grow(disk, megabytes):
  subprocess.run(['mount', '-o', f'remount,size={megabytes}m', str(disk)], check=True)


@pytest.mark.integration
def test_a_disk_full_at_the_start_is_one_line_and_leaves_nothing(small_disk, tmp_path):
  subprocess.run(['dd', 'if=/dev/zero', f'of={small_disk / "filler"}', 'bs=64k'],
                 capture_output=True, check=False)                      # until the disk is full
  proc = trainer_runs.run_command(str(tmp_path), 'trainer.main', f'--config={CONFIG}',
                                  f'--workdir={small_disk / "x"}', *_tiny_args(4))
  trainer_runs.one_line_error(proc, 'No space left on device', 'the disk is full')
  leftovers = [p.name for p in (small_disk / 'x').iterdir() if p.name != 'logs']
  assert leftovers == [], leftovers      # no lease, no config.json.tmp-PID


@pytest.mark.integration
def test_a_disk_that_fills_mid_run_keeps_the_last_checkpoint(small_disk, tmp_path):
  """The disk fills during a checkpoint save: one line, the checkpoints before it intact; with
  room again, the same command resumes from the last of them and finishes."""
  workdir = small_disk / 'x'
  proc = trainer_runs.run_command(str(tmp_path), 'trainer.main', f'--config={CONFIG}',
                                  f'--workdir={workdir}', *_tiny_args(18))
  trainer_runs.one_line_error(proc, 'No space left on device', 'the disk is full')
  saved = trainer_runs.committed_steps(str(workdir / 'checkpoints'))
  assert saved and max(saved) < 18
  _grow(small_disk, 64)
  rerun = trainer_runs.run_command(str(tmp_path), 'trainer.main', f'--config={CONFIG}',
                                   f'--workdir={workdir}', *_tiny_args(18))
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert json.loads((workdir / 'done.json').read_text())['step'] == 18
  assert not list(workdir.glob('**/*.orbax-checkpoint-tmp*'))


def _tiny_args(steps):
  return [f'--config.{k}={v}' for k, v in trainer_runs.tiny_overrides(steps).items()]


# --- gs:// paths without credentials -------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize('command,args,named', [
    ('trainer.main', [f'--config={CONFIG}', '--config.generated.path=gs://no-bucket/set.json',
                      '--workdir=runs/x'], 'gs://no-bucket/set.json (--config.generated.path)'),
    ('trainer.evaluate', ['--workdir=gs://no-bucket/runs/x'], 'gs://no-bucket/runs/x (--workdir)'),
    ('trainer.import_npz', ['--npz=gs://no-bucket/set.npz', '--out=gen/x', '--shards=2'],
     'gs://no-bucket/set.npz (--npz)'),
], ids=['generated-path', 'evaluate-workdir', 'import-npz'])
def test_a_gs_path_without_credentials_is_one_line(tmp_path, command, args, named):
  if cli.has_gcs_credentials():
    pytest.skip('this machine has Google Cloud credentials')
  proc = trainer_runs.run_command(str(tmp_path), command, *args)
  trainer_runs.one_line_error(proc, f'cannot read {named}', 'no Google Cloud credentials',
                              'gcloud auth application-default login')
  assert not (tmp_path / 'runs').exists() and not (tmp_path / 'gen').exists()


# --- Short shards --------------------------------------------------------------------------------

@pytest.mark.integration
def test_training_on_a_cut_shard_stops_in_one_line_naming_it(tmp_path):
  """A shard cut at a record boundary (CRCs intact) used to train to exit 0, 40 records short."""
  from data.generation import import_npz  # pylint: disable=g-import-not-at-top
  from data.records import tfrecord  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  np.savez(tmp_path / 'set.npz', image=rng.integers(0, 256, (200, 8, 8, 1), dtype=np.uint8),
           label=rng.integers(0, 10, 200))
  manifest = import_npz.import_npz(str(tmp_path / 'set.npz'), str(tmp_path / 'gen' / 'set'),
                                   num_shards=2, progress=False)
  cut = str(tmp_path / 'gen' / 'set-00001-of-00002.tfrecord')
  tfrecord.write_records(cut, list(tfrecord.read_records(cut))[:60])
  overrides = trainer_runs.tiny_overrides(steps=30, **{
      'generated.alpha': 0.5, 'generated.path': manifest, 'generated.shuffle_window': 1,
      'checkpoint.every_steps': 100})
  proc = trainer_runs.run_command(str(tmp_path), 'trainer.main', f'--config={CONFIG}',
                                  '--workdir=runs/x',
                                  *[f'--config.{k}={v}' for k, v in overrides.items()])
  trainer_runs.one_line_error(proc, 'set-00001-of-00002.tfrecord',
                              'ends after 60 records, its manifest counts 100')
  assert not (tmp_path / 'runs' / 'x' / 'done.json').exists()


# --- Commands pointed at the wrong place, optional packages ---------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize('where', ['missing', 'empty'])
def test_evaluate_on_a_workdir_without_a_run_is_one_line(tmp_path, where):
  if where == 'empty':
    (tmp_path / 'runs' / 'x').mkdir(parents=True)
  proc = trainer_runs.run_command(str(tmp_path), 'trainer.evaluate', '--workdir=runs/x')
  trainer_runs.one_line_error(proc, 'No config.json in workdir', 'runs/x',
                              'is it a training workdir?')
  assert not (tmp_path / 'runs' / 'x' / 'eval.json').exists()


@pytest.mark.integration
def test_export_without_pytorch_is_one_line(tmp_path):
  """An environment whose `import torch` fails, as one without PyTorch does."""
  (tmp_path / 'no_torch' / 'torch').mkdir(parents=True)
  (tmp_path / 'no_torch' / 'torch' / '__init__.py').write_text(
      "raise ImportError('No module named torch')\n")
  environ = trainer_runs.env(2, str(tmp_path / 'jax-cache'))
  environ['PYTHONPATH'] = f"{tmp_path / 'no_torch'}{os.pathsep}{trainer_runs.ROOT}"
  proc = subprocess.run([sys.executable, '-m', 'trainer.export', '--workdir=runs/x',
                         '--out=model.pt'], cwd=tmp_path, env=environ, capture_output=True,
                        text=True, timeout=300)
  trainer_runs.one_line_error(proc, 'trainer.export needs PyTorch, which is not installed',
                              'pip install torch==')
  assert not (tmp_path / 'model.pt').exists()
