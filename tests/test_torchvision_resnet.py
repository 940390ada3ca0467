"""Our ResNets against torchvision's own `ResNet` class, and the import of RobustBench's ImageNet
ResNet-50 format (`models.interop.torchvision_resnet`, `trainer.import_checkpoint`).

torchvision's `resnet.py` and RobustBench's `normalize_model` are the installed packages' code,
loaded without their packages' `__init__` (tests/torchvision_models.py says why). Weights are
random, BatchNorm statistics included; logits are compared in eval mode (and in train mode, with
batch statistics, on a small model) on random images in [0, 1], the torch model wrapped in
RobustBench's normaliser exactly as `robustbench/model_zoo/imagenet.py` builds its ResNet-50s.
"""
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
import torchvision_models  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import base  # pylint: disable=wrong-import-position
from data import real  # pylint: disable=wrong-import-position
from models import registry  # pylint: disable=wrong-import-position
from models import resnet  # pylint: disable=wrong-import-position
from models.interop import torchvision_resnet  # pylint: disable=wrong-import-position
from trainer.evaluation import evaluate  # pylint: disable=wrong-import-position
from trainer.interop import checkpoint_import as import_checkpoint  # pylint: disable=wrong-import-position
from trainer.robust import classifier  # pylint: disable=wrong-import-position

# RobustBench's ImageNet normalisation (`mu`, `sigma` in model_zoo/imagenet.py).
MU = (0.485, 0.456, 0.406)
SIGMA = (0.229, 0.224, 0.225)
# float32 through 50 layers: observed ~1e-6 of the largest logit; a wrong padding, stride, BN or
# activation placement gives differences of the order of the logits themselves.
RTOL = 1e-5
TINY = (1, 1, 1, 1)  # one bottleneck block per stage: the same code as ResNet-50, fast to compile


@pytest.fixture(scope='module')
def tv():
  return torchvision_models.load_resnet()


@pytest.fixture(scope='module')
def normalize_model():
  return torchvision_models.load_normalize_model()


def torch_resnet(tv, normalize_model, layers=(3, 4, 6, 3), *, num_classes=1000, swish=False,
                 seed=0):
  """RobustBench's wrapped torchvision ResNet: PyTorch's initialisation, then random BatchNorm
  weights and statistics and a smaller head (the default one gives ResNet-50 logits of ~1,000)."""
  torch.manual_seed(seed)
  model = tv.ResNet(tv.Bottleneck, list(layers), num_classes=num_classes)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.1)
        module.running_mean.normal_(0.0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
        module.num_batches_tracked.fill_(7)
    model.fc.weight.normal_(0.0, 0.03 / model.fc.in_features ** 0.5)
  if swish:  # the same network with SiLU wherever torchvision applies its ReLU
    for parent in [model] + [m for m in model.modules() if isinstance(m, tv.Bottleneck)]:
      parent.relu = torch.nn.SiLU()
  return normalize_model(model, MU, SIGMA).eval()


def torch_logits(model, x, train=False):
  model.train(train)
  with torch.no_grad():
    out = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  model.eval()
  return out


def our_model(layers=(3, 4, 6, 3), num_classes=1000, activation='relu'):
  return resnet.ResNet(stage_sizes=layers, num_classes=num_classes, mean=MU, std=SIGMA,
                       activation=resnet.ACTIVATIONS[activation])


def abstract_variables(model, size=224):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, size, size, 3),
                                                                       np.float32), train=False))


def our_logits(model, variables, x, train=False):
  return np.asarray(jax.jit(lambda v, z: model.apply(v, z, train=train))(variables, x))


def images(n, size, seed=1):
  return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype(np.float32)


def assert_logits_equal(ours, theirs, what):
  scale = float(np.max(np.abs(theirs)))
  diff = float(np.max(np.abs(ours - theirs)))
  print(f'{what}: max |logit difference| {diff:.2e}, logits up to {scale:.3g}')
  assert ours.shape == theirs.shape
  assert diff <= RTOL * scale


