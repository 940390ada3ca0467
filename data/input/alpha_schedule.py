"""The real share α over training: `generated.alpha` from the first step, changed at given epochs
by `generated.alpha_schedule`.

  phases = alpha_schedule.phases(config)   # ((first step, alpha), ...); the first step is 0

Each (epoch, alpha) of the schedule sets the real share from that CIFAR-10-equivalent epoch on,
until the next one: α is piecewise constant in the step. An empty schedule is the constant
`generated.alpha`. Bartoldson et al. (2024) train on generated images alone for the first 6,000
of 10,000 epochs, then on 87.5% generated ones:

  c.generated.alpha = 0.0
  c.generated.alpha_schedule = ((6000, 0.125),)

Epochs become steps once, here, as trainer/robust/optimizer.py turns `train.num_epochs` into the
run's length: step = round(epoch * train.epoch_size / train.batch_size). The mixer
(data/input/batch_mix.py) then counts the real rows of step s from s alone, so a restarted run
sees the counts of an uninterrupted one.
"""
from collections.abc import Sequence

KEY = 'generated.alpha_schedule'


class ScheduleError(ValueError):
  """A malformed `generated.alpha_schedule`; the message names the key and the entry."""


def steps_per_epoch(config) -> float:
  return config.train.epoch_size / config.train.batch_size


def phases(config) -> tuple[tuple[int, float], ...]:
  """((first step, alpha), ...) of the run, the first at step 0 with `generated.alpha`.

  Raises ScheduleError, naming the key, for an entry that is not (epoch, alpha), an epoch ≤ 0,
  an alpha outside [0, 1], or epochs that do not increase from step to step."""
  schedule = config.generated.get('alpha_schedule', ()) or ()
  if isinstance(schedule, (str, bytes)) or not isinstance(schedule, Sequence):
    _fail(schedule, 'must be a tuple of (epoch, alpha) pairs')
  out = [(0, float(config.generated.alpha))]
  for entry in schedule:
    epoch, alpha = _pair(entry, schedule)
    step = round(epoch * steps_per_epoch(config))
    if epoch <= 0:
      _fail(schedule, f'epoch {epoch:g} must be > 0 (generated.alpha holds from epoch 0)')
    if not 0.0 <= alpha <= 1.0:
      _fail(schedule, f'alpha {alpha:g} at epoch {epoch:g}: the real share must lie in [0, 1]')
    if step <= out[-1][0]:
      _fail(schedule, f'epoch {epoch:g} is step {step}, not after the previous change at step '
            f'{out[-1][0]}: epochs must increase by at least one step '
            f'({steps_per_epoch(config):g} steps per epoch)')
    out.append((step, alpha))
  return tuple(out)


def describe(config) -> str:
  """'α = 0 real, 0.125 from epoch 6000 (step 150000)' for logs and console lines."""
  schedule = config.generated.get('alpha_schedule', ()) or ()
  parts = [f'α = {float(config.generated.alpha):g} real']
  for (epoch, _), (step, alpha) in zip(schedule, phases(config)[1:]):
    parts.append(f'{alpha:g} from epoch {float(epoch):g} (step {step})')
  return ', '.join(parts)


def _pair(entry, schedule) -> tuple[float, float]:
  if (isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 2
      or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in entry)):
    _fail(schedule, f'entry {entry!r} is not a pair (epoch, alpha) of numbers')
  return float(entry[0]), float(entry[1])


def _fail(schedule, why):
  shown = schedule   # as the user wrote it (config.json holds lists)
  if isinstance(schedule, (list, tuple)):
    shown = tuple(tuple(e) if isinstance(e, (list, tuple)) else e for e in schedule)
  raise ScheduleError(f'config.{KEY}={shown!r}: {why}.')
