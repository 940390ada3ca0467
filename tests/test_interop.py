"""Export to RobustBench and import of DeepMind/RobustBench checkpoints, against RobustBench's code.

Random weights (BatchNorm statistics included) on either side; logits compared in eval mode on
random 32x32 images. The PyTorch classes come from robustbench's `dm_wide_resnet.py`, loaded by
path (tests/robustbench_models.py).
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
import robustbench_models  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import base  # pylint: disable=wrong-import-position
from data import real  # pylint: disable=wrong-import-position
from models import registry  # pylint: disable=wrong-import-position
from trainer.evaluation import evaluate  # pylint: disable=wrong-import-position
from trainer.harness import checkpoints  # pylint: disable=wrong-import-position
from trainer.harness import workdir as workdir_lib  # pylint: disable=wrong-import-position
from trainer.interop import checkpoint_import as import_checkpoint  # pylint: disable=wrong-import-position
from trainer.interop import export  # pylint: disable=wrong-import-position
from trainer.robust import classifier  # pylint: disable=wrong-import-position
from models.interop import robustbench as interop_layout  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-4


@pytest.fixture(scope='module')
def dm():
  try:
    return robustbench_models.load_architectures()
  except ImportError as e:
    pytest.skip(str(e))


def cifar_config(model_name):
  c = base.get_config()
  c.model.name = model_name
  return c


def torch_model(dm, model_name, *, num_classes=10, mean=None, std=None, channels=3, seed=0):
  """RobustBench's class for `model_name`: PyTorch's initialisation, random BatchNorm weights
  and statistics, a larger head."""
  info = real.info('cifar10')
  cls, kwargs = interop_layout.robustbench_constructor(
      model_name, num_classes=num_classes, mean=mean or info.mean, std=std or info.std)
  kwargs.update(activation_fn=dm.Swish, num_input_channels=channels)
  torch.manual_seed(seed)
  model = getattr(dm, cls)(**kwargs)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.1)
        module.running_mean.normal_(0.0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
        module.num_batches_tracked.fill_(11)
    # Logits of order 1, as a trained model's, so that 1e-4 is a tight tolerance.
    model.logits.weight.normal_(0.0, 3.0 / model.logits.in_features ** 0.5)
  return model.eval()


def random_variables(abstract, seed=0):
  """He-initialised kernels, random BatchNorm scale/bias/statistics, a small non-zero head
  (logits of order 1, as a trained model's)."""
  rng = np.random.default_rng(seed)
  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      gain = 0.1 if path[-2].key == 'head' else 2.0
      return (rng.normal(size=leaf.shape) * np.sqrt(gain / fan_in)).astype(np.float32)
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, abstract)


def images(n=2, size=32, channels=3, seed=1):
  return np.random.default_rng(seed).uniform(size=(n, size, size, channels)).astype(np.float32)


def torch_logits(model, x):
  with torch.no_grad():
    return model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()


def our_logits(workdir, x):
  _, model, variables = classifier.load(workdir)
  return np.asarray(model.apply(variables, x, train=False))


def assert_logits_equal(ours, theirs, what):
  diff = float(np.max(np.abs(ours - theirs)))
  print(f'{what}: max |logit difference| {diff:.2e} (logits up to {np.max(np.abs(theirs)):.3g}), '
        f'{ours.shape[0]} random 32x32 images, eval mode')
  assert ours.shape == theirs.shape and diff <= ATOL


def saved_workdir(path, config, variables, step=5):
  workdir = str(path)
  workdir_lib.save_config(workdir, config)
  ckpt = checkpoints.Checkpoints(workdir, config, with_data=True, keeps_best=True)
  ckpt.maybe_save_best(step, variables, {'holdout/robust_accuracy': 0.5},
                       'holdout/robust_accuracy')
  ckpt.close()
  return workdir


