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

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch'
FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures'
COMMON = ['--name', 'tpu1', '--zone', 'us-central2-b', '--project', 'proj']
LIBTPU = 'https://storage.googleapis.com/jax-releases/libtpu_releases.html'


def clean_env(**extra):
  """The environment without TPU_* defaults; the fakes' `#!/usr/bin/env python3` finds the
  interpreter of the tests first (no slow launcher shims)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(('TPU_', 'FAKE_'))}
  env['PATH'] = f'{pathlib.Path(sys.executable).parent}{os.pathsep}{env["PATH"]}'
  return {**env, **extra}


def sh(script, *args, env=None, check=True, timeout=60):
  proc = subprocess.run(['bash', str(LAUNCH / script), *args], capture_output=True, text=True,
                        env=env or clean_env(), timeout=timeout, cwd=REPO)
  if check and proc.returncode != 0:
    raise AssertionError(f'{script} {args} failed ({proc.returncode}):\n'
                         f'{proc.stdout}\n{proc.stderr}')
  return proc


def dry(*args, env=None):
  """The argv of every command a --dry-run prints (lines starting with '+ ')."""
  out = sh('tpu_vm.sh', '--dry-run', *args, env=env).stdout
  cmds = [shlex.split(line[2:]) for line in out.splitlines() if line.startswith('+ ')]
  assert cmds, out
  return cmds


def gcloud_cmds(cmds, *words):
  return [c for c in cmds if c[:len(words) + 1] == ['gcloud', *words]]


def option(argv, name):
  values = [a.split('=', 1)[1] for a in argv if a.startswith(name + '=')]
  assert len(values) == 1, (name, argv)
  return values[0]


def remote(ssh):
  """The argv of the ssh command, after checking that it is one valid shell line."""
  command = option(ssh, '--command')
  subprocess.run(['bash', '-n', '-c', command], check=True)
  return shlex.split(command)


def worker_argv(sub, *args, remote_dir='robust'):
  return ['bash', '$HOME/robust-worker.sh', sub, '--dir', remote_dir, '--module', 'trainer.main',
          *args]


def pinned_jax():
  return re.search(r'^jax==(\S+)', (REPO / 'requirements.txt').read_text(), re.M).group(1)


def lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


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
def test_create_on_demand():
  (cmd,) = dry('create', *COMMON)
  assert cmd == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'tpu1', '--zone=us-central2-b',
                 '--project=proj', '--accelerator-type=v4-32', '--version=tpu-ubuntu2204-base']


def test_create_spot_with_runtime_from_type_and_extra_flags():
  (cmd,) = dry('create', *COMMON, '--spot', '--accelerator-type', 'v5p-64',
               '--create-arg=--network=net1')
  assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'tpu1']
  assert option(cmd, '--accelerator-type') == 'v5p-64'
  assert option(cmd, '--version') == 'v2-alpha-tpuv5'
  assert '--spot' in cmd and '--network=net1' in cmd


def test_create_queued_from_env_defaults():
  env = clean_env(TPU_NAME='tpu1', TPU_ZONE='europe-west4-a', TPU_QUEUED='1', TPU_SPOT='true',
                  TPU_ACCELERATOR_TYPE='v6e-16', TPU_VERSION='custom-runtime')
  (cmd,) = dry('create', env=env)
  assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'tpu1-qr']
  assert option(cmd, '--node-id') == 'tpu1'
  assert option(cmd, '--zone') == 'europe-west4-a'
  assert option(cmd, '--accelerator-type') == 'v6e-16'
  assert option(cmd, '--runtime-version') == 'custom-runtime'
  assert '--spot' in cmd
  assert not any(a.startswith('--project') for a in cmd)


def test_setup_copies_code_and_worker_then_runs_worker_setup():
  cmds = dry('setup', *COMMON)
  (scp,) = gcloud_cmds(cmds, 'compute', 'tpus', 'tpu-vm', 'scp')
  assert [pathlib.Path(p).name for p in scp[5:7]] == ['robust-worker.sh', 'robust-code.tar.gz']
  assert scp[7] == 'tpu1:' and '--worker=all' in scp and '--project=proj' in scp
  (pack,) = [c for c in cmds if c[0] == 'bash']  # the archive scp sends
  assert 'git ls-files -z -co --exclude-standard' in pack[2] and pack[-1] == scp[6]
  (ssh,) = gcloud_cmds(cmds, 'compute', 'tpus', 'tpu-vm', 'ssh')
  assert ssh[5] == 'tpu1' and '--worker=all' in ssh and '--zone=us-central2-b' in ssh
  assert remote(ssh) == worker_argv('setup', '--python', '3.11', '--jax', pinned_jax(),
                                    '--archive', 'robust-code.tar.gz')


def test_setup_from_git():
  cmds = dry('setup', *COMMON, '--git-url', 'https://example.com/me/repo.git', '--git-ref', 'v1',
             '--python', '3.12', '--remote-dir', 'work/code')
  (scp,) = gcloud_cmds(cmds, 'compute', 'tpus', 'tpu-vm', 'scp')
  assert pathlib.Path(scp[5]).name == 'code-worker.sh' and scp[6] == 'tpu1:'  # no code archive
  (ssh,) = gcloud_cmds(cmds, 'compute', 'tpus', 'tpu-vm', 'ssh')
  assert remote(ssh) == ['bash', '$HOME/code-worker.sh', 'setup', '--dir', 'work/code',
                         '--module', 'trainer.main', '--python', '3.12', '--jax', pinned_jax(),
                         '--git-url', 'https://example.com/me/repo.git', '--git-ref', 'v1']


def test_run_on_all_workers_with_overrides():
  scp, ssh = gcloud_cmds(dry('run', *COMMON, '--workdir', 'gs://bucket/wrn',
                             '--config=configs/x.py', '--config.train.lr=0.4',
                             '--config.model.name=wrn-70-16', '--env', 'XLA_FLAGS=-x', '--',
                             '--flagfile=f.txt'))
  assert scp[4] == 'scp' and pathlib.Path(scp[5]).name == 'robust-worker.sh'
  assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'tpu1']
  assert '--worker=all' in ssh and '--zone=us-central2-b' in ssh and '--project=proj' in ssh
  assert remote(ssh) == worker_argv(
      'run', '--env', 'XLA_FLAGS=-x', '--', '--config=configs/x.py', '--workdir=gs://bucket/wrn',
      '--config.distributed=True', '--config.train.lr=0.4', '--config.model.name=wrn-70-16',
      '--flagfile=f.txt')


def test_logs_tensorboard_stop_delete():
  (logs,) = dry('logs', *COMMON, '--worker', '2')
  assert logs[4] == 'ssh' and '--worker=2' in logs
  assert option(logs, '--command') == 'tail -n 200 -F "$HOME"/robust/logs/trainer.log'

  (tb,) = dry('tensorboard', '--workdir', 'gs://bucket/wrn', '--port', '7007')
  assert tb[0].endswith('tensorboard') and tb[1:] == ['--logdir=gs://bucket/wrn', '--port=7007']
  (tb,) = dry('tensorboard', *COMMON, '--workdir', 'gs://bucket/wrn', '--remote')
  assert tb[4] == 'ssh' and '--worker=0' in tb and tb[-3:] == ['--', '-L', '6006:localhost:6006']
  assert '--logdir=gs://bucket/wrn' in option(tb, '--command')

  scp, stop, stop_vm = gcloud_cmds(dry('stop', *COMMON, '--tpu', '--grace', '30'))
  assert scp[4] == 'scp' and stop[4] == 'ssh' and '--worker=all' in stop
  assert remote(stop) == worker_argv('stop', '--grace', '30')
  assert stop_vm == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'stop', 'tpu1', '--zone=us-central2-b',
                     '--project=proj']

  assert dry('delete', *COMMON) == [['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'tpu1',
                                     '--zone=us-central2-b', '--project=proj', '--quiet']]
  assert dry('delete', *COMMON, '--queued') == [
      ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'tpu1-qr',
       '--zone=us-central2-b', '--project=proj', '--force', '--quiet']]


def test_supervise_dry_run_lists_the_loop():
  cmds = gcloud_cmds(dry('supervise', *COMMON, '--spot', '--workdir', 'gs://bucket/wrn',
                         '--config', 'configs/x.py'))
  words = [c[1:5] for c in cmds]
  assert words[0][:2] == ['storage', 'ls'] and cmds[0][-1] == 'gs://bucket/wrn/done.json'
  for verb in ('describe', 'create', 'scp'):
    assert ['compute', 'tpus', 'tpu-vm', verb] in words
  ssh = gcloud_cmds(cmds, 'compute', 'tpus', 'tpu-vm', 'ssh')
  assert len(ssh) == 2 and remote(ssh[1])[2] == 'run' and 'trainer.main' in remote(ssh[1])
  assert '--spot' in gcloud_cmds(cmds, 'compute', 'tpus', 'tpu-vm', 'create')[0]


@pytest.mark.slow
def test_real_gcloud_parses_every_command(tmp_path):
  """Where the Cloud SDK is installed, every printed command gets past gcloud's argument parser
  (a fresh config has no account, so each stops at 'no active account' and nothing is sent)."""
  if shutil.which('gcloud') is None:
    pytest.skip('the Cloud SDK (gcloud) is not installed')
  workdir = ('--workdir', 'gs://bucket/wrn', '--config', 'configs/x.py')
  shapes = {}  # one command per subcommand and set of flags
  for args in (['create', '--spot', '--create-arg=--network=net1'],
               ['create', '--queued', '--spot'], ['setup'], ['run', *workdir, '--config.a=1'],
               ['tensorboard', '--remote', *workdir], ['status', '--queued', *workdir],
               ['stop', '--tpu'], ['delete'], ['delete', '--queued']):
    for c in gcloud_cmds(dry(*args, *COMMON)):
      shapes.setdefault((*c[:5], *sorted(a.split('=')[0] for a in c if a.startswith('-'))), c)
  cmds = list(shapes.values())
  env = clean_env(CLOUDSDK_CONFIG=str(tmp_path), CLOUDSDK_CORE_DISABLE_PROMPTS='1',
                  CLOUDSDK_CORE_CHECK_GCE_METADATA='false')

  def parse(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL).stderr

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    for cmd, err in zip(cmds, pool.map(parse, cmds)):
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

  def __init__(self, tmp_path, remote_dir='robust'):
    self.root, self.home = tmp_path, tmp_path / 'home'
    self.code = self.home / remote_dir
    self.bin = tmp_path / 'bin'
    self.bin.mkdir()
    self.home.mkdir()
    for name in ('python3.11', 'python3.12'):
      (self.bin / name).symlink_to(FIXTURES / 'python')
    self.env = clean_env(HOME=str(self.home), FAKE_ROOT=str(tmp_path), FAKE_HOME=str(self.home),
                         TMPDIR=str(tmp_path), PATH=f'{self.bin}{os.pathsep}{clean_env()["PATH"]}')
    self.remote_dir = remote_dir

  def __call__(self, sub, *args, mode=None, check=True, timeout=60):
    env = dict(self.env, **({'FAKE_TRAINER_MODE': mode} if mode else {}))
    proc = subprocess.run(['bash', str(LAUNCH / 'worker.sh'), sub, '--dir', self.remote_dir,
                           '--module', 'trainer.main', *args], env=env, cwd=self.home,
                          capture_output=True, text=True, timeout=timeout)
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


def install_calls(jax):
  return [['-m', 'pip', 'install', '--quiet', '--upgrade', 'pip'],
          ['-m', 'pip', 'install', '--quiet', '-r', 'requirements.txt', f'jax[tpu]=={jax}', '-f',
           LIBTPU], ['-c', 'import jax; print(jax.__version__)']]


def test_worker_setup_from_archive(tmp_path):
  w = Worker(tmp_path)
  src = tmp_path / 'src'
  src.mkdir()
  (src / 'requirements.txt').write_text('jax==9.9\n')
  (w.code / 'logs').mkdir(parents=True)
  for path in ('stale.txt', 'logs/trainer.log'):
    (w.code / path).write_text('old')
  subprocess.run(['tar', '-czf', str(w.home / 'robust-code.tar.gz'), '-C', str(src), '.'],
                 check=True)
  out = w('setup', '--python', '3.11', '--jax', '9.9', '--archive', 'robust-code.tar.gz').stdout
  assert out.strip() == f'{socket.gethostname()}: jax fake'
  assert not (w.code / 'stale.txt').exists() and (w.code / 'logs' / 'trainer.log').exists()
  assert (w.code / 'requirements.txt').exists() and not (w.home / 'robust-code.tar.gz').exists()
  assert w.python_calls() == [['-m', 'venv', '.venv'], *install_calls('9.9')]
  assert 'no code archive' in w('setup', '--python', '3.11', '--jax', '9.9', '--archive',
                                'robust-code.tar.gz', check=False).stderr


def test_worker_setup_from_git(tmp_path):
  w = Worker(tmp_path, remote_dir='work/code')
  src = tmp_path / 'src'
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
  assert w.python_calls() == [['-m', 'venv', '.venv'], *install_calls('1.0')]
  (w.code / 'logs').mkdir()
  (w.code / 'untracked.txt').write_text('x')
  w(*setup, 'main')  # a branch of the origin, over the previous checkout
  assert (w.code / 'requirements.txt').read_text() == 'v2\n'
  assert not (w.code / 'untracked.txt').exists() and (w.code / 'logs').exists()
  assert "no commit 'v9'" in w(*setup, 'v9', check=False).stderr


def test_worker_run_follows_the_trainer_to_its_exit_status(tmp_path):
  w = Worker(tmp_path)
  (w.code / '.venv' / 'bin').mkdir(parents=True)
  shutil.copy(FIXTURES / 'python', w.code / '.venv' / 'bin' / 'python')
  argv = ['--config=c.py', '--workdir=gs://b/w', "--note=it's a b"]
  proc = w('run', '--env', 'XLA_FLAGS=-x', '--', *argv, mode='crash', check=False)
  host = socket.gethostname()
  assert proc.returncode == 1 and f'trainer on {host} exited with status 1' in proc.stdout
  assert 'trainer crash PYTHONUNBUFFERED=1 XLA_FLAGS=-x' in proc.stdout  # the log, followed
  assert w.python_calls() == [['-m', 'trainer.main', *argv]]
  assert (w.code / 'logs' / 'trainer.log').read_text().startswith('=== launch ')
  assert (w.code / 'logs' / 'trainer.exit').read_text() == '1\n'
  assert w('run', '--', *argv, mode='finish').stdout.endswith('exited with status 0\n')
  assert (tmp_path / 'gcs' / 'b' / 'w' / 'done.json').exists()


def test_worker_stop_and_status(tmp_path):
  w = Worker(tmp_path)
  (w.code / '.venv' / 'bin').mkdir(parents=True)
  shutil.copy(FIXTURES / 'python', w.code / '.venv' / 'bin' / 'python')
  host = socket.gethostname()
  assert w('status').stdout == f'{host}: no trainer running (last exit status: none)\n'
  (w.code / 'logs').mkdir()
  (w.code / 'logs' / 'trainer.pid').write_text(str(os.getpid()))  # alive, but not the trainer
  assert 'no trainer running' in w('status').stdout
  assert 'trainer started' in w('run', '--detach', '--', '--workdir=gs://b/w', mode='sleep').stdout
  w.wait_for_trainer('sleep')
  pid = (w.code / 'logs' / 'trainer.pid').read_text().strip()
  assert w('status').stdout == f'{host}: trainer running (pid {pid})\n'
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
  assert w('status').stdout == f'{host}: no trainer running (last exit status: 137)\n'
  assert f'no trainer running on {host}' in w('stop').stdout


# ---- tpu_vm.sh against the fake gcloud: one TPU worker in a temporary HOME, a fake bucket --------
class FakeCloud:

  def __init__(self, tmp_path, node=None, qr=None, plan=()):
    self.root, self.home = tmp_path, tmp_path / 'home'
    venv_bin = self.home / 'robust' / '.venv' / 'bin'
    venv_bin.mkdir(parents=True)
    shutil.copy(FIXTURES / 'python', venv_bin / 'python')
    (self.home / 'robust' / 'stale.txt').write_text('removed by setup')
    (tmp_path / 'gcs').mkdir()
    (tmp_path / 'state.json').write_text(json.dumps({'node': node, 'qr': qr, 'plan': list(plan)}))
    self.env = clean_env(FAKE_ROOT=str(tmp_path), FAKE_HOME=str(self.home), TMPDIR=str(tmp_path))
    self.env['PATH'] = f'{FIXTURES}{os.pathsep}{self.env["PATH"]}'

  def __call__(self, *args, check=True):
    return sh('tpu_vm.sh', *args, env=self.env, check=check, timeout=120)

  def calls(self):
    """Each gcloud call in short: 'storage ls', 'create', 'qr create', 'ssh run', ..."""
    out = []
    for argv in lines(self.root / 'calls.jsonl'):
      if argv[0] == 'storage':
        out.append('storage ls')
      elif argv[2] == 'queued-resources':
        out.append('qr ' + argv[3])
      elif argv[3] == 'ssh':
        out.append('ssh ' + shlex.split(option(argv, '--command'))[2])
      else:
        out.append(argv[3])
    return out

  def trainer_calls(self):
    return [a for a in lines(self.root / 'python_calls.jsonl') if a[:2] == ['-m', 'trainer.main']]

  def state(self):
    return json.loads((self.root / 'state.json').read_text())


SUPERVISE = ('supervise', *COMMON, '--workdir', 'gs://bucket/run1', '--config', 'configs/x.py',
             '--poll', '0')


def test_supervise_relaunches_after_spot_preemption(tmp_path):
  cloud = FakeCloud(tmp_path, node=None, plan=['preempt', 'finish'])
  proc = cloud(*SUPERVISE, '--spot', "--config.note=it's a b")
  assert 'the run has finished' in proc.stderr
  assert cloud.calls() == [
      'storage ls', 'describe', 'create', 'describe', 'scp', 'ssh setup', 'ssh run',  # preempted
      'storage ls', 'storage ls', 'describe', 'delete', 'create', 'describe', 'scp', 'ssh setup',
      'ssh run', 'storage ls']
  creates = [c for c in lines(tmp_path / 'calls.jsonl') if c[:4] == ['compute', 'tpus', 'tpu-vm',
                                                                      'create']]
  assert all('--spot' in c for c in creates)
  (trainer,) = cloud.trainer_calls()  # the preempted launch never reached the worker
  assert trainer[2:] == ['--config=configs/x.py', '--workdir=gs://bucket/run1',
                         '--config.distributed=True', "--config.note=it's a b"]
  assert (tmp_path / 'gcs' / 'bucket' / 'run1' / 'done.json').exists()
  code = cloud.home / 'robust'
  assert (code / 'launch' / 'tpu_vm.sh').exists() and not (code / 'stale.txt').exists()
  assert 'trainer finish' in (code / 'logs' / 'trainer.log').read_text()
  assert (code / 'logs' / 'trainer.exit').read_text().strip() == '0'


def test_supervise_recreates_suspended_queued_resource(tmp_path):
  cloud = FakeCloud(tmp_path, plan=['preempt', 'finish'])
  cloud(*SUPERVISE, '--queued', '--spot')
  assert cloud.calls() == [
      'storage ls', 'qr describe', 'qr create', 'qr describe', 'describe', 'scp', 'ssh setup',
      'ssh run', 'storage ls', 'storage ls', 'qr describe', 'qr delete', 'qr create', 'qr describe',
      'describe', 'scp', 'ssh setup', 'ssh run', 'storage ls']
  assert cloud.state() == {'node': 'READY', 'qr': 'ACTIVE', 'plan': []}


def test_supervise_relaunches_after_clean_exit_without_done(tmp_path):
  # A trainer that saved and exited 0 on SIGTERM has not finished: it is relaunched.
  cloud = FakeCloud(tmp_path, node='READY', plan=['exit0', 'finish'])
  cloud(*SUPERVISE)
  assert cloud.calls() == [
      'storage ls', 'describe', 'scp', 'ssh setup', 'ssh run', 'storage ls', 'storage ls',
      'describe', 'scp', 'ssh setup', 'ssh run', 'storage ls']
  assert len(cloud.trainer_calls()) == 2
  log = (cloud.home / 'robust' / 'logs' / 'trainer.log').read_text()
  assert log.count('=== launch') == 2 and 'trainer exit0' in log


def test_supervise_gives_up_after_max_restarts(tmp_path):
  cloud = FakeCloud(tmp_path, node='READY', plan=['crash'] * 5)
  proc = cloud(*SUPERVISE, '--max-restarts', '2', check=False)
  assert proc.returncode == 1 and 'giving up after 2 relaunches' in proc.stderr
  assert cloud.calls().count('ssh run') == 3


def test_supervise_stops_at_once_when_done(tmp_path):
  cloud = FakeCloud(tmp_path, node='READY')
  (tmp_path / 'gcs' / 'bucket' / 'run1').mkdir(parents=True)
  (tmp_path / 'gcs' / 'bucket' / 'run1' / 'done.json').write_text('{}')
  cloud(*SUPERVISE)
  assert cloud.calls() == ['storage ls']


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
