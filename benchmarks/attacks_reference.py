"""AutoAttack "standard" against fra31/auto-attack's own code, over model families, in one process.

  python -m benchmarks.attacks_reference --reference=DIR [--families=cnn-nhwc,cnn-nchw,...]
      [--n 100] [--batch_size 100] [--train_steps 300] [--torch_threads N] [--no_warm]
      [--cache_dir DIR] [--gradient_only]

DIR is a checkout of github.com/fra31/auto-attack (the directory holding the `autoattack`
package); it is put on sys.path at run time and never copied here. Every family is attacked by
both sides, one after the other, on the same weights and the same points:

  cnn-nhwc      conv 32-32, max-pool, conv 64-64, max-pool, dense 200-200-10, ReLU (the classic
                MNIST CNN of Carlini & Wagner), 28×28×1, written NHWC, passed as
                `Partial(apply, params)`; L∞ ε = 0.15 (`--cnn_eps`)
  cnn-nchw      the same network as a PyTorch port writes it: NCHW convolutions, (C, H, W)
                flattening; `Partial`
  cnn-closure   the NHWC network as a plain closure over its weights (they become constants of
                every program)
  wrn           the project's WideResNet (`--wrn`, default wrn-10-2), 32×32×3,
                `Partial(model.apply, variables)`; ε = 8/255
  resnet-18     the project's pre-activation ResNet-18 (DeepMind's), 32×32×3; ε = 8/255

The weights are trained here, briefly, so that most points stay robust at the family's usual ε
(random weights would leave every stage but the first nothing to do): FGSM with a random start
(Wong et al. 2020: one signed step of 1.25ε from a uniform point of the ball; PGD for the CNN
with `--cnn_attack_steps` > 1) on scikit-learn's digits, resized to the family's input (grey
copied to 3 channels for 32×32×3), `--train_steps` steps of Adam at batch 64 (a third of them
for ResNet-18); the test points are digits the training never saw, labelled with their true
class. The CNN's ε is the project's for digits (configs/demo.py), not MNIST's 0.3: 1,497 digits
do not give a model robust at 0.3 in a few hundred steps (FGSM-trained at 0.3 for 300 steps: 90%
clean, 0% after APGD-CE). Trained weights are kept in `--cache_dir` (default: a folder in the
system's temporary directory) and reused. The torch side is the same network in PyTorch: the CNN as
`torch.nn.Sequential`, the WRN and ResNet-18 as RobustBench's `DMWideResNet`/`DMPreActResNet`
with our weights in their layout; their logits are checked to agree.

fra31 runs `AutoAttack(version='standard').run_standard_evaluation(bs=batch_size)`, its per-stage
seconds and robust accuracy read from its own log lines. Ours runs `autoattack(version='standard',
batch_size=batch_size)` cold (XLA compilation included) and warm. The last column is Square's
per-query overhead: one query inside its compiled loop (the loop of 1 + K queries less the loop
of 1, over K) divided by one jitted forward pass of the same batch (the points left for Square),
measured back to back in this process, median of three alternations, in process CPU time
(less disturbed by other jobs on a shared machine than wall-clock) and wall-clock.

--gradient_only times, per family, one APGD step's work alone: the input gradient of the summed
cross-entropy over the clean-correct points, jitted on our side and eager on torch's, the median
of ten after a warm-up; it says whether a stage slower than fra31's is slow in the model's
arithmetic (XLA:CPU against PyTorch's kernels) or around it.
"""
import argparse
import hashlib
import importlib
import importlib.util
import io
import os
import platform
import re
import resource
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from data import files
from trainer.attacks.autoattack import autoattack

STAGES = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
FAMILIES = ('cnn-nhwc', 'cnn-nchw', 'cnn-closure', 'wrn', 'resnet-18')
CNN_EPS, CIFAR_EPS = 0.15, 8 / 255
_MEAN3, _STD3 = (0.3054,) * 3, (0.3758,) * 3   # digits' mean/std (data.real), per channel