@pytest.mark.integration  # ResNet-50 at 224x224 on both sides: ~7 s of CPU
def test_resnet50_logits_equal_torchvision_at_224(tv, normalize_model):
  """RobustBench's ImageNet ResNet-50 (torchvision's `resnet50` in `normalize_model`) and ours
  with its weights give the same logits on 224x224 images; every tensor is used and every
  parameter filled: the way back gives the same tensors, key for key."""
  theirs_model = torch_resnet(tv, normalize_model)
  reference = tv.resnet50()  # torchvision's own builder: the same keys and shapes
  assert {k: v.shape for k, v in reference.state_dict().items()} == {
      k.removeprefix('model.'): v.shape for k, v in theirs_model.state_dict().items()
      if k.startswith('model.')}
  state_dict = theirs_model.state_dict()
  model = registry.get_model('resnet-50', num_classes=1000, mean=MU, std=SIGMA)
  variables = torchvision_resnet.from_torch(state_dict, abstract_variables(model), 'resnet-50',
                                            mean=MU, std=SIGMA)
  x = images(2, 224)
  assert_logits_equal(our_logits(model, variables, x), torch_logits(theirs_model, x),
                      'resnet-50 at 224x224')

  back = torchvision_resnet.to_torch(variables, num_batches_tracked=7)
  bare = {k.removeprefix('model.'): v.numpy() for k, v in state_dict.items()
          if not k.startswith('normalize.')}
  assert sorted(back) == sorted(bare)
  for key, value in bare.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  ours_size = sum(leaf.size for leaf in jax.tree.leaves(variables))
  assert ours_size == sum(v.size for k, v in bare.items() if 'num_batches' not in k)


@pytest.mark.parametrize('size', [33, 40])
@pytest.mark.parametrize('train', [False, True])
def test_small_resnet_equals_torchvision_at_any_size(tv, normalize_model, size, train):
  """Odd and even sizes (PyTorch's symmetric padding, not XLA's 'SAME'), eval mode and train mode
  (batch statistics)."""
  theirs_model = torch_resnet(tv, normalize_model, TINY, num_classes=10)
  model = our_model(TINY, num_classes=10)
  variables = torchvision_resnet.from_torch(theirs_model.state_dict(),
                                            abstract_variables(model, size), 'tiny')
  x = images(4, size)
  assert_logits_equal(our_logits(model, variables, x, train),
                      torch_logits(theirs_model, x, train), f'{size}x{size}, train={train}')


def test_swish_resnet_equals_torchvision_with_silu(tv, normalize_model):
  """The paper's Swish variant: torchvision's network with SiLU in place of every ReLU."""
  theirs_model = torch_resnet(tv, normalize_model, TINY, num_classes=10, swish=True)
  model = our_model(TINY, num_classes=10, activation='swish')
  variables = torchvision_resnet.from_torch(theirs_model.state_dict(),
                                            abstract_variables(model, 64), 'tiny')
  x = images(2, 64)
  assert_logits_equal(our_logits(model, variables, x), torch_logits(theirs_model, x), 'swish')
  relu = our_logits(our_model(TINY, num_classes=10), variables, x)
  assert np.max(np.abs(relu - torch_logits(theirs_model, x))) > 100 * RTOL * np.max(np.abs(relu))


# --- Errors that name the key ------------------------------------------------------------------

@pytest.fixture(scope='module')
def resnet50_state_dict():
  """A torchvision ResNet-50 state_dict of zeros, from our layout (no torch model needed)."""
  model = registry.get_model('resnet-50', num_classes=1000, mean=MU, std=SIGMA)
  abstract = abstract_variables(model)
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, np.float32), abstract)
  return abstract, torchvision_resnet.to_torch(zeros)


