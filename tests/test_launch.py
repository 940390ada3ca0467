"""Launch scripts: shellcheck, the commands their --dry-run prints, launch/worker.sh run directly,
and the supervisor loop against the fake `gcloud` and `python` of tests/fixtures/, which simulate
a TPU, its worker and a GCS bucket."""
import concurrent.futures
import json
import os
import pathlib
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration  # the integration tier (pytest.ini)

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch'
FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures'
HOST = socket.gethostname()
COMMON = ['--name', 'tpu1', '--zone', 'us-central2-b', '--project', 'proj']
LOC = ['--zone=us-central2-b', '--project=proj']
JAX = re.search(r'^jax==(\S+)', (REPO / 'requirements.txt').read_text(), re.M).group(1)


def clean_env(**extra):
  """The environment without TPU_* defaults; the fakes' `#!/usr/bin/env python3` finds the
  interpreter of the tests first (no slow launcher shims)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(('TPU_', 'FAKE_'))}
  env['PATH'] = f'{pathlib.Path(sys.executable).parent}{os.pathsep}{env["PATH"]}'
  return {**env, **extra}


def sh(script, *args, env=None, check=True, timeout=60):
  proc = subprocess.run(['bash', str(LAUNCH / script), *args], capture_output=True, text=True,
                        env=env or clean_env(), timeout=timeout, cwd=REPO)
  assert proc.returncode == 0 or not check, f'{args}: {proc.stdout}\n{proc.stderr}'
  return proc


def dry(*args, env=None):
  """The argv of each command a --dry-run prints ('+ ' lines), the program by its name and the
  run's temporary directory as TMP; each --command (run on a worker) is one valid shell line."""
  env = env or clean_env()
  out = sh('tpu_vm.sh', '--dry-run', *args, env=env).stdout
  tmp = re.escape(env.get('TMPDIR', '/tmp').rstrip('/')) + r'/+tmp\.\w+/'  # from mktemp -d
  out = out.replace(str(REPO), 'REPO')  # a fresh clone may itself sit in a mktemp directory
  assert len(set(re.findall(tmp, out))) <= 1, out  # one temporary directory per run
  cmds = [[re.sub(tmp, 'TMP/', a).replace('REPO', str(REPO)) for a in shlex.split(line[2:])]
          for line in out.splitlines() if line.startswith('+ ')]
  for argv in cmds:
    argv[0] = os.path.basename(argv[0])
    for a in argv:
      if a.startswith('--command='):
        subprocess.run(['bash', '-n', '-c', a[len('--command='):]], check=True)
  return cmds


def lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def fake_venv(code):
  (code / '.venv' / 'bin').mkdir(parents=True)
  shutil.copy(FIXTURES / 'python', code / '.venv' / 'bin' / 'python')


# ---- shellcheck ----------------------------------------------------------------------------------
def test_shellcheck_clean():
  if shutil.which('shellcheck') is None:
    pytest.fail('shellcheck is not installed; install it (apt-get install -y shellcheck, '
                'brew install shellcheck) to check the launch scripts')
  # -x follows the scripts into launch/common.sh, which they source (paths from the repo root).
  scripts = ['tpu_vm.sh', 'worker.sh', 'local.sh', 'common.sh']
  proc = subprocess.run(['shellcheck', '-x', '--shell=bash', *(f'launch/{s}' for s in scripts)],
                        cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- dry runs ------------------------------------------------------------------------------------
def tpu(verb, *args, group='tpu-vm', name='tpu1'):
  return ['gcloud', 'compute', 'tpus', group, verb, name, *LOC, *args]


def qr(verb, *args):
  return tpu(verb, *args, group='queued-resources', name='tpu1-qr')


def ship(*files, name='robust'):
  """worker.sh, as NAME-worker.sh, and FILES copied to the home of every worker."""
  worker = f'TMP/{name}-worker.sh'
  return [['cp', str(LAUNCH / 'worker.sh'), worker],
          ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', worker, *files, 'tpu1:', *LOC,
           '--worker=all']]