# ---------------------------------------------------------------------------------------------
# Points.
# ---------------------------------------------------------------------------------------------

def digits(side, channels):
  """scikit-learn's digits, bilinearly resized from 8×8 to side×side, NHWC in [0, 1]; the last
  300 images (in the dataset's order) are the test split."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  data = load_digits()
  images = jnp.asarray(data.images[:, :, :, None] / 16.0, jnp.float32)
  x = np.clip(np.asarray(jax.image.resize(images, (len(images), side, side, 1), 'linear')), 0, 1)
  x = np.repeat(x, channels, axis=3)
  y = data.target.astype(np.int32)
  return (x[:-300], y[:-300]), (x[-300:], y[-300:])


# ---------------------------------------------------------------------------------------------
# The CNN, in JAX (NHWC or NCHW) and in torch.
# ---------------------------------------------------------------------------------------------

def cnn_init(seed=0):
  """He-normal weights: HWIO kernels, dense (in, out) with the first layer's inputs in (C, H, W)
  order, as torch flattens."""
  r = np.random.RandomState(seed)
  conv, cin = [], 1
  for cout in (32, 32, 64, 64):
    conv.append((r.randn(3, 3, cin, cout) * np.sqrt(2 / (9 * cin)), np.zeros(cout)))
    cin = cout
  dense = [(r.randn(a, b) * np.sqrt(2 / a), np.zeros(b)) for a, b in
           ((1024, 200), (200, 200), (200, 10))]
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32),
                                {'conv': conv, 'dense': dense})


def _dense_head(params, h):
  for i, (kernel, bias) in enumerate(params['dense']):
    h = h @ kernel + bias
    if i < len(params['dense']) - 1:
      h = jax.nn.relu(h)
  return h


def cnn_nhwc(params, x):
  h = x
  for i, (kernel, bias) in enumerate(params['conv']):
    h = jax.lax.conv_general_dilated(h, kernel, (1, 1), 'VALID',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    h = jax.nn.relu(h + bias)
    if i % 2:
      h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
  return _dense_head(params, h.transpose(0, 3, 1, 2).reshape(h.shape[0], -1))


def cnn_nchw(params, x):
  """As a PyTorch port writes it: the input transposed once, OIHW kernels, NCHW throughout."""
  h = x.transpose(0, 3, 1, 2)
  for i, (kernel, bias) in enumerate(params['conv']):
    h = jax.lax.conv_general_dilated(h, kernel, (1, 1), 'VALID',
                                     dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
    h = jax.nn.relu(h + bias[None, :, None, None])
    if i % 2:
      h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), 'VALID')
  return _dense_head(params, h.reshape(h.shape[0], -1))


def to_oihw(params):
  return dict(params, conv=[(k.transpose(3, 2, 0, 1), b) for k, b in params['conv']])


def cnn_torch(params):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  model = nn.Sequential(
      nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
      nn.Flatten(), nn.Linear(1024, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
      nn.Linear(200, 10))
  layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
  arrays = [(np.asarray(k).transpose(3, 2, 0, 1), b) for k, b in params['conv']]
  arrays += [(np.asarray(k).T, b) for k, b in params['dense']]
  with torch.no_grad():
    for layer, (weight, bias) in zip(layers, arrays):
      layer.weight.copy_(torch.tensor(np.ascontiguousarray(weight)))
      layer.bias.copy_(torch.tensor(np.asarray(bias)))
  return model.eval()


# ---------------------------------------------------------------------------------------------
# The project's WRN and ResNet-18, in JAX and as RobustBench's torch classes.
# ---------------------------------------------------------------------------------------------

def _layout():
  """Our variables in RobustBench's layout (moving from trainer/ to models/interop/)."""
  for name in ('models.interop.robustbench', 'trainer.interop_layout'):
    try:
      return importlib.import_module(name)
    except ImportError:
      continue
  raise ImportError('No module maps our variables to RobustBench (models.interop.robustbench).')