def _from(state_dict, abstract, **kwargs):
  return torchvision_resnet.from_torch(state_dict, abstract, 'resnet-50', source='r50.pt',
                                       **kwargs)


def test_accepted_wrappings(resnet50_state_dict):
  abstract, state_dict = resnet50_state_dict
  without_counters = {k: v for k, v in state_dict.items() if 'num_batches' not in k}
  wrapped = {'normalize.mean': np.reshape(MU, (1, 3, 1, 1)),
             'normalize.std': np.reshape(SIGMA, (1, 3, 1, 1)),
             **{f'model.{k}': v for k, v in state_dict.items()}}
  madrylab = {'module.normalizer.new_mean': np.reshape(MU, (3, 1, 1)),
              'module.normalizer.new_std': np.reshape(SIGMA, (3, 1, 1)),
              **{f'module.model.{k}': v for k, v in state_dict.items()},
              **{f'module.attacker.model.{k}': v for k, v in state_dict.items()}}
  for variant in (without_counters, {f'module.{k}': v for k, v in state_dict.items()}, wrapped,
                  madrylab):
    _from(variant, abstract, mean=MU, std=SIGMA)
  madrylab['module.normalizer.new_std'] = np.ones((3, 1, 1))
  with pytest.raises(ValueError, match=r"key 'normalize\.std' is \[1\.0, 1\.0, 1\.0\]"):
    _from(madrylab, abstract, mean=MU, std=SIGMA)


def test_an_attacker_copy_that_differs_is_refused(resnet50_state_dict):
  abstract, state_dict = resnet50_state_dict
  madrylab = {**{f'module.model.{k}': v for k, v in state_dict.items()},
              **{f'module.attacker.model.{k}': v for k, v in state_dict.items()}}
  madrylab['module.attacker.model.fc.bias'] = np.ones(1000, np.float32)
  with pytest.raises(ValueError, match=r"r50\.pt: key 'attacker\.model\.fc\.bias' .* does not "
                                       r"equal 'model\.fc\.bias'"):
    _from(madrylab, abstract)


def test_missing_key_is_named(resnet50_state_dict):
  abstract, state_dict = resnet50_state_dict
  broken = {k: v for k, v in state_dict.items() if k != 'layer3.2.bn2.running_var'}
  with pytest.raises(ValueError, match=r"r50\.pt does not fit resnet-50: it is a torchvision "
                                       r"ResNet-50 with 1000 classes; missing key\(s\) "
                                       r"\['layer3\.2\.bn2\.running_var'\]\. Set"):
    _from(broken, abstract)


def test_unexpected_key_is_named(resnet50_state_dict):
  abstract, state_dict = resnet50_state_dict
  with pytest.raises(ValueError, match=r"unexpected key\(s\) \['layer1\.0\.conv4\.weight'\]"):
    _from({**state_dict, 'layer1.0.conv4.weight': np.zeros((1,))}, abstract)


def test_wrong_shape_is_named_with_what_the_file_holds(resnet50_state_dict):
  abstract, state_dict = resnet50_state_dict
  ten = {**state_dict, 'fc.weight': np.zeros((10, 2048))}
  with pytest.raises(ValueError, match=r"key 'fc\.weight' has shape \(10, 2048\); resnet-50 "
                                       r"needs \(1000, 2048\).*ResNet-50 with 10 classes"):
    _from(ten, abstract)


def test_another_depth_is_named(resnet50_state_dict):
  abstract, _ = resnet50_state_dict
  r101 = registry.get_model('resnet-101', num_classes=1000, mean=MU, std=SIGMA)
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, np.float32), abstract_variables(r101, 32))
  with pytest.raises(ValueError, match=r'it is a torchvision ResNet-101 with 1000 classes.*'
                                       r"unexpected key\(s\) \['layer3\.\d+\..* and \d+ more"):
    _from(torchvision_resnet.to_torch(zeros), abstract)