def on_workers(sub, args='', remote_dir='robust'):
  command = (f'bash "$HOME"/{pathlib.Path(remote_dir).name}-worker.sh {sub} --dir {remote_dir} '
             f'--module trainer.main{args}')
  return tpu('ssh', '--worker=all', f'--command={command}',
             '--ssh-flag=-o ServerAliveInterval=60', '--ssh-flag=-o ServerAliveCountMax=5')


CREATE = ['--accelerator-type=v4-32', '--version=tpu-ubuntu2204-base']
PACK = ['bash', '-c', 'cd "$1" && git ls-files -z -co --exclude-standard | tar --null -T - -czf '
        '"$2"', 'pack_code', str(REPO), 'TMP/robust-code.tar.gz']  # the archive setup copies
SETUP = [PACK, *ship('TMP/robust-code.tar.gz'),
         on_workers('setup', f' --python 3.11 --jax {JAX} --archive robust-code.tar.gz')]
RUN = ['--workdir', 'gs://bucket/wrn', '--config=configs/x.py']
TRAINER = ' -- --config=configs/x.py --workdir=gs://bucket/wrn --config.distributed=True'
DONE = ['gcloud', 'storage', 'ls', 'gs://bucket/wrn/done.json']
DRY_RUNS = [
    (['create', *COMMON], [tpu('create', *CREATE)]),
    (['create', *COMMON, '--spot', '--accelerator-type', 'v5p-64', '--create-arg=--network=net1'],
     [tpu('create', '--accelerator-type=v5p-64', '--version=v2-alpha-tpuv5', '--spot',
          '--network=net1')]),
    (['create', *COMMON, '--queued', '--spot'],
     [qr('create', '--node-id=tpu1', CREATE[0], '--runtime-version=tpu-ubuntu2204-base',
         '--spot')]),
    (['setup', *COMMON], SETUP),
    (['setup', *COMMON, '--git-url', 'https://example.com/me/repo.git', '--git-ref', 'v1',
      '--python', '3.12', '--remote-dir', 'work/code'],
     [*ship(name='code'),  # no code archive
      on_workers('setup', f' --python 3.12 --jax {JAX} --git-url https://example.com/me/repo.git'
                 ' --git-ref v1', remote_dir='work/code')]),
    (['run', *COMMON, *RUN, '--config.train.lr=0.4', '--config.model.name=wrn-70-16', '--env',
      'XLA_FLAGS=-x', '--', '--flagfile=f.txt'],
     [*ship(), on_workers('run', ' --env XLA_FLAGS=-x' + TRAINER + ' --config.train.lr=0.4 '
                          '--config.model.name=wrn-70-16 --flagfile=f.txt')]),
    (['logs', *COMMON, '--worker', '2'],
     [tpu('ssh', '--worker=2', '--command=tail -n 200 -F "$HOME"/robust/logs/trainer.log')]),
    (['tensorboard', '--workdir', 'gs://bucket/wrn', '--port', '7007'],  # local: no TPU needed
     [['tensorboard', '--logdir=gs://bucket/wrn', '--port=7007']]),
    (['tensorboard', *COMMON, '--workdir', 'gs://bucket/wrn', '--remote'],
     [tpu('ssh', '--worker=0', '--command=cd "$HOME"/robust && .venv/bin/tensorboard '
          '--logdir=gs://bucket/wrn --host=localhost --port=6006', '--', '-L',
          '6006:localhost:6006')]),
    (['status', *COMMON, '--queued', *RUN],
     [qr('describe', '--format=value(state.state)'), tpu('describe', '--format=value(state)'),
      DONE, *ship(), on_workers('status')]),
    (['stop', *COMMON, '--tpu', '--grace', '30'],
     [*ship(), on_workers('stop', ' --grace 30'), tpu('stop')]),
    (['delete', *COMMON], [tpu('delete', '--quiet')]),
    (['delete', *COMMON, '--queued'], [qr('delete', '--force', '--quiet')]),
    # One pass of the loop: is it done, the TPU's state, re-create it, setup, run.
    (['supervise', *COMMON, '--spot', *RUN],
     [DONE, tpu('describe', '--format=value(state)'), tpu('delete', '--quiet'),
      tpu('create', *CREATE, '--spot'), *SETUP, on_workers('run', TRAINER)]),
]