def robustbench_torch(model_name, variables):
  """RobustBench's DMWideResNet / DMPreActResNet holding `variables` (its file, loaded by path:
  importing the robustbench package pulls in torchvision)."""
  import torch  # pylint: disable=g-import-not-at-top
  layout = _layout()
  spec = importlib.util.find_spec('robustbench')
  if spec is None:
    raise SystemExit('robustbench is not installed (pip install --no-deps robustbench).')
  path = os.path.join(spec.submodule_search_locations[0], 'model_zoo', 'architectures',
                      'dm_wide_resnet.py')
  module_spec = importlib.util.spec_from_file_location('dm_wide_resnet', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  name, kwargs = layout.robustbench_constructor(model_name, num_classes=10, mean=_MEAN3,
                                                std=_STD3)
  kwargs['activation_fn'] = getattr(module, kwargs['activation_fn'])  # 'Swish': a class there
  model = getattr(module, name)(**kwargs)
  state = {k: torch.tensor(v) for k, v in layout.to_torch(variables, model_name).items()}
  model.load_state_dict(state)
  return model.eval()


# ---------------------------------------------------------------------------------------------
# Training (FGSM with a random start), cached.
# ---------------------------------------------------------------------------------------------

def adversarial_train(loss_fn, params, state, x, y, *, eps, steps, attack_steps, seed, lr=1e-3,
                      batch=64):
  """Adam on adversarial batches: FGSM from a uniform start (one signed step of 1.25ε) when
  attack_steps is 1, else PGD (signed steps of 2.5ε/attack_steps from a uniform start).
  loss_fn(params, state, x, y) -> (loss, new_state); returns the trained (params, state)."""
  optimizer = optax.adam(lr)
  opt_state = optimizer.init(params)
  step_size = 1.25 * eps if attack_steps == 1 else 2.5 * eps / attack_steps

  @jax.jit
  def step(params, state, opt_state, xb, yb, key):
    delta = jax.random.uniform(key, xb.shape, minval=-eps, maxval=eps)
    for _ in range(attack_steps):
      grad_x = jax.grad(lambda z: loss_fn(params, state, z, yb)[0])(jnp.clip(xb + delta, 0, 1))
      delta = jnp.clip(delta + step_size * jnp.sign(grad_x), -eps, eps)
    (_, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, state, jnp.clip(xb + delta, 0, 1), yb)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), state, opt_state

  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  for i in range(steps):
    rows = rng.choice(len(x), batch, replace=False)
    params, state, opt_state = step(params, state, opt_state, x[rows], y[rows],
                                    jax.random.fold_in(key, i))
  return params, state


def _cached(cache_dir, tag, build):
  """build() -> pytree, saved under `tag` in cache_dir (npz of its leaves) and reused."""
  os.makedirs(cache_dir, exist_ok=True)
  path = os.path.join(cache_dir, hashlib.sha1(tag.encode()).hexdigest()[:16] + '.npz')
  tree = build(None)
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  if os.path.exists(path):
    with np.load(path) as saved:
      return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(saved[f'a{i}'])
                                                    for i in range(len(leaves))])
  tree = build(tree)
  buffer = io.BytesIO()
  leaves = jax.tree_util.tree_leaves(tree)
  np.savez(buffer, **{f'a{i}': np.asarray(a) for i, a in enumerate(leaves)})
  files.write_atomic(path, buffer.getvalue())
  return tree


def trained_cnn(args):
  (x, y), _ = digits(28, 1)
  def build(params):
    if params is None:
      return cnn_init()
    loss = lambda p, s, z, t: (jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        cnn_nhwc(p, z), t)), s)
    return adversarial_train(loss, params, None, x, y, eps=args.cnn_eps, steps=args.train_steps,
                             attack_steps=args.cnn_attack_steps, seed=0)[0]
  return _cached(args.cache_dir,
                 f'cnn-{args.train_steps}-{args.cnn_eps}-{args.cnn_attack_steps}', build)


