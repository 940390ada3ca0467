"""The shape of the paper's Tables 1 and 5 on digits: Algorithm 1 for augmentations and generators.

  python benchmarks/data_metrics.py --workdir=workdirs/data_metrics [--n=250] [--seeds=0,1,2,3,4]
      [--classifier_epochs=12]

Sets (N per set, class-balanced; D̄_train from the digits training split without the demo's
held-out head, D̄_test from the test split):
  crop, pad 1          D̄_train itself, each image randomly shifted by up to 1 pixel (the demo's
                       augmentation, data/input/augment.py; flips are off for digits)
  crop + flip, pad 4   the CIFAR presets' setting, on 8x8 digits
  mixup                D̄_train mixed with a random permutation of itself, λ ~ Beta(1, 1)
  Gaussian fit         data/generation/gaussian_fit.py on the training split (all 64 components),
                       N samples of the classes drawn round-robin
  train (held out)     N other training images, disjoint from D̄_train
  train (copies)       D̄_train itself: a generator that memorises
  test (held out)      N other test images, disjoint from D̄_test (the test split has 500, so N is
                       at most 250)
Features: g = the penultimate activations of a non-robust wrn-10-2 trained on the training split
(`python -m trainer.main --config=configs/demo.py --config.train.loss=standard ...`, as the
method's pseudo-labeller), then 100 PCA components fitted on the 2N real vectors; and, as a second
table, raw pixels (64 PCA components). Each number is the mean ± std over the seeds, each seed a
fresh class-balanced draw of every set. The classifier is trained once and reused.
"""
import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from configs import demo  # noqa: E402
from data import real  # noqa: E402
from data.generation import gaussian_fit  # noqa: E402
from data.generation import metrics  # noqa: E402
from data.input import augment  # noqa: E402
from trainer.robust import classifier  # noqa: E402

NUM_CLASSES = 10
ROWS = ('crop, pad 1', 'crop + flip, pad 4', 'mixup', 'Gaussian fit', 'train (held out)',
        'train (copies)', 'test (held out)')


def train_classifier(workdir, epochs):
  """The non-robust feature network, trained by the project's own trainer (once)."""
  if not os.path.exists(os.path.join(workdir, 'done.json')):
    subprocess.run([sys.executable, '-m', 'trainer.main', '--config=configs/demo.py',
                    '--config.train.loss=standard', '--config.model.name=wrn-10-2',
                    f'--config.train.num_epochs={epochs}', '--config.generated.alpha=1.0',
                    f'--workdir={workdir}'], cwd=REPO, check=True)
  from models import features  # pylint: disable=g-import-not-at-top
  _, model, variables = classifier.load(workdir)
  fn = features.make_feature_fn(model, variables)
  return lambda images: metrics.batched_features(lambda x: fn(x / 255.0), images)


def mixup(images, rng):
  lam = rng.beta(1.0, 1.0, size=(len(images), 1, 1, 1))
  other = images[rng.permutation(len(images))]
  return np.round(lam * images + (1 - lam) * other).astype(np.uint8)


def draw_sets(train, test, fit, n, seed):
  """{row: (N images)} plus the real D̄_train and D̄_test for one seed."""
  rng = np.random.default_rng(seed)
  both = metrics.class_balanced_indices(train['label'], 2 * n, NUM_CLASSES, seed=seed,
                                        name='train')
  split = rng.permutation(both)   # class balance of each half holds in expectation
  tr, tr_out = np.sort(split[:n]), np.sort(split[n:])
  both = metrics.class_balanced_indices(test['label'], 2 * n, NUM_CLASSES, seed=seed,
                                        name='test')
  split = rng.permutation(both)
  te, te_out = np.sort(split[:n]), np.sort(split[n:])
  base = train['image'][tr]
  gauss = next(gaussian_fit.sample(fit, n, seed=seed, batch_size=n))[0]
  sets = {'crop, pad 1': augment.pad_crop_flip(base, rng, pad=1, flip=False),
          'crop + flip, pad 4': augment.pad_crop_flip(base, rng, pad=4, flip=True),
          'mixup': mixup(base, rng),
          'Gaussian fit': gauss,
          'train (held out)': train['image'][tr_out],
          'train (copies)': base,
          'test (held out)': test['image'][te_out]}
  return base, test['image'][te], sets


def run(args):
  config = demo.get_config()
  train, _, test = real.training_splits(config)
  fit = gaussian_fit.fit(train['image'], train['label'], NUM_CLASSES, n_components=64)
  featurize = train_classifier(os.path.abspath(os.path.join(args.workdir, 'classifier')),
                               args.classifier_epochs)
  pixels = lambda x: x.reshape(len(x), -1).astype(np.float64) / 255.0
  spaces = {'classifier features, 100 PCA components': (featurize, 100),
            'raw pixels, 64 PCA components': (pixels, 64)}
  results = {space: {row: [] for row in ROWS} for space in spaces}
  for seed in args.seeds:
    d_train, d_test, sets = draw_sets(train, test, fit, args.n, seed)
    for space, (g, k) in spaces.items():
      f_train, f_test = g(d_train), g(d_test)
      for row in ROWS:
        out = metrics.metrics_from_features(f_train, f_test, g(sets[row]), n_components=k)
        results[space][row].append([out[key] for key in metrics.KEYS])
  return results


def print_tables(results, args):
  for space, rows in results.items():
    print(f'\n{space}; N = {args.n} per set, mean ± std over seeds {args.seeds}\n')
    print('| set | c_train | c_test | c_self | v_train | v_test |')
    print('|---|---:|---:|---:|---:|---:|')
    for row, values in rows.items():
      v = 100 * np.asarray(values)
      cells = ' | '.join(f'{m:.1f} ± {s:.1f}' for m, s in zip(v.mean(0), v.std(0)))
      print(f'| {row} | {cells} |')


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--n', type=int, default=250)
  parser.add_argument('--seeds', default='0,1,2,3,4')
  parser.add_argument('--classifier_epochs', type=int, default=12)
  args = parser.parse_args()
  args.seeds = [int(s) for s in args.seeds.split(',')]
  print_tables(run(args), args)


if __name__ == '__main__':
  main()
