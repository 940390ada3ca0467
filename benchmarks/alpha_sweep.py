"""Robust accuracy against the real share α, per generator: the paper's Fig. 3(a) and Fig. 5 at
small scale.

  python benchmarks/alpha_sweep.py --workdir=runs/alpha_sweep [--alphas=1.0,0.8,0.5,0.2]
      [--seeds=0,1,2] [--epochs=30] [--num_generated=10000] [--model=wrn-10-2] [--eps=0.1]
      [--classifier_epochs=15] [--generators=gaussian[,ddpm] --ddpm_checkpoint=DIR]
      [--attacks=aa+mt]

On digits (the demo config, with the ε and pseudo-labeller epochs of the recorded Fig. 3(a) sweep as
defaults): one non-robust classifier; per generator (the class-conditional Gaussian fit, and/or a
diffusion model's checkpoint, e.g. one made by `trainer.train_generator`) N pseudo-labelled samples
and their Algorithm-1 numbers; then TRADES for every (α, seed), the same model and budget for all,
each evaluated on the whole digits test split on its best EMA checkpoint (held-out PGD selection)
with PGD-40 (margin loss, sign steps of 2.5ε/40, uniform start) and, with --attacks, the named
cascades of `trainer.evaluate`. α = 1 uses no generated data, so its runs are shared by the
generators. Prints mean ± std per (generator, α) and each run's seconds; writes alpha_sweep.json,
alpha_sweep.png and the generators' sample grids side by side (samples.png) into the workdir. Every
finished run is skipped when the script is started again.
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from configs import demo  # noqa: E402
from data import real  # noqa: E402
from trainer import cli  # noqa: E402
from trainer.evaluation import evaluate as evaluate_lib  # noqa: E402
from trainer.pipeline import console as console_lib  # noqa: E402
from trainer.pipeline import stages as method  # noqa: E402
from trainer.robust import robust_accuracy  # noqa: E402
from trainer import sharding  # noqa: E402
from trainer.robust import classifier  # noqa: E402
from trainer.robust import train  # noqa: E402
from trainer.attacks.pgd import pgd_attack  # noqa: E402

REAL_ONLY = 'real'  # the runs at α = 1, shared by every generator


def pgd40(workdir, config):
  _, model, variables = classifier.load(workdir, 'best')
  test = real.load(config.dataset, 'test')
  attack = pgd_attack(norm=config.threat.norm, eps=config.threat.eps, steps=40,
                          loss='margin')
  measure = robust_accuracy.make_measure(model, attack, sharding.make_mesh(config),
                                         config.eval.batch_size)
  return measure(variables, test['image'], test['label'])


def run_one(base, out, manifest, alpha, seed, attacks):
  """TRADES for one (α, seed), then its evaluations; each result is kept in `out`."""
  result_path = os.path.join(out, 'pgd40.json')
  c = copy.deepcopy(base)
  c.seed, c.generated.alpha, c.generated.path = seed, alpha, manifest if alpha < 1 else ''
  if not os.path.exists(result_path):
    start = time.time()
    train.train_and_evaluate(c, out)
    result = pgd40(out, c)
    result['train_and_pgd40_seconds'] = time.time() - start
    json.dump(result, open(result_path, 'w'))
  result = json.load(open(result_path))
  for cascade in attacks:
    path = os.path.join(out, f'{cascade}.json')
    if not os.path.exists(path):
      start = time.time()
      summary = evaluate_lib.evaluate(c, out, attacks=cascade)
      json.dump({'robust': summary['cascades'][cascade]['robust_accuracy'],
                 'clean': summary['clean_accuracy'],
                 'seconds': time.time() - start}, open(path, 'w'))
    result[cascade] = json.load(open(path))
  # Every run compiles its own programs, and the executables that JAX keeps hold memory maps: a
  # sweep of 33 runs with AA+MT in one process ran out of them (vm.max_map_count, 65,530).
  jax.clear_caches()
  return result


def generator_data(base, stages, classifier, generator, ddpm_checkpoint, console):
  """The generator's pseudo-labelled shards and their data metrics, in stages/<generator>."""
  c = copy.deepcopy(base)
  c.pipeline.generator = generator
  c.pipeline.generator_checkpoint = ddpm_checkpoint if generator == 'ddpm' else ''
  workdir = os.path.join(stages, generator)
  made = method.stage_generator(c, workdir, console)
  manifest = method.stage_samples(c, workdir, made, classifier, console)
  return manifest, method.stage_data_metrics(c, workdir, manifest, classifier, console)


def summarise(results, attacks):
  sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
  out = {}
  for name, values in [('clean', [r['clean'] for r in results]),
                       ('robust', [r['robust'] for r in results])] + [
                           (a, [r[a]['robust'] for r in results]) for a in attacks]:
    out[name] = {'mean': statistics.mean(values), 'std': sd(values), 'runs': values}
  out['seconds'] = [r['train_and_pgd40_seconds'] + sum(r[a]['seconds'] for a in attacks)
                    for r in results]
  return out