def trained_resnet(args, model_name):
  from models.registry import get_model  # pylint: disable=g-import-not-at-top
  model = get_model(model_name, num_classes=10, mean=_MEAN3, std=_STD3)
  (x, y), _ = digits(32, 3)
  def build(variables):
    if variables is None:
      return model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    def loss(p, stats, z, t):
      logits, new = model.apply({'params': p, 'batch_stats': stats}, z, train=True,
                                mutable=['batch_stats'])
      return (jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, t)),
              new['batch_stats'])
    steps = args.train_steps if model_name != 'preact-resnet-18' else args.train_steps // 3
    params, stats = adversarial_train(loss, variables['params'], variables['batch_stats'], x, y,
                                      eps=CIFAR_EPS, steps=steps, attack_steps=1, seed=0)
    return {'params': params, 'batch_stats': stats}
  variables = _cached(args.cache_dir, f'{model_name}-{args.train_steps}', build)
  apply = lambda v, z: model.apply(v, z, train=False)
  return jax.tree_util.Partial(apply, variables), robustbench_torch(model_name, variables)


def family(name, args):
  """(description, jax logits_fn, torch model, side, channels, eps)."""
  if name.startswith('cnn'):
    params = trained_cnn(args)
    if name == 'cnn-nhwc':
      logits_fn = jax.tree_util.Partial(cnn_nhwc, params)
    elif name == 'cnn-nchw':
      logits_fn = jax.tree_util.Partial(cnn_nchw, to_oihw(params))
    elif name == 'cnn-closure':
      logits_fn = lambda z: cnn_nhwc(params, z)
    else:
      raise SystemExit(f'Unknown family {name!r}; known: {", ".join(FAMILIES)}.')
    return name, logits_fn, cnn_torch(params), 28, 1, args.cnn_eps
  model_name = {'wrn': args.wrn, 'resnet-18': 'preact-resnet-18'}.get(name)
  if model_name is None:
    raise SystemExit(f'Unknown family {name!r}; known: {", ".join(FAMILIES)}.')
  logits_fn, torch_model = trained_resnet(args, model_name)
  return model_name, logits_fn, torch_model, 32, 3, CIFAR_EPS


# ---------------------------------------------------------------------------------------------
# The two cascades, and Square's per-query overhead.
# ---------------------------------------------------------------------------------------------

_AFTER = re.compile(r'robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)')


def run_reference(reference_dir, model, x, y, *, eps, batch_size):
  """fra31's AutoAttack 'standard'; per-stage seconds and robust accuracy from its log."""
  import torch  # pylint: disable=g-import-not-at-top
  if os.path.abspath(reference_dir) not in sys.path:
    sys.path.insert(0, os.path.abspath(reference_dir))
  from autoattack import AutoAttack  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  adversary = AutoAttack(model, norm='Linf', eps=eps, version='standard', seed=0, device='cpu')
  seconds, accuracy, previous = {}, {}, [0.0]
  log = adversary.logger.log

  def record(message):
    log(message)
    match = _AFTER.search(message)
    if match:
      name, acc, total = match.group(1).lower(), float(match.group(2)), float(match.group(3))
      seconds[name], accuracy[name] = total - previous[0], acc / 100
      previous[0] = total

  adversary.logger.log = record
  x_t = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  y_t = torch.tensor(y, dtype=torch.long)
  start = time.time()
  adversary.run_standard_evaluation(x_t, y_t, bs=batch_size)
  return seconds, accuracy, time.time() - start


def run_ours(logits_fn, x, y, *, eps, batch_size):
  start = time.time()
  result = autoattack(logits_fn, x, y, norm='linf', eps=eps, version='standard', seed=0,
                      batch_size=batch_size)
  return (dict(result.stage_seconds), dict(result.stage_accuracy), time.time() - start,
          result)


