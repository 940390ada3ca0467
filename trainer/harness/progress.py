"""What a person sees of a training run: a progress bar and the closing line."""
import jax
import tqdm


def bar(name, first_step, total_steps):
  """A progress bar over the train steps (process 0 only; None without a name), with a rate and
  an ETA."""
  if not name or jax.process_index() > 0:
    return None
  return tqdm.tqdm(total=total_steps, initial=first_step, desc=name, unit='step',
                   dynamic_ncols=True, mininterval=1.0,
                   bar_format='{desc}: {percentage:3.0f}%|{bar:20}| {n}/{total} steps '
                              '[{elapsed}<{remaining}, {rate_fmt}]{postfix}')


def percent(value):
  return '' if value is None else f'{100 * value:.1f}%'


def summary_line(result, workdir):
  """One line for the console: where the run is and how it ended."""
  if not result['finished']:
    return f'stopped at step {result["step"]} (checkpoint saved): run the same command to resume'
  measured = ', '.join(f'{k} {percent(v)}' for k, v in sorted(result.items())
                       if k.endswith('_accuracy'))
  return f'finished at step {result["step"]}: {measured}  ({workdir})'
