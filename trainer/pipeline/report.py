"""What a person reads at the end of the method: the closing console report and WORKDIR/report.md.

report.md holds the stage table, Algorithm 1's numbers and the classifier-feature Fréchet
distance, the evaluation per attack stage, the sample grid and one plot per training stage of
clean / robust accuracy (held-out and test) and loss against the step, drawn from the run's own
TensorBoard records.
"""
import io
import os

from etils import epath
import numpy as np

METRIC_NAMES = (('c_train', 'complementarity, train'), ('c_test', 'complementarity, test'),
                ('c_self', 'complementarity, self'), ('v_train', 'coverage, train'),
                ('v_test', 'coverage, test'))
TRAINING_STAGES = ('classifier', 'robust')


def shown(path):
  """A path as a person typed it: relative to the working directory when it lies below it."""
  if '://' in str(path):
    return path
  rel = os.path.relpath(path)
  return path if rel.startswith('..') else rel


def _pct(value):
  return f'{100 * value:.2f}%'


def data_metrics_line(result):
  """Algorithm 1's five numbers and the classifier-feature Fréchet distance in one line."""
  c = ' / '.join(f'{result[k]:.3f}' for k in ('c_train', 'c_test', 'c_self'))
  v = ' / '.join(f'{result[k]:.3f}' for k in ('v_train', 'v_test'))
  return f'complementarity train/test/self {c}; coverage train/test {v}' + (
      f'; {fd_text(result)}' if 'classifier_fd' in result else '')


def fd_text(result):
  """'<label> 12.3 (real held-out vs test: 4.5)': the distance with its real-vs-real scale."""
  text = f"{result['classifier_fd_label']} {result['classifier_fd']:.3g}"
  if 'classifier_fd_real' in result:
    text += f" (real held-out vs test: {result['classifier_fd_real']:.3g})"
  return text


def _fd_lines(data):
  if 'classifier_fd' not in data:  # a workdir from before the distance was measured
    return []
  lines = [f"{data['classifier_fd_label']}, in the non-robust classifier's penultimate features:",
           '', '| sets | distance |', '|---|---:|',
           f"| {data['classifier_fd_sets']} | {data['classifier_fd']:.4g} |"]
  if 'classifier_fd_real' in data:
    lines.append(f"| {data['classifier_fd_real_sets']} (real vs real) | "
                 f"{data['classifier_fd_real']:.4g} |")
  return lines + ['']


def evaluation_line(evaluation):
  robust = ', '.join(f"{name} {_pct(c['robust_accuracy'])}"
                     for name, c in evaluation['cascades'].items())
  return (f"test[:{evaluation['num_examples']}]: clean {_pct(evaluation['clean_accuracy'])}, "
          f'{robust}')


def read_scalars(workdir):
  """{tag: [(step, value), …]} of the scalars in the TensorBoard event files of one workdir."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  scalars = {}
  for path in sorted(tf.io.gfile.glob(os.path.join(workdir, 'events.out.tfevents.*'))):  # or gs://
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      event = tf.compat.v1.Event.FromString(record)
      for v in event.summary.value:
        value = tf.make_ndarray(v.tensor) if v.HasField('tensor') else v.simple_value
        value = np.asarray(value)
        if value.ndim == 0 and np.issubdtype(value.dtype, np.number):  # no images, no text
          scalars.setdefault(v.tag, {})[event.step] = float(value)
  return {tag: sorted(points.items()) for tag, points in scalars.items()}


def plot_training(workdir, path, title):
  """Accuracy (held-out and test, clean and robust) and loss against the step, as a PNG; the loss
  alone for a run that measures no accuracy (the DDPM)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  scalars = read_scalars(workdir)
  if not any(tag.endswith('_accuracy') for tag in scalars):
    fig, loss = plt.subplots(1, 1, figsize=(5, 3.6))
    _plot_loss(loss, scalars, title)
    return _save(fig, path)
  fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 3.6))
  for split, style in (('holdout', '-'), ('test', '--')):
    for kind, colour in (('clean', 'tab:blue'), ('robust', 'tab:red')):
      points = scalars.get(f'{split}/{kind}_accuracy')
      if points:
        steps, values = zip(*points)
        acc.plot(steps, [100 * v for v in values], style, color=colour, marker='.',
                 label=f'{split} {kind}')
  acc.set(xlabel='step', ylabel='accuracy (%)', title=f'{title}: accuracy')
  acc.grid(alpha=0.3)
  acc.legend(fontsize=8)
  _plot_loss(loss, scalars, title)
  return _save(fig, path)


def _plot_loss(axes, scalars, title):
  points = scalars.get('train/loss')
  if points:
    steps, values = zip(*points)
    axes.plot(steps, values, color='black', marker='.')
  axes.set(xlabel='step', ylabel='training loss', title=f'{title}: loss')
  axes.grid(alpha=0.3)