def test_other_normalisation_is_refused(resnet50_state_dict):
  abstract, state_dict = resnet50_state_dict
  wrapped = {'normalize.mean': np.reshape((0.5, 0.5, 0.5), (1, 3, 1, 1)),
             'normalize.std': np.reshape(SIGMA, (1, 3, 1, 1)),
             **{f'model.{k}': v for k, v in state_dict.items()}}
  with pytest.raises(ValueError, match=r"key 'normalize\.mean' is \[0\.5, 0\.5, 0\.5\]"):
    _from(wrapped, abstract, mean=MU, std=SIGMA)


# --- trainer.import_checkpoint and trainer.evaluate, end to end -----------------------------------

N_TEST = 2


@pytest.fixture
def imagenet_shaped(monkeypatch):
  """A 1,000-class 224x224 dataset made in the test, under RobustBench's ImageNet statistics;
  its test split is filled in by the test."""
  name = 'imagenet-shaped-test'
  fake = real.DatasetInfo(1000, (224, 224, 3), MU, SIGMA)
  known = real.info
  monkeypatch.setattr(real, 'info', lambda d: fake if getattr(d, 'name', d) == name else known(d))
  splits = {}
  monkeypatch.setattr(real, 'load', lambda dataset, split, data_dir='', stop=None:
                      {k: v[:stop] for k, v in splits[split].items()})
  config = base.get_config()
  config.dataset.name = name
  config.model.name = 'resnet-50'
  config.threat.eps = 4 / 255  # the paper's ImageNet radius (App. B)
  config.eval.batch_size = N_TEST
  return config, splits


@pytest.mark.integration
def test_robustbench_resnet50_imports_and_evaluates(tv, normalize_model, imagenet_shaped,
                                                    tmp_path):
  """A RobustBench-format ImageNet ResNet-50 file (random weights) through trainer.import_checkpoint
  and trainer.evaluate: the imported model classifies the test images as torch's does (labels are
  torch's predictions, so clean accuracy is 100%), and the attack runs on it."""
  config, splits = imagenet_shaped
  theirs_model = torch_resnet(tv, normalize_model)
  pixels = np.round(images(N_TEST, 224, seed=3) * 255).astype(np.uint8)
  x = pixels.astype(np.float32) / 255
  splits['test'] = {'image': pixels, 'label': np.argmax(torch_logits(theirs_model, x), axis=1)}
  # As RobustBench's downloads hold them: the bare torchvision keys, under 'state_dict'.
  source = str(tmp_path / 'Salman2020Do_R50.pt')
  bare = {k.removeprefix('model.'): v for k, v in theirs_model.state_dict().items()
          if k.startswith('model.')}
  torch.save({'state_dict': bare}, source)
  workdir = str(tmp_path / 'imported')

  record = import_checkpoint.import_checkpoint(source, config, workdir)
  assert record['format'] == 'torch' and record['model'] == 'resnet-50'
  _, model, variables = classifier.load(workdir)
  assert_logits_equal(our_logits(model, variables, x), torch_logits(theirs_model, x),
                      'imported resnet-50')

  summary = evaluate.evaluate(config, workdir, attacks='pgd-3')
  assert summary['clean_accuracy'] == 1.0
  print(evaluate.format_table(summary))
  robust = summary['cascades']['pgd-3']['robust_accuracy']
  assert 0.0 <= robust <= 1.0
  assert os.path.exists(os.path.join(workdir, 'eval.json'))


def test_failed_import_writes_nothing(imagenet_shaped, tmp_path):
  config, _ = imagenet_shaped
  source = str(tmp_path / 'r18.pt')
  torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7), 'fc.weight': torch.zeros(1000, 512)},
             source)
  workdir = tmp_path / 'imported'
  with pytest.raises(ValueError, match=r'r18\.pt does not fit resnet-50.*missing key'):
    import_checkpoint.import_checkpoint(source, config, str(workdir))
  assert not workdir.exists()
