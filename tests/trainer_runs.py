"""Helpers for tests that run `python -m trainer.main` in subprocesses (crash safety, multi-host).

Each subprocess gets its own device count (the test process's 8 virtual devices are set in
conftest.py) and a persistent compilation cache shared by the runs of one test, so only the
first run of a test pays for compiling the train step.
"""
import glob
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf

from configs import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP_MARK = '.orbax-checkpoint-tmp'
# An absl INFO or DEBUG record on the console ("I1201 12:00:00.000 …"): chatter for the log.
INFO_RECORD = re.compile(r'^[ID]\d{4} \d\d:\d\d:\d\d')


def tiny_overrides(steps, **more):
  """wrn-10-1 on the real 8×8 digits, batch 32, 1 attack step, `steps` train steps."""
  o = {'generated.alpha': 1.0, 'model.name': 'wrn-10-1', 'dataset.holdout': 32,
       'dataset.test_size': 32, 'train.batch_size': 32, 'train.epoch_size': 32 * steps,
       'train.num_epochs': 1, 'train.attack_steps': 1, 'train.log_every_steps': 1,
       'optim.warmup_epochs': 0.25, 'eval.every_steps': 1000, 'eval.pgd_steps': 1,
       'eval.batch_size': 32, 'checkpoint.every_steps': 2, 'checkpoint.keep': 3}
  o.update(more)
  return o


def config(overrides):
  """The config the subprocesses build from configs/demo.py and these overrides."""
  c = demo.get_config()
  for key, value in overrides.items():
    section, leaf = key.split('.')
    c[section][leaf] = value
  return c


def env(devices, cache_dir, write_cache=True):
  """Environment of a trainer subprocess with `devices` virtual CPU devices."""
  e = dict(os.environ)
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '', e.get('XLA_FLAGS', ''))
  e['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count={devices}'.strip()
  e['JAX_PLATFORMS'] = 'cpu'
  e['TF_CPP_MIN_LOG_LEVEL'] = '2'
  e['JAX_COMPILATION_CACHE_DIR'] = str(cache_dir)
  e['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  # Runs that may be killed only read the cache: a half-written entry would break later runs.
  e['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0' if write_cache else str(2 ** 62)
  return e


def launch(workdir, overrides, environ, log_path, extra=()):
  args = [sys.executable, '-m', 'trainer.main', '--config=configs/demo.py',
          f'--workdir={workdir}', '--debug_batch_ids']
  args += [f'--config.{k}={v}' for k, v in overrides.items()] + list(extra)
  log = open(log_path, 'ab')
  proc = subprocess.Popen(args, cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)
  log.close()
  proc.log_path = log_path
  return proc


def log_tail(proc, n=40):
  with open(proc.log_path, 'rb') as f:
    lines = f.read().decode(errors='replace').splitlines()
  return '\n'.join(lines[-n:])


def finish(proc, timeout=600):
  """Waits for `proc`; kills it (and says why) when it takes longer than `timeout`."""
  try:
    return proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    raise AssertionError(f'trainer still running after {timeout}s:\n{log_tail(proc)}') from None


def wait_until(condition, proc, timeout=600, poll=0.005):
  """Polls `condition()` until true; fails if `proc` ends first or time runs out."""
  deadline = time.time() + timeout
  while not condition():
    if proc.poll() is not None:
      raise AssertionError(f'trainer exited ({proc.returncode}) too early:\n{log_tail(proc)}')
    if time.time() > deadline:
      proc.kill()
      raise AssertionError(f'condition not met after {timeout}s:\n{log_tail(proc)}')
    time.sleep(poll)


def signal_and_wait(proc, signum):
  proc.send_signal(signum)
  return finish(proc)


def batch_id_lines(workdir, process=0):
  """[(step, ids)] in the order written; a line cut short by a crash is dropped."""
  path = os.path.join(workdir, 'batch_ids', f'process_{process}.txt')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    text = f.read()
  lines = text.split('\n')[:-1]  # the part after the last newline is incomplete (or empty)
  return [(int(line.split()[0]), tuple(int(i) for i in line.split()[1:])) for line in lines]


def last_step_logged(workdir, process=0):
  lines = batch_id_lines(workdir, process)
  return lines[-1][0] if lines else 0


def committed_steps(directory):
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def tmp_dirs(directory):
  if not os.path.isdir(directory):
    return []
  return sorted(n for n in os.listdir(directory) if TMP_MARK in n)


def restore_state(workdir, step, target=None):
  """The saved TrainState of `step` as {name: numpy array} (see `flat`).

  Without a target (a tree of jax.ShapeDtypeStruct with shardings) it lands on the devices it
  was saved from, which must exist here.
  """
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                                  item_names=('state', 'data'))
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  manager.close()
  return flat(state['state'])


def _name(key):
  for attr in ('name', 'key', 'idx'):  # GetAttrKey, DictKey, SequenceKey
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def flat(tree):
  """{'opt_state/1/0/trace/…': numpy array}: the same names for a TrainState and for the plain
  dicts and lists that Orbax restores it as without a target."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(_name(k) for k in path): np.asarray(leaf) for path, leaf in leaves}


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


SIGKILL, SIGTERM = signal.SIGKILL, signal.SIGTERM


def read_scalars(workdir):
  """{tag: {step: value}} from every TensorBoard event file in the workdir."""
  scalars = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        value = float(tf.make_ndarray(v.tensor)) if v.HasField('tensor') else v.simple_value
        scalars.setdefault(v.tag, {})[event.step] = value
  return scalars


def run_command(cwd, module, *args, devices=2, timeout=900):
  """`python -m module args` from `cwd` (the repository on PYTHONPATH), as a user runs it."""
  environ = env(devices, os.path.join(cwd, 'jax-cache'))
  environ['PYTHONPATH'] = ROOT
  return subprocess.run([sys.executable, '-m', module, *args], cwd=cwd, env=environ,
                        capture_output=True, text=True, timeout=timeout)


# A frame of a console progress bar ("train:  42%|████▎     | 5/12 steps [...]").
PROGRESS_FRAME = re.compile(r'^[\w -]+: +\d+%\|')


def console_lines(proc):
  """The non-empty lines a person saw on the console (stdout and stderr), progress bars aside."""
  return [line for line in (proc.stdout + proc.stderr).splitlines()
          if line.strip() and not PROGRESS_FRAME.match(line)]


def one_line_error(proc, *fragments):
  """The process failed, and the console shows exactly one line, `error: …`, naming each
  fragment; returns that line."""
  lines = console_lines(proc)
  assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith('error: '), lines[-30:]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]
