"""The method's console: one line when each stage starts and one when it ends."""
import contextlib
import time

from trainer.pipeline import report

STAGES = ('classifier', 'generator', 'samples', 'data metrics', 'robust', 'evaluation')


class Console:
  """One line when each stage starts and one when it ends: headline figure, output, seconds."""

  def __init__(self, stream=None):
    self.seconds, self.headlines = {}, {}
    self._print = (lambda text: print(text, flush=True)) if stream is None else stream

  @contextlib.contextmanager
  def stage(self, name, what, out, done):
    i = STAGES.index(name) + 1
    tag = f'[{i}/{len(STAGES)}] {name:<13}'
    start = time.time()
    result = {}
    if done:
      yield result
      headline = result.get('headline', '')
      self._print(f'{tag}done before → {report.shown(out)}  {headline}'.rstrip())
    else:
      self._print(f'{tag}{what} → {report.shown(out)}')
      yield result
      self.seconds[name] = time.time() - start
      self._print(f'{tag}done in {self.seconds[name]:.0f} s: {result.get("headline", "")}')
    self.headlines[name] = result.get('headline', '')

  def skip(self, name, why):
    """A stage this config does not run, and why."""
    self._print(f'[{STAGES.index(name) + 1}/{len(STAGES)}] {name:<13}skipped: {why}')
    self.headlines[name] = f'skipped: {why}'
