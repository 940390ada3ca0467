"""The trend of the paper's Fig. 3(a) at small scale: robust accuracy against the real share α.

  python benchmarks/alpha_sweep.py --workdir=runs/alpha_sweep [--alphas=1.0,0.8,0.5,0.2]
      [--seeds=0,1,2] [--epochs=30] [--num_generated=10000] [--model=wrn-10-2] [--eps=0.1]
      [--classifier_epochs=15]

On digits (the demo config, with the ε and pseudo-labeller epochs of the recorded sweep as
defaults): one non-robust classifier and one class-conditional Gaussian fit, N pseudo-labelled
samples, then TRADES for every (α, seed), each evaluated on the whole digits
test split with PGD-40 (margin loss, sign steps of 2.5ε/40, uniform start) on its best EMA
checkpoint (held-out PGD selection). Prints mean ± std per α, writes alpha_sweep.json and
alpha_sweep.png into the workdir. Every finished run is skipped when the script is started again.
"""
import argparse
import copy
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from configs import demo  # noqa: E402
from data import real  # noqa: E402
from trainer import checkpointing  # noqa: E402
from trainer import cli  # noqa: E402
from trainer import method  # noqa: E402
from trainer import robust_accuracy  # noqa: E402
from trainer import sharding  # noqa: E402
from trainer import train  # noqa: E402
from trainer.attacks import pgd  # noqa: E402


def evaluate(workdir, config):
  _, model, variables = checkpointing.restore_for_eval(workdir, 'best')
  test = real.load(config.dataset.name, 'test')
  attack = pgd.pgd_attack(norm=config.threat.norm, eps=config.threat.eps, steps=40,
                          loss='margin')
  measure = robust_accuracy.make_measure(model, attack, sharding.make_mesh(config),
                                         config.eval.batch_size)
  return measure(variables, test['image'], test['label'])


def run_one(base, workdir, manifest, alpha, seed):
  out = os.path.join(workdir, f'alpha{alpha}_seed{seed}')
  result_path = os.path.join(out, 'pgd40.json')
  if os.path.exists(result_path):
    return json.load(open(result_path))
  c = copy.deepcopy(base)
  c.seed, c.generated.alpha, c.generated.path = seed, alpha, manifest
  train.train_and_evaluate(c, out)
  result = evaluate(out, c)
  json.dump(result, open(result_path, 'w'))
  return result


def plot(summary, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  alphas = sorted(summary)
  means = [100 * summary[a]['robust_mean'] for a in alphas]
  stds = [100 * summary[a]['robust_std'] for a in alphas]
  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  ax.errorbar(alphas, means, yerr=stds, marker='o', capsize=4)
  ax.set_xlabel('α (share of real images per batch)')
  ax.set_ylabel('PGD-40 robust accuracy (%)')
  ax.set_title('digits, ε = 0.1, Gaussian-fit data')
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--alphas', default='1.0,0.8,0.5,0.2')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--epochs', type=int, default=30)
  parser.add_argument('--num_generated', type=int, default=10_000)
  parser.add_argument('--model', default='wrn-10-2', help='the robust model (demo: wrn-10-2)')
  parser.add_argument('--eps', type=float, default=0.1, help='L∞ radius (demo: 0.15)')
  parser.add_argument('--classifier_epochs', type=int, default=15,
                      help='epochs of the non-robust pseudo-labeller (demo: 12)')
  args = parser.parse_args()
  base = demo.get_config()
  base.threat.eps = args.eps
  base.pipeline.classifier_epochs = args.classifier_epochs
  base.train.num_epochs = args.epochs
  base.model.name = args.model
  base.pipeline.num_generated = args.num_generated
  stages = os.path.join(cli.absolute(args.workdir), 'method')
  console = method.Console()
  classifier = method.stage_classifier(base, stages, console)
  fit = method.stage_generator(base, stages, console)
  manifest = method.stage_samples(base, stages, fit, classifier, console)

  rows = {}
  for alpha in [float(a) for a in args.alphas.split(',')]:
    for seed in [int(s) for s in args.seeds.split(',')]:
      rows.setdefault(alpha, []).append(run_one(base, args.workdir, manifest, alpha, seed))
  summary = {}
  print(f'{"alpha":>6} | {"clean % (mean ± std)":>22} | {"PGD-40 % (mean ± std)":>22} | runs')
  for alpha, results in sorted(rows.items(), reverse=True):
    clean = [r['clean'] for r in results]
    robust = [r['robust'] for r in results]
    sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
    summary[alpha] = {'clean_mean': statistics.mean(clean), 'clean_std': sd(clean),
                      'robust_mean': statistics.mean(robust), 'robust_std': sd(robust),
                      'robust': robust, 'clean': clean}
    print(f'{alpha:>6} | {100 * statistics.mean(clean):>13.2f} ± {100 * sd(clean):5.2f} | '
          f'{100 * statistics.mean(robust):>13.2f} ± {100 * sd(robust):5.2f} | {len(results)}')
  json.dump(summary, open(os.path.join(args.workdir, 'alpha_sweep.json'), 'w'), indent=2)
  plot(summary, os.path.join(args.workdir, 'alpha_sweep.png'))


if __name__ == '__main__':
  main()