def _cpu_seconds():
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _timed(fn, *args, **kwargs):
  wall, cpu = time.perf_counter(), _cpu_seconds()
  jax.block_until_ready(fn(*args, **kwargs))
  return np.array([time.perf_counter() - wall, _cpu_seconds() - cpu])


def query_overhead(logits_fn, x, y, *, queries=20, rounds=3):
  """(CPU-time ratio, wall ratio) of one Square query in its loop to one jitted forward pass."""
  from trainer.attacks.common import as_jit_arg  # pylint: disable=g-import-not-at-top
  from trainer.attacks.common import host_loops  # pylint: disable=g-import-not-at-top
  square = importlib.import_module('trainer.attacks.square')
  logits_fn = as_jit_arg(logits_fn)
  x, y = jnp.asarray(x), jnp.asarray(y)
  forward = jax.jit(lambda f, z: f(z))
  # ε so small that no point is fooled: the loop runs every query.
  loop = lambda n: square._square(logits_fn, x, y, jax.random.key(0), jnp.float32(1e-6),
                                  norm='linf', n_queries=n, p_init=0.8, resc_schedule=False,
                                  canonical=host_loops(x))
  for f in (lambda: forward(logits_fn, x), lambda: loop(1), lambda: loop(1 + queries)):
    jax.block_until_ready(f())  # compile
  ratios = []
  for _ in range(rounds):
    one = np.median([_timed(forward, logits_fn, x) for _ in range(5)], axis=0)
    per_query = (_timed(loop, 1 + queries) - _timed(loop, 1)) / queries
    ratios.append(per_query / one)
  return np.median(ratios, axis=0)