def plot(summary, attacks, title, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  metrics_shown = [('robust', 'PGD-40')] + [(a, a.upper()) for a in attacks]
  fig, axes = plt.subplots(1, len(metrics_shown), figsize=(4.6 * len(metrics_shown), 3.4),
                           squeeze=False)
  for ax, (key, label) in zip(axes[0], metrics_shown):
    for generator, rows in summary.items():
      alphas = sorted(rows)
      ax.errorbar(alphas, [100 * rows[a][key]['mean'] for a in alphas],
                  yerr=[100 * rows[a][key]['std'] for a in alphas], marker='o', capsize=4,
                  label=generator)
    ax.set_xlabel('α (share of real images per batch)')
    ax.set_ylabel(f'{label} robust accuracy (%)')
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def plot_samples(stages, generators, path):
  """The generators' sample grids (rows: pseudo-labels), side by side."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(generators), figsize=(5 * len(generators), 5.3), squeeze=False)
  for ax, generator in zip(axes[0], generators):
    ax.imshow(plt.imread(os.path.join(stages, generator, 'generated', 'samples.png')),
              cmap='gray')
    ax.set_title(generator)
    ax.axis('off')
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def print_table(summary, attacks):
  cols = ['clean', 'robust'] + list(attacks)
  heads = ['clean %', 'PGD-40 %'] + [f'{a.upper()} %' for a in attacks]
  print('| generator | α | ' + ' | '.join(heads) + ' | seconds per run |')
  print('|---|---:|' + '---:|' * len(cols) + '---:|')
  for generator, rows in summary.items():
    for alpha in sorted(rows, reverse=True):
      r = rows[alpha]
      cells = [f"{100 * r[k]['mean']:.2f} ± {100 * r[k]['std']:.2f}" for k in cols]
      print(f'| {generator} | {alpha:g} | ' + ' | '.join(cells) +
            f" | {statistics.mean(r['seconds']):.0f} |")


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
  parser.add_argument('--generators', default='gaussian', help='gaussian and/or ddpm')
  parser.add_argument('--ddpm_checkpoint', default='',
                      help="generator checkpoint directory for 'ddpm' (trainer.train_generator's "
                      'WORKDIR/generator)')
  parser.add_argument('--attacks', default='',
                      help='cascades of trainer.evaluate to run as well, e.g. aa+mt')
  args = parser.parse_args()
  base = demo.get_config()
  base.threat.eps = args.eps
  base.pipeline.classifier_epochs = args.classifier_epochs
  base.train.num_epochs = args.epochs
  base.model.name = args.model
  base.pipeline.num_generated = args.num_generated
  workdir = cli.absolute(args.workdir)
  attacks = [a for a in args.attacks.split(',') if a]
  generators = args.generators.split(',')
  stages = os.path.join(workdir, 'method')
  console = console_lib.Console()
  classifier = method.stage_classifier(base, stages, console)
  data = {g: generator_data(base, stages, classifier, g, cli.absolute(args.ddpm_checkpoint),
                            console) for g in generators}

  # Seed by seed, so that an interrupted sweep has every (generator, α) at the same count.
  results = {}
  for seed in [int(s) for s in args.seeds.split(',')]:
    for generator, (manifest, _) in data.items():
      for alpha in [float(a) for a in args.alphas.split(',')]:
        out = os.path.join(workdir, REAL_ONLY if alpha == 1.0 else generator,
                           f'alpha{alpha}_seed{seed}')
        results.setdefault(generator, {}).setdefault(alpha, []).append(
            run_one(base, out, manifest, alpha, seed, attacks))
  summary = {g: {a: summarise(r, attacks) for a, r in rows.items()}
             for g, rows in results.items()}
  print_table(summary, attacks)
  print()
  numeric = [k for k, v in data[generators[0]][1].items() if isinstance(v, float)]
  print('| generator | ' + ' | '.join(numeric) + ' |')
  print('|---|' + '---:|' * len(numeric))
  for generator, (_, numbers) in data.items():
    print(f'| {generator} | ' + ' | '.join(f'{numbers.get(k, float("nan")):.3f}'
                                           for k in numeric) + ' |')
  json.dump({'summary': {g: {str(a): r for a, r in rows.items()} for g, rows in summary.items()},
             'data_metrics': {g: d[1] for g, d in data.items()}},
            open(os.path.join(workdir, 'alpha_sweep.json'), 'w'), indent=2)
  plot_samples(stages, generators, os.path.join(workdir, 'samples.png'))
  plot(summary, attacks, f'digits, ε = {args.eps:g}, TRADES {args.model}, '
       f'seeds {args.seeds}', os.path.join(workdir, 'alpha_sweep.png'))


if __name__ == '__main__':
  main()