@pytest.mark.parametrize('args, expected', DRY_RUNS,
                         ids=[f'{i}-{args[0]}' for i, (args, _) in enumerate(DRY_RUNS)])
def test_dry_run(args, expected):
  assert dry(*args) == expected


def test_options_from_the_environment():
  env = clean_env(TPU_NAME='tpu1', TPU_ZONE='europe-west4-a', TPU_QUEUED='1', TPU_SPOT='true',
                  TPU_ACCELERATOR_TYPE='v6e-16', TPU_VERSION='custom-runtime')
  assert dry('create', env=env) == [[
      'gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'tpu1-qr', '--zone=europe-west4-a',
      '--node-id=tpu1', '--accelerator-type=v6e-16', '--runtime-version=custom-runtime', '--spot']]


def test_real_gcloud_parses_every_command(tmp_path):
  """Where the Cloud SDK is installed, every printed command gets past gcloud's argument parser
  (a fresh config has no account, so each stops at 'no active account' and nothing is sent)."""
  if shutil.which('gcloud') is None:
    pytest.skip('the Cloud SDK (gcloud) is not installed')
  shapes = {}  # one command per subcommand and set of flags
  for args, _ in DRY_RUNS:
    for c in dry(*args):
      if c[0] == 'gcloud':
        shapes.setdefault((*c[:5], *sorted(a.split('=')[0] for a in c if a.startswith('-'))), c)

  def parse(numbered_cmd):
    # Each call gets its own config directory: gcloud keeps sqlite caches there, and parallel
    # calls sharing one crash with 'database is locked'.
    i, cmd = numbered_cmd
    env = clean_env(CLOUDSDK_CONFIG=str(tmp_path / str(i)), CLOUDSDK_CORE_DISABLE_PROMPTS='1',
                    CLOUDSDK_CORE_CHECK_GCE_METADATA='false')
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL).stderr

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    errors = pool.map(parse, enumerate(shapes.values()))
    for cmd, err in zip(shapes.values(), errors):
      assert 'active account' in err, (cmd, err)


@pytest.mark.parametrize('args, message', [
    (['create', '--zone', 'z'], '--name NAME or set TPU_NAME'),
    (['create', '--name', 'n'], '--zone ZONE'),
    (['run', '--name', 'n', '--zone', 'z', '--workdir', 'gs://b/w'], '--config'),
    (['run', '--name', 'n', '--zone', 'z', '--config', 'c.py'], '--workdir gs://BUCKET/DIR'),
    (['run', '--name', 'n', '--zone', 'z', '--config', 'c.py', '--workdir', '/tmp/w'],
     'is not a gs:// path'),
    (['create', '--name', 'n', '--zone', 'z', '--accelerator-type', 'x9-8'], 'pass --version'),
    (['create', '--name', 'n', '--zone', 'z', '--bogus'], "unknown option '--bogus'"),
    (['launch', '--name', 'n', '--zone', 'z'], "unknown command 'launch'"),
    (['create', '--name'], 'option --name needs a value'),
    (['create', '--spot=yes'], 'option --spot takes no value'),
    (['stop', '--poll', '1m'], "--poll '1m' is not a number of seconds"),
    (['run', '--env', 'A-B=1'], "--env 'A-B=1' is not KEY=VALUE"),
    (['logs', '--worker', 'one'], "--worker 'one' is not a worker index or 'all'"),
])
def test_clear_errors(args, message):
  proc = sh('tpu_vm.sh', '--dry-run', *args, check=False)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr
  assert not proc.stdout


def test_help():
  out = sh('tpu_vm.sh', 'help').stdout
  for word in ('create', 'setup', 'run', 'logs', 'tensorboard', 'stop', 'delete', 'supervise',
               '--dry-run', 'TPU_NAME'):
    assert word in out