def apgd_t_seeds(reference_dir, logits_fn, model, x, y, *, eps, seeds):
  """APGD-T on both sides, seed by seed, on the points that APGD-CE (seed 0) leaves robust on
  both: which points each side breaks, to tell randomness from a difference of the algorithm."""
  import torch  # pylint: disable=g-import-not-at-top
  from trainer.attacks.apgd import apgd  # pylint: disable=g-import-not-at-top
  from trainer.attacks.apgd import apgd_targeted  # pylint: disable=g-import-not-at-top
  if os.path.abspath(reference_dir) not in sys.path:
    sys.path.insert(0, os.path.abspath(reference_dir))
  autopgd = importlib.import_module('autoattack.autopgd_base')
  to_torch = lambda a: torch.tensor(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
  wrong = lambda adv, labels: np.asarray(logits_fn(jnp.asarray(adv))).argmax(1) != labels
  ours_ce = ~wrong(apgd(logits_fn, x, y, norm='linf', eps=eps, seed=0), y)
  ref = autopgd.APGDAttack(model, n_iter=100, norm='Linf', n_restarts=1, eps=eps, seed=0,
                           loss='ce', device='cpu')
  ref_ce = ~wrong(ref.perturb(to_torch(x), torch.tensor(y, dtype=torch.long)).detach().numpy(
      ).transpose(0, 2, 3, 1), y)
  idx = np.flatnonzero(ours_ce & ref_ce)
  print(f'APGD-CE leaves ours {ours_ce.sum()}, fra31 {ref_ce.sum()}, both {len(idx)} of '
        f'{len(y)}; APGD-T (9 targets x 100) on those {len(idx)}:', flush=True)
  x_sub, y_sub = x[idx], y[idx]
  for seed in range(seeds):
    ours = wrong(apgd_targeted(logits_fn, x_sub, y_sub, norm='linf', eps=eps, seed=seed), y_sub)
    ref = autopgd.APGDAttack_targeted(model, n_iter=100, norm='Linf', n_restarts=1, eps=eps,
                                      seed=seed, n_target_classes=9, device='cpu')
    theirs = wrong(ref.perturb(to_torch(x_sub), torch.tensor(y_sub, dtype=torch.long)).detach(
        ).numpy().transpose(0, 2, 3, 1), y_sub)
    print(f'  seed {seed}: broken by ours {idx[ours].tolist()}, by fra31 {idx[theirs].tolist()}',
          flush=True)


# ---------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------

def _row(name, stage, ref, ours):
  """One line: seconds and robust accuracy on both sides, and fra31 / ours for each of ours."""
  def cell(seconds, accuracy, wall):
    s = wall if stage == 'total' else seconds.get(stage, 0.0)
    acc = accuracy.get(stage if stage != 'total' else 'square')
    return f'{s:9.1f} s {"-" if acc is None else f"{100 * acc:.0f}%":>5}'
  cells = [cell(*ref)] + [cell(*o) for o in ours]
  ref_s = ref[2] if stage == 'total' else ref[0].get(stage, 0.0)
  ratios = []
  for seconds, _, wall in ours:
    s = wall if stage == 'total' else seconds.get(stage, 0.0)
    ratios.append(f'{ref_s / s:8.2f}x' if s > 0 else '        -')
  return f'{name:<18}{stage:<8}' + ''.join(f'{c:>19}' for c in cells) + ''.join(ratios)


def gradient_ratio(logits_fn, torch_model, x, y, *, repeats=10):
  """(ours, torch) seconds of one input gradient of the summed cross-entropy over the batch, the
  work of one APGD step: the median of `repeats` after a warm-up, each waited for."""
  import torch  # pylint: disable=g-import-not-at-top
  loss = lambda z: optax.softmax_cross_entropy_with_integer_labels(logits_fn(z), y).sum()
  grad = jax.jit(jax.grad(loss))
  x_j, y_t = jnp.asarray(x), torch.tensor(y, dtype=torch.long)

  def torch_grad():
    z = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)
    torch.nn.functional.cross_entropy(torch_model(z), y_t, reduction='sum').backward()
    return z.grad

  jax.block_until_ready(grad(x_j))
  torch_grad()
  ours = np.median([_timed(grad, x_j)[0] for _ in range(repeats)])
  theirs = []
  for _ in range(repeats):
    start = time.perf_counter()
    torch_grad()
    theirs.append(time.perf_counter() - start)
  return ours, float(np.median(theirs))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--reference', required=True,
                      help='a checkout of fra31/auto-attack (the directory above autoattack/)')
  parser.add_argument('--families', default=','.join(FAMILIES))
  parser.add_argument('--n', type=int, default=100, help='test points attacked per family')
  parser.add_argument('--n_resnet', type=int, default=20,
                      help='test points for the 32×32×3 families (they cost ~20-40× the CNN)')
  parser.add_argument('--batch_size', type=int, default=100)
  parser.add_argument('--wrn', default='wrn-10-2', help='the WRN family (width >= 2)')
  parser.add_argument('--train_steps', type=int, default=300)
  parser.add_argument('--cnn_eps', type=float, default=CNN_EPS,
                      help="the CNN families' ε, for training and attack")
  parser.add_argument('--cnn_attack_steps', type=int, default=1,
                      help='PGD steps of the CNN training (1: FGSM from a random start)')
  parser.add_argument('--cache_dir', default=os.path.join(tempfile.gettempdir(),
                                                          'attacks-reference-models'))
  parser.add_argument('--torch_threads', type=int, default=os.cpu_count())
  parser.add_argument('--no_warm', action='store_true', help='skip the second (warm) JAX run')
  parser.add_argument('--overhead_only', action='store_true',
                      help="only Square's query/forward overhead, labels = the model's predictions")
  parser.add_argument('--gradient_only', action='store_true',
                      help="only one APGD step's work: an input gradient of the loss at the "
                      "clean-correct points, ours against torch's")
  parser.add_argument('--apgd_t_seeds', type=int, default=0,
                      help='instead of the table: APGD-T on both sides with this many seeds')
  args = parser.parse_args()
  if not os.path.isfile(os.path.join(args.reference, 'autoattack', 'autoattack.py')):
    raise SystemExit(f'--reference={args.reference}: no autoattack/autoattack.py there.')
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.torch_threads)
  print(f'jax {jax.__version__}, torch {torch.__version__} ({args.torch_threads} threads); '
        f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average '
        f'{os.getloadavg()[0]:.2f}', flush=True)

  titles = ['fra31 (torch)', 'ours cold'] + ([] if args.no_warm else ['ours warm'])
  head = f'{"family":<18}{"stage":<8}' + ''.join(f'{t:>19}' for t in titles) + ''.join(
      f'{"/" + t.split()[-1]:>9}' for t in titles[1:])
  summary = []
  for name in [f.strip() for f in args.families.split(',') if f.strip()]:
    label, logits_fn, torch_model, side, channels, eps = family(name, args)
    _, (x, y) = digits(side, channels)
    n = args.n if side == 28 else args.n_resnet
    x, y = x[:n], y[:n]
    logits = np.asarray(jax.jit(lambda z: logits_fn(z))(x))
    with torch.no_grad():
      torch_logits = torch_model(torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    gap = np.abs(logits - torch_logits.numpy()).max()
    if gap > 1e-3 * max(1.0, np.abs(logits).max()):
      raise AssertionError(f'{name}: the torch model disagrees with ours: max logit gap {gap}.')
    if args.overhead_only:
      predicted = logits.argmax(1).astype(np.int32)
      overhead = query_overhead(logits_fn, x, predicted)
      print(f'{name} ({label}), {n} points at {side}x{side}x{channels}: query/forward '
            f'{overhead[0]:.2f}x cpu, {overhead[1]:.2f}x wall', flush=True)
      continue
    if args.gradient_only:
      correct = logits.argmax(1) == y
      ours, theirs = gradient_ratio(logits_fn, torch_model, x[correct], y[correct])
      print(f'{name} ({label}), input gradient of {correct.sum()} points at {side}x{side}x'
            f'{channels}: ours {1e3 * ours:.1f} ms, torch {1e3 * theirs:.1f} ms, torch / ours '
            f'{theirs / ours:.2f}x', flush=True)
      continue
    if args.apgd_t_seeds:
      apgd_t_seeds(args.reference, logits_fn, torch_model, x, y, eps=eps, seeds=args.apgd_t_seeds)
      continue
    print(f'\n{name} ({label}): {n} test digits at {side}x{side}x{channels}, linf eps={eps:.4g}, '
          f'clean accuracy {100 * np.mean(logits.argmax(1) == y):.0f}%, max logit gap '
          f'{gap:.1e}; load average {os.getloadavg()[0]:.2f}', flush=True)
    ref = run_reference(args.reference, torch_model, x, y, eps=eps, batch_size=args.batch_size)
    ours, result = [], None
    for _ in titles[1:]:
      *timing, result = run_ours(logits_fn, x, y, eps=eps, batch_size=args.batch_size)
      ours.append(tuple(timing))
    left = result.robust | (result.broken_by == 'square')   # the points Square attacked
    overhead = (query_overhead(logits_fn, x[left], y[left]) if left.any()
                else np.array([np.nan, np.nan]))
    lines = [_row(name, stage, ref, ours) for stage in STAGES + ('total',)]
    lines[-1] += f'   query/forward {overhead[0]:.2f}x cpu, {overhead[1]:.2f}x wall'
    summary += lines
    print('\n'.join([head] + lines), flush=True)

  if summary:
    print('\nseconds and robust accuracy after each stage (total: accuracy at the end); '
          f'/ours = fra31 seconds / ours; load average {os.getloadavg()[0]:.2f}\n'
          + '\n'.join([head] + summary), flush=True)


if __name__ == '__main__':
  main()