def _run(args, cwd, returncode=0):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  done = subprocess.run([sys.executable, '-m'] + args, cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  assert done.returncode == returncode, done.stdout + done.stderr
  return done


# --- Ours -> RobustBench -------------------------------------------------------------------------

@pytest.mark.parametrize('model_name,command_line', [
    pytest.param('wrn-16-2', True, marks=pytest.mark.integration),  # a command-line run
    ('preact-resnet-18', False)])
def test_export_loads_strictly_into_robustbench_with_equal_logits(dm, tmp_path, model_name,
                                                                   command_line):
  config = cifar_config(model_name)
  variables = random_variables(classifier.abstract_state(config).ema_variables())
  workdir = saved_workdir(tmp_path / 'run', config, variables, step=5)
  (tmp_path / 'run' / 'robustbench.json').write_text(json.dumps(
      {'clean_acc': '91.5', 'autoattack_acc': '65.25'}))  # as trainer.evaluate writes it
  out = str(tmp_path / 'export' / 'model.pt')
  if command_line:  # relative paths, from another working directory
    printed = _run(['trainer.export', '--workdir=run', '--out=export/model.pt'], tmp_path).stdout
    info = real.info('cifar10')
    cls, kwargs = interop_layout.robustbench_constructor(
        model_name, num_classes=10, mean=info.mean, std=info.std)
    assert f'{cls}(num_classes=10, depth=16, width=2, activation_fn=Swish' in printed
  else:
    cls, kwargs = export.export(workdir, out)

  kwargs['activation_fn'] = dm.Swish
  model = getattr(dm, cls)(**kwargs)
  state_dict = torch.load(out, weights_only=True)
  model.load_state_dict(state_dict, strict=True)
  model.eval()
  assert all(int(v) == 5 for k, v in state_dict.items() if k.endswith('num_batches_tracked'))
  x = images()
  theirs = torch_logits(model, x)
  ours = np.asarray(registry.from_config(config).apply(variables, x, train=False))
  assert_logits_equal(ours, theirs, f'{model_name} exported')

  # The same tensors as the models' own weight-copy helper gives.
  kind = interop_layout.architecture(model_name).kind
  for key, value in robustbench_models.to_torch(variables, kind).items():
    np.testing.assert_array_equal(state_dict[key].numpy(), value)

  info = json.loads((tmp_path / 'export' / 'model.json').read_text())
  assert info['dataset'] == 'cifar10' and info['eps'] == config.threat.eps
  assert info['architecture'] == interop_layout.architecture_name(model_name)
  assert info['clean_acc'] == '91.5' and info['autoattack_acc'] == '65.25'
  assert info['additional_data'] is False and info['number_forward_passes'] == 1


def test_export_refuses_what_robustbench_cannot_load(tmp_path):
  with pytest.raises(ValueError, match='width 1'):
    interop_layout.architecture('wrn-10-1')
  config = cifar_config('wrn-10-2')
  config.dataset.name = 'digits'
  with pytest.raises(ValueError, match='32x32'):
    export.check_image_shape(config)


# --- RobustBench / DeepMind -> ours --------------------------------------------------------------

@pytest.mark.parametrize('model_name', ['wrn-16-2', 'preact-resnet-18'])
def test_import_of_a_robustbench_state_dict_gives_equal_logits(dm, tmp_path, model_name):
  model = torch_model(dm, model_name)
  source = str(tmp_path / 'theirs.pt')
  torch.save({'state_dict': {f'module.{k}': v for k, v in model.state_dict().items()}}, source)
  workdir = str(tmp_path / 'imported')
  record = import_checkpoint.import_checkpoint(source, cifar_config(model_name), workdir)
  assert record['format'] == 'torch'
  x = images()
  assert_logits_equal(our_logits(workdir, x), torch_logits(model, x), f'{model_name} imported')
  best = json.loads(open(os.path.join(workdir, 'best.json')).read())
  assert best['step'] == 0 and best['metrics'] == {'holdout/robust_accuracy': -1.0}


@pytest.mark.integration
def test_wrn_28_10_round_trip_through_robustbench(dm, tmp_path):
  """Theirs -> ours -> theirs at WRN-28-10's real shapes (36.5M parameters), batch 2."""
  model = torch_model(dm, 'wrn-28-10')
  source = str(tmp_path / 'wrn.pt')
  torch.save(model.state_dict(), source)
  workdir = str(tmp_path / 'imported')
  import_checkpoint.import_checkpoint(source, cifar_config('wrn-28-10'), workdir)
  x = images()
  theirs = torch_logits(model, x)
  assert_logits_equal(our_logits(workdir, x), theirs, 'wrn-28-10 imported')

  out = str(tmp_path / 'exported.pt')
  cls, kwargs = export.export(workdir, out)
  kwargs['activation_fn'] = dm.Swish
  again = getattr(dm, cls)(**kwargs)
  again.load_state_dict(torch.load(out, weights_only=True), strict=True)
  assert_logits_equal(torch_logits(again.eval(), x), theirs, 'wrn-28-10 exported again')


def test_a_checkpoint_of_another_architecture_is_refused_by_key(dm, tmp_path):
  source = str(tmp_path / 'wrn.pt')
  torch.save(torch_model(dm, 'wrn-16-2').state_dict(), source)
  wrong = r"DMWideResNet-16-2 with 10 classes.*unexpected.*'init_conv.weight'"
  with pytest.raises(ValueError, match=wrong):
    import_checkpoint.read_variables(source, cifar_config('preact-resnet-18'))
  with pytest.raises(ValueError, match=r"'init_conv.weight' has shape \(32, 3, 3, 3\)"):
    config = cifar_config('wrn-16-2')
    interop_layout.from_torch({**torch_model(dm, 'wrn-16-2').state_dict(),
                               'init_conv.weight': torch.zeros(32, 3, 3, 3)},
                              classifier.abstract_state(config).ema_variables(), 'wrn-16-2')
  with pytest.raises(ValueError, match='unknown checkpoint format'):
    import_checkpoint.read_variables(str(tmp_path / 'model.safetensors'),
                                     cifar_config('wrn-16-2'))


def haiku_pair(torch_state_dict, depth):
  """DeepMind's Haiku (params, state) of a WideResNet, with its module names written out
  (adversarial_robustness/jax/model_zoo.py), filled from a DMWideResNet's tensors."""
  sd = {k: v.numpy() for k, v in torch_state_dict.items()}
  root = 'wide_res_net/~/'
  params, state = {}, {}
  def bn(module, prefix):
    c = sd[f'{prefix}.weight'].shape[0]
    params[module] = {'scale': sd[f'{prefix}.weight'].reshape(1, 1, 1, c),
                      'offset': sd[f'{prefix}.bias'].reshape(1, 1, 1, c)}
    for ours, theirs in (('mean', 'running_mean'), ('var', 'running_var')):
      state[f'{module}/~/{ours}_ema'] = {
          'average': sd[f'{prefix}.{theirs}'].reshape(1, 1, 1, c),
          'hidden': sd[f'{prefix}.{theirs}'].reshape(1, 1, 1, c), 'counter': np.int32(11)}
  hwio = lambda w: w.transpose(2, 3, 1, 0)
  params[root + 'init_conv'] = {'w': hwio(sd['init_conv.weight'])}
  for g in range(3):
    for b in range((depth - 4) // 6):
      module, prefix = f'{root}resnet_lay_{g}_block_{b}/~/', f'layer.{g}.block.{b}'
      for k in range(2):
        bn(f'{module}batchnorm_{k}', f'{prefix}.batchnorm_{k}')
        params[f'{module}conv_{k}'] = {'w': hwio(sd[f'{prefix}.conv_{k}.weight'])}
      if b == 0:
        params[f'{module}shortcut'] = {'w': hwio(sd[f'{prefix}.shortcut.weight'])}
  bn(root + 'batchnorm', 'batchnorm')
  params[root + 'logits'] = {'w': sd['logits.weight'].T, 'b': sd['logits.bias']}
  return params, state


def test_haiku_npy_needs_trust_pickle_and_then_imports_exactly(dm, tmp_path):
  model = torch_model(dm, 'wrn-16-2')
  source = str(tmp_path / 'cifar10_linf_wrn16-2_v2.npy')
  pair = np.empty(2, dtype=object)
  pair[:] = haiku_pair(model.state_dict(), depth=16)
  np.save(source, pair, allow_pickle=True)  # as DeepMind wrote theirs

  config = cifar_config('wrn-16-2')
  with pytest.raises(ValueError, match='--trust_pickle'):
    import_checkpoint.import_checkpoint(source, config, str(tmp_path / 'refused'))
  assert not os.path.exists(tmp_path / 'refused')

  workdir = str(tmp_path / 'imported')
  record = import_checkpoint.import_checkpoint(source, config, workdir, trust_pickle=True)
  assert record['format'] == 'haiku'
  x = images()
  assert_logits_equal(our_logits(workdir, x), torch_logits(model, x), 'wrn-16-2 from Haiku')

  missing = r"no (params|state) 'wide_res_net/~/resnet_lay_0_block_2/~/"
  with pytest.raises(ValueError, match=missing):
    import_checkpoint.read_variables(source, cifar_config('wrn-22-2'), trust_pickle=True)
  with pytest.raises(ValueError, match='WideResNets only'):
    import_checkpoint.read_variables(source, cifar_config('preact-resnet-18'), trust_pickle=True)


# --- Evaluate what comes in --------------------------------------------------------------------

def test_robustbench_record_of_an_evaluation():
  summary = {'dataset': 'cifar10', 'norm': 'linf', 'eps': 8 / 255, 'clean_accuracy': 0.91234,
             'num_examples': 100, 'model': 'wrn-28-10', 'checkpoint': 'best', 'step': 3,
             'cascades': {'aa+mt': {'robust_accuracy': 0.6},
                          'standard': {'robust_accuracy': 0.625}}}
  record = evaluate.robustbench_record(summary)
  assert record['threat_model'] == 'Linf' and record['autoattack_version'] == 'standard'
  assert record['clean_acc'] == '91.23' and record['autoattack_acc'] == '62.5'
  assert record['architecture'] == 'WideResNet-28-10' and record['n_examples'] == 100
  del summary['cascades']['standard']
  assert evaluate.robustbench_record(summary)['autoattack_acc'] is None




@pytest.mark.integration
def test_an_imported_model_evaluates_end_to_end_from_a_relative_workdir(dm, tmp_path):
  """DMWideResNet-10-2 for 8x8 grey digits, imported and attacked by the command-line tools."""
  info = real.info('digits')
  model = torch_model(dm, 'wrn-10-2', mean=info.mean, std=info.std, channels=1)
  torch.save(model.state_dict(), tmp_path / 'digits_wrn10-2.pt')
  config = os.path.join(REPO, 'configs', 'demo.py')
  _run(['trainer.import_checkpoint', '--source=digits_wrn10-2.pt', f'--config={config}',
        '--config.model.name=wrn-10-2', '--workdir=imported'], cwd=tmp_path)
  _run(['trainer.evaluate', '--workdir=imported', '--num_examples=16', '--attacks=pgd-5',
        '--batch_size=16'], cwd=tmp_path)
  summary = json.loads((tmp_path / 'imported' / 'eval.json').read_text())
  record = json.loads((tmp_path / 'imported' / 'robustbench.json').read_text())
  assert summary['step'] == 0 and summary['model'] == 'wrn-10-2'
  assert record['n_examples'] == 16 and record['dataset'] == 'digits'
  assert record['clean_acc'] == str(round(100 * summary['clean_accuracy'], 2))
  assert record['autoattack_acc'] is None  # only PGD-5 ran

  # What the command line refuses, it refuses in one line.
  pair = np.empty(2, dtype=object)
  pair[:] = ({}, {})
  np.save(tmp_path / 'haiku.npy', pair, allow_pickle=True)
  refused = _run(['trainer.import_checkpoint', '--source=haiku.npy', f'--config={config}',
                  '--workdir=refused'], cwd=tmp_path, returncode=1)
  assert refused.stderr.startswith('error: ') and '--trust_pickle' in refused.stderr
  refused = _run(['trainer.export', '--workdir=imported', '--out=digits.pt'], cwd=tmp_path,
                 returncode=1)
  assert '32x32' in refused.stderr

  # The evaluated weights are the file's (RobustBench's class pools 8x8 and cannot run on 8x8
  # digits, so the logits are compared at 32x32 in the tests above).
  imported = import_checkpoint.read_variables(str(tmp_path / 'digits_wrn10-2.pt'),
                                              _demo_config())[0]
  stored = classifier.load(str(tmp_path / 'imported'))[2]
  for a, b in zip(jax.tree_util.tree_leaves(imported), jax.tree_util.tree_leaves(stored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _demo_config():
  from configs import demo  # pylint: disable=g-import-not-at-top
  c = demo.get_config()
  c.model.name = 'wrn-10-2'
  return c


@pytest.mark.integration
def test_train_state_lets_trainer_fine_tune_the_imported_weights(dm, tmp_path):
  """checkpoints/0 is where `train_and_evaluate` resumes: one step at learning rate 0 keeps the
  imported weights (and so their average; only the BatchNorm statistics move)."""
  from trainer.robust import train  # pylint: disable=g-import-not-at-top
  info = real.info('digits')
  model = torch_model(dm, 'wrn-10-2', mean=info.mean, std=info.std, channels=1)
  source = str(tmp_path / 'digits.pt')
  torch.save(model.state_dict(), source)
  config = _demo_config()
  config.generated.alpha = 1.0
  config.train.batch_size = config.eval.batch_size = 64
  config.train.epoch_size = 64
  config.train.num_epochs = 1
  config.train.attack_steps = 1
  config.optim.lr_per_256 = 0.0
  config.eval.every_steps = config.checkpoint.every_steps = 1
  config.eval.pgd_steps = 1
  config.dataset.test_size = 64
  workdir = str(tmp_path / 'finetune')
  import_checkpoint.import_checkpoint(source, config, workdir, with_train_state=True)
  result = train.train_and_evaluate(config, workdir)
  assert result['step'] == 1 and result['finished']
  imported = import_checkpoint.read_variables(source, config)[0]
  _, _, averaged = classifier.load(workdir, 'latest')  # the EMA of the weights
  for a, b in zip(jax.tree_util.tree_leaves(imported['params']),
                  jax.tree_util.tree_leaves(averaged['params'])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
  assert json.loads(open(os.path.join(workdir, 'best.json')).read())['step'] == 1