# ---- launch/worker.sh, run directly on a temporary home ------------------------------------------
class Worker:
  """A worker's home in tmp_path; `python3.X` and the trainer are tests/fixtures/python."""

  def __init__(self, tmp_path, remote_dir='robust', venv=False):
    self.root, self.home, self.remote_dir = tmp_path, tmp_path / 'home', remote_dir
    self.code, bin_dir = self.home / remote_dir, tmp_path / 'bin'
    bin_dir.mkdir()
    self.home.mkdir()
    for name in ('python3.11', 'python3.12'):
      (bin_dir / name).symlink_to(FIXTURES / 'python')
    if venv:
      fake_venv(self.code)
    self.env = clean_env(HOME=str(self.home), FAKE_ROOT=str(tmp_path), FAKE_HOME=str(self.home),
                         TMPDIR=str(tmp_path), PATH=f'{bin_dir}{os.pathsep}{clean_env()["PATH"]}')

  def __call__(self, sub, *args, mode=None, check=True):
    env = dict(self.env, **({'FAKE_TRAINER_MODE': mode} if mode else {}))
    proc = subprocess.run(['bash', str(LAUNCH / 'worker.sh'), sub, '--dir', self.remote_dir,
                           '--module', 'trainer.main', *args], env=env, cwd=self.home,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 or not check, proc.stdout + proc.stderr
    return proc

  def wait_for_trainer(self, mode):
    """Until the trainer has printed its first line (its SIGTERM handler is set)."""
    log = self.code / 'logs' / 'trainer.log'
    for _ in range(600):
      if f'trainer {mode}' in log.read_text():
        return
      time.sleep(0.05)
    raise AssertionError(log.read_text())

  def python_calls(self):
    return lines(self.root / 'python_calls.jsonl')


WORKER_CHECK = re.search(r"^readonly GCS_CHECK='(.+?)'$", (LAUNCH / 'worker.sh').read_text(),
                         re.M | re.S).group(1)


def setup_calls(jax):
  """The calls of python in a first setup: make the venv, install requirements.txt and
  jax[tpu]==JAX, check jax and gs:// (TensorFlow's filesystem, google-cloud-storage)."""
  return [['-m', 'venv', '.venv'], ['-m', 'pip', 'install', '--quiet', '--upgrade', 'pip'],
          ['-m', 'pip', 'install', '--quiet', '-r', 'requirements.txt', f'jax[tpu]=={jax}', '-f',
           'https://storage.googleapis.com/jax-releases/libtpu_releases.html'],
          ['-c', WORKER_CHECK]]


def test_worker_setup_checks_gs_support():
  """What the setup installs holds what gs:// needs, and the check names both clients."""
  pins = (REPO / 'requirements.txt').read_text()
  assert re.search(r'^google-cloud-storage==', pins, re.M)
  assert re.search(r'^tensorflow-cpu==', pins, re.M)
  assert 'from google.cloud import storage' in WORKER_CHECK
  assert 'get_registered_schemes()' in WORKER_CHECK


def test_worker_setup_from_archive(tmp_path):
  w, src = Worker(tmp_path), tmp_path / 'src'
  src.mkdir()
  (src / 'requirements.txt').write_text('jax==9.9\n')
  (w.code / 'logs').mkdir(parents=True)
  for path in ('stale.txt', 'logs/trainer.log'):
    (w.code / path).write_text('old')
  subprocess.run(['tar', '-czf', str(w.home / 'robust-code.tar.gz'), '-C', str(src), '.'],
                 check=True)
  setup = ('setup', '--python', '3.11', '--jax', '9.9', '--archive', 'robust-code.tar.gz')
  assert w(*setup).stdout.strip() == f'{HOST}: jax fake, gs:// with google-cloud-storage fake'
  assert not (w.code / 'stale.txt').exists() and (w.code / 'logs' / 'trainer.log').exists()
  assert (w.code / 'requirements.txt').exists() and not (w.home / 'robust-code.tar.gz').exists()
  assert w.python_calls() == setup_calls('9.9')
  assert 'no code archive' in w(*setup, check=False).stderr


def test_worker_setup_from_git(tmp_path):
  w, src = Worker(tmp_path, remote_dir='work/code'), tmp_path / 'src'
  git = ['git', '-c', 'user.name=t', '-c', 'user.email=t@t', '-C', str(src)]
  subprocess.run(['git', 'init', '-q', '-b', 'main', str(src)], check=True)
  for text, tag in (('v1\n', 'v1'), ('v2\n', None)):
    (src / 'requirements.txt').write_text(text)
    subprocess.run([*git, 'add', '.'], check=True)
    subprocess.run([*git, 'commit', '-q', '-m', text], check=True)
    if tag:
      subprocess.run([*git, 'tag', tag], check=True)
  setup = ('setup', '--python', '3.12', '--jax', '1.0', '--git-url', f'file://{src}', '--git-ref')
  w(*setup, 'v1')
  assert (w.code / 'requirements.txt').read_text() == 'v1\n'
  assert w.python_calls() == setup_calls('1.0')
  (w.code / 'logs').mkdir()
  (w.code / 'untracked.txt').write_text('x')
  w(*setup, 'main')  # a branch of the origin, over the previous checkout
  assert (w.code / 'requirements.txt').read_text() == 'v2\n'
  assert not (w.code / 'untracked.txt').exists() and (w.code / 'logs').exists()
  assert "no commit 'v9'" in w(*setup, 'v9', check=False).stderr


def test_worker_run_follows_the_trainer_to_its_exit_status(tmp_path):
  w = Worker(tmp_path, venv=True)
  argv = ['--config=c.py', '--workdir=gs://b/w', "--note=it's a b"]
  proc = w('run', '--env', 'XLA_FLAGS=-x', '--', *argv, mode='crash', check=False)
  assert proc.returncode == 1 and f'trainer on {HOST} exited with status 1' in proc.stdout
  assert 'trainer crash PYTHONUNBUFFERED=1 XLA_FLAGS=-x' in proc.stdout  # the log, followed
  assert w.python_calls() == [['-m', 'trainer.main', *argv]]
  assert (w.code / 'logs' / 'trainer.log').read_text().startswith('=== launch ')
  assert (w.code / 'logs' / 'trainer.exit').read_text() == '1\n'
  assert w('run', '--', *argv, mode='finish').stdout.endswith('exited with status 0\n')
  assert (tmp_path / 'gcs' / 'b' / 'w' / 'done.json').exists()


def test_worker_stop_and_status(tmp_path):
  w = Worker(tmp_path, venv=True)
  assert w('status').stdout == f'{HOST}: no trainer running (last exit status: none)\n'
  (w.code / 'logs').mkdir()
  (w.code / 'logs' / 'trainer.pid').write_text(str(os.getpid()))  # alive, but not the trainer
  assert 'no trainer running' in w('status').stdout
  assert 'trainer started' in w('run', '--detach', '--', '--workdir=gs://b/w', mode='sleep').stdout
  w.wait_for_trainer('sleep')
  pid = (w.code / 'logs' / 'trainer.pid').read_text().strip()
  assert w('status').stdout == f'{HOST}: trainer running (pid {pid})\n'
  assert 'setup skipped' in w('setup', '--python', '3.11', '--jax', '1', '--archive', 'none').stdout
  stopped = w('stop', '--grace', '20').stdout
  assert 'SIGTERM sent to the trainer' in stopped and 'has exited' in stopped
  assert (tmp_path / 'terminated').read_text() == 'saved'
  w('run', '--detach', '--', '--workdir=gs://b/w', mode='stubborn')
  w.wait_for_trainer('stubborn')
  assert 'still running after 1s: SIGKILL' in w('stop', '--grace', '1').stdout
  for _ in range(100):  # the wrapper writes the status of the killed trainer
    if 'status: 137' in w('status').stdout:
      break
  assert w('status').stdout == f'{HOST}: no trainer running (last exit status: 137)\n'
  assert f'no trainer running on {HOST}' in w('stop').stdout


# ---- tpu_vm.sh against the fake gcloud: one TPU worker in a temporary HOME, a fake bucket --------
class FakeCloud:

  def __init__(self, tmp_path, node=None, qr=None, plan=(), done=False):
    self.root, self.code = tmp_path, tmp_path / 'home' / 'robust'
    fake_venv(self.code)
    (self.code / 'stale.txt').write_text('removed by setup')
    (tmp_path / 'gcs' / 'bucket' / 'run1').mkdir(parents=True)
    if done:
      (tmp_path / 'gcs' / 'bucket' / 'run1' / 'done.json').write_text('{}')
    (tmp_path / 'state.json').write_text(json.dumps({'node': node, 'qr': qr, 'plan': list(plan)}))
    self.env = clean_env(FAKE_ROOT=str(tmp_path), FAKE_HOME=str(tmp_path / 'home'),
                         TMPDIR=str(tmp_path), PATH=f'{FIXTURES}{os.pathsep}{clean_env()["PATH"]}')

  def __call__(self, *args, check=True):
    return sh('tpu_vm.sh', *args, env=self.env, check=check, timeout=120)

  def supervise(self, *args, check=True):
    return self('supervise', *COMMON, '--workdir', 'gs://bucket/run1', '--config', 'configs/x.py',
                '--poll', '0', *args, check=check)

  def calls(self):
    """Each gcloud call in short: 'storage ls', 'create', 'qr create', 'ssh run', ..."""
    def short(argv):
      if argv[0] == 'storage':
        return 'storage ls'
      if argv[2] == 'queued-resources':
        return 'qr ' + argv[3]
      if argv[3] == 'ssh':  # the worker.sh subcommand
        return 'ssh ' + shlex.split(next(a for a in argv if a.startswith('--command=')))[2]
      return argv[3]
    return [short(argv) for argv in lines(self.root / 'calls.jsonl')]

  def trainer_calls(self):
    return [a for a in lines(self.root / 'python_calls.jsonl') if a[:2] == ['-m', 'trainer.main']]

  def log(self):
    return (self.code / 'logs' / 'trainer.log').read_text()


LAUNCH_CALLS = ['describe', 'scp', 'ssh setup', 'ssh run', 'storage ls']  # READY: set up and run


@pytest.mark.parametrize('start, args, calls', [
    # A spot TPU lost as the trainer is sent (it never reaches the worker): re-created, relaunched.
    ({'plan': ['preempt', 'finish']}, ['--spot', "--config.note=it's a b"],
     ['storage ls', 'describe', 'create', *LAUNCH_CALLS,
      'storage ls', 'describe', 'delete', 'create', *LAUNCH_CALLS]),
    # The same through a queued resource, which the preemption suspends.
    ({'plan': ['preempt', 'finish']}, ['--queued', '--spot'],
     ['storage ls', 'qr describe', 'qr create', 'qr describe', *LAUNCH_CALLS,
      'storage ls', 'qr describe', 'qr delete', 'qr create', 'qr describe', *LAUNCH_CALLS]),
    # A trainer that saved and exited 0 on SIGTERM has not finished: it is relaunched.
    ({'node': 'READY', 'plan': ['exit0', 'finish']}, [], ['storage ls', *LAUNCH_CALLS] * 2),
    ({'node': 'READY', 'plan': ['crash'] * 3}, ['--max-restarts', '2'],
     ['storage ls', *LAUNCH_CALLS] * 3),
    ({'node': 'READY', 'done': True}, [], ['storage ls']),  # finished before: nothing to do
], ids=['spot-preempted', 'queued-suspended', 'exit0-without-done', 'max-restarts', 'done'])
def test_supervise(tmp_path, start, args, calls):
  cloud = FakeCloud(tmp_path, **start)
  proc = cloud.supervise(*args, check=False)
  runs = [m for m in start.get('plan', ()) if m != 'preempt']  # the launches that reached it
  finished = 'finish' in runs or start.get('done', False)
  if finished:
    assert proc.returncode == 0 and 'the run has finished' in proc.stderr, proc.stderr
  else:
    assert proc.returncode == 1 and 'giving up after 2 relaunches' in proc.stderr, proc.stderr
  assert cloud.calls() == calls
  assert json.loads((tmp_path / 'state.json').read_text()) == {
      'node': 'READY', 'qr': 'ACTIVE' if '--queued' in args else None, 'plan': []}
  creates = [c for c in lines(tmp_path / 'calls.jsonl') if c[3:4] == ['create']]
  assert all(('--spot' in c) == ('--spot' in args) for c in creates)
  overrides = [a for a in args if a.startswith('--config.')]
  assert cloud.trainer_calls() == len(runs) * [[
      '-m', 'trainer.main', '--config=configs/x.py', '--workdir=gs://bucket/run1',
      '--config.distributed=True', *overrides]]
  assert (tmp_path / 'gcs' / 'bucket' / 'run1' / 'done.json').exists() == finished
  assert (cloud.code / 'stale.txt').exists() == ('ssh setup' not in calls)  # setup unpacks
  assert (cloud.code / 'launch' / 'tpu_vm.sh').exists() == ('ssh setup' in calls)
  if runs:
    log = cloud.log()
    assert log.count('=== launch') == len(runs) and all(f'trainer {m}' in log for m in runs)
    assert (cloud.code / 'logs' / 'trainer.exit').read_text() == ('1\n', '0\n')[finished]


def test_run_detached_then_status_and_stop(tmp_path):
  cloud = FakeCloud(tmp_path, node='READY', plan=['sleep', 'sleep'])
  cloud('setup', *COMMON)
  args = ('--workdir', 'gs://bucket/run1', '--config', 'configs/x.py')
  assert 'trainer started' in cloud('run', *COMMON, *args, '--detach').stdout
  assert 'trainer running (pid' in cloud('status', *COMMON).stdout
  # A second launch attaches to the running trainer instead of starting another one; stop it
  # from a second process while this one follows the log.
  attach = subprocess.Popen(['bash', str(LAUNCH / 'tpu_vm.sh'), 'run', *COMMON, *args],
                            env=cloud.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
  try:
    out = ''
    for line in attach.stdout:  # wait until it has attached
      out += line
      if 'attaching' in line:
        break
    stopped = cloud('stop', *COMMON, '--grace', '20').stdout
    out += attach.communicate(timeout=60)[0]
  finally:
    attach.kill()
  assert 'attaching' in out and 'exited with status 0' in out
  assert 'SIGTERM sent to the trainer' in stopped and 'has exited' in stopped
  assert (tmp_path / 'terminated').read_text() == 'saved'
  assert len(cloud.trainer_calls()) == 1
  assert 'no trainer running' in cloud('status', *COMMON).stdout


# ---- local runner --------------------------------------------------------------------------------
def test_local_dry_run_defaults():
  out = sh('local.sh', '--dry-run', '--', '--config.train.steps=3').stdout.splitlines()
  assert out[-1] == ('+ .venv/bin/python -m trainer.method --config=configs/demo.py '
                     '--workdir=runs/demo --config.train.steps=3')
  assert ('+ .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps '
          '-r requirements.lock') in out


def test_local_installs_once_then_runs(tmp_path):
  (tmp_path / 'venv' / 'bin').mkdir(parents=True)
  (tmp_path / 'venv' / 'bin' / 'python').symlink_to(FIXTURES / 'python')
  env = clean_env(VENV=str(tmp_path / 'venv'), FAKE_ROOT=str(tmp_path))
  sh('local.sh', '--workdir', str(tmp_path / 'w'), '--', '--config.seed=1', env=env)
  sh('local.sh', '--config', '', '--workdir', '', '--module', 'data.tool', env=env)
  calls = [' '.join(a) for a in lines(tmp_path / 'python_calls.jsonl') if a[0] != '-c']
  assert calls == [
      '-m pip install -q --disable-pip-version-check --no-deps -r requirements.lock',
      f'-m trainer.method --config=configs/demo.py --workdir={tmp_path / "w"} --config.seed=1',
      '-m data.tool',
  ]
  proc = sh('local.sh', '--no-install', '--venv', str(tmp_path / 'none'), check=False)
  assert proc.returncode == 2 and 'run once without --no-install' in proc.stderr