def _save(fig, path):
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig.tight_layout()
  buffer = io.BytesIO()  # matplotlib writes local files only; the path may be gs://
  fig.savefig(buffer, format='png', dpi=110)
  plt.close(fig)
  epath.Path(path).write_bytes(buffer.getvalue())
  return path


def _evaluation_table(evaluation):
  lines = ['| cascade | stage | accuracy | broken | seconds |', '|---|---|---:|---:|---:|']
  for cascade, c in evaluation['cascades'].items():
    lines.append(f"| {cascade} | clean | {_pct(evaluation['clean_accuracy'])} | | |")
    for stage, acc in c['stage_accuracy'].items():
      lines.append(f"| | {stage} | {_pct(acc)} | {c['broken'][stage]} | "
                   f"{c['seconds'][stage]:.1f} |")
  return lines


def write(out, config):
  """Writes WORKDIR/report.md (and its PNGs) from what `trainer.method.run` returned; its path."""
  workdir = out['workdir']
  rel = lambda p: os.path.relpath(p, workdir)
  lines = [f'# {config.dataset.name}: the method, stage by stage', '',
           '| stage | output | result | seconds |', '|---|---|---|---:|']
  for name, key in (('classifier', 'classifier'), ('generator', 'generator'),
                    ('samples', 'samples'), ('data metrics', 'data_metrics'),
                    ('robust', 'robust'), ('evaluation', 'evaluation')):
    where = out[key] if out[key] is None or isinstance(out[key], str) else {
        'data_metrics': os.path.join(workdir, 'generated', 'data_metrics.json'),
        'evaluation': os.path.join(out['robust'], 'eval.json')}[key]
    shown_where = '' if where is None else f'`{rel(where)}`'   # None: a skipped stage
    seconds = out['seconds'].get(name)
    lines.append(f"| {name} | {shown_where} | {out['headlines'].get(name, '')} | "
                 f"{'' if seconds is None else f'{seconds:.0f}'} |")
  lines += ['', *_data_lines(out['data_metrics'])]
  evaluation = out['evaluation']
  lines += ['## Evaluation', '',
            f"{evaluation['model']}, test[:{evaluation['num_examples']}], "
            f"{evaluation['norm']} ε = {evaluation['eps']:.4g}, checkpoint "
            f"{evaluation['checkpoint']} (step {evaluation['step']})", '',
            *_evaluation_table(evaluation), '',
            f"worst case over the cascades: {_pct(evaluation['worst_case_robust_accuracy'])}", '']
  lines += ['## Training', '']
  runs = [(name, out[name]) for name in TRAINING_STAGES if out[name]]
  if out.get('generator_run'):  # a DDPM trained by the method
    runs.insert(0, ('generator', out['generator_run']))
  for name, run_dir in runs:
    png = plot_training(run_dir, os.path.join(workdir, f'{name}_curves.png'), name)
    what = 'loss' if name == 'generator' else 'accuracy and loss'
    lines += [f'![{name}: {what} against the step]({rel(png)})', '']
  lines += ['TensorBoard, every scalar of every stage:', '', '```',
            f'tensorboard --logdir {workdir}', '```', '']
  path = os.path.join(workdir, 'report.md')
  epath.Path(path).write_text('\n'.join(lines))
  return path


def _data_lines(data):
  """report.md's section on the generated data (none without a classifier to measure it)."""
  if data is None:
    return ["The generator's own classes label the generated data: no classifier, so no "
            'Algorithm 1 numbers (pipeline.labels).', '']
  return ['## Generated data (Algorithm 1, App. D)', '',
          '| ' + ' | '.join(label for _, label in METRIC_NAMES) + ' |',
          '|' + '---:|' * len(METRIC_NAMES),
          '| ' + ' | '.join(f'{data[k]:.3f}' for k, _ in METRIC_NAMES) + ' |', '',
          *_fd_lines(data),
          '![samples, one row per pseudo-label](generated/samples.png)', '']


def closing(out):
  """The console's closing report: where each stage's output lies and the headline numbers."""
  skipped = "none (the generator's labels)"
  rows = [('non-robust classifier', shown(out['classifier']) if out['classifier'] else skipped),
          ('generator', shown(out['generator'])),
          ('labelled shards', shown(out['samples'])),
          ('data metrics', data_metrics_line(out['data_metrics']) if out['data_metrics']
           else skipped),
          ('robust (TRADES) run', shown(out['robust'])),
          ('evaluation', evaluation_line(out['evaluation'])),
          ('report', shown(out['report'])),
          ('TensorBoard', f"tensorboard --logdir {shown(out['workdir'])}")]
  return '\n'.join(['The method ran to the end:'] + [f'  {k:<24}{v}' for k, v in rows])
