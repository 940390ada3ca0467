"""Launch scripts: shellcheck, the gcloud commands their --dry-run prints, and the supervisor loop
run against a fake `gcloud` that simulates a TPU, its workers and a GCS bucket."""
import concurrent.futures
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU_VM = REPO / 'launch' / 'tpu_vm.sh'
LOCAL = REPO / 'launch' / 'local.sh'
COMMON = ['--name', 'tpu1', '--zone', 'us-central2-b', '--project', 'proj']


def clean_env(**extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith('TPU_')}
  env.update(extra)
  return env


def sh(script, *args, env=None, check=True, timeout=60):
  proc = subprocess.run(['bash', str(script), *args], capture_output=True, text=True,
                        env=env or clean_env(), timeout=timeout, cwd=REPO)
  if check and proc.returncode != 0:
    raise AssertionError(f'{script.name} {args} failed ({proc.returncode}):\n'
                         f'{proc.stdout}\n{proc.stderr}')
  return proc


def dry(*args, env=None):
  """The argv of every command a --dry-run prints (lines starting with '+ ')."""
  out = sh(TPU_VM, '--dry-run', *args, env=env).stdout
  cmds = [shlex.split(line[2:]) for line in out.splitlines() if line.startswith('+ ')]
  assert cmds, out
  return cmds


def gcloud_cmds(cmds, *words):
  return [c for c in cmds if c[:len(words) + 1] == ['gcloud', *words]]


def option(argv, name):
  values = [a.split('=', 1)[1] for a in argv if a.startswith(name + '=')]
  assert len(values) == 1, (name, argv)
  return values[0]


def pinned_jax():
  return re.search(r'^jax==(\S+)', (REPO / 'requirements.txt').read_text(), re.M).group(1)


# ---- shellcheck ----------------------------------------------------------------------------------
def test_shellcheck_clean():
  if shutil.which('shellcheck') is None:
    pytest.fail('shellcheck is not installed; install it (apt-get install -y shellcheck, '
                'brew install shellcheck) to check the launch scripts')
  # -x follows the scripts into launch/common.sh, which they source (paths from the repo root).
  proc = subprocess.run(['shellcheck', '-x', '--shell=bash', str(TPU_VM), str(LOCAL),
                         str(REPO / 'launch' / 'common.sh')],
                        cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- dry runs --------------------------------------------------------------------------------------
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


def test_setup_copies_code_and_installs_pinned_jax_tpu():
  cmds = dry('setup', *COMMON)
  (scp,) = gcloud_cmds(cmds, 'compute', 'tpus', 'tpu-vm', 'scp')
  assert scp[5].endswith('tpu1-code.tar.gz') and scp[6] == 'tpu1:robust-code.tar.gz'
  assert '--worker=all' in scp and '--zone=us-central2-b' in scp and '--project=proj' in scp
  (ssh,) = gcloud_cmds(cmds, 'compute', 'tpus', 'tpu-vm', 'ssh')
  assert ssh[5] == 'tpu1' and '--worker=all' in ssh and '--zone=us-central2-b' in ssh
  command = option(ssh, '--command')
  assert 'tar -xzf "$HOME"/robust-code.tar.gz' in command
  assert 'python3.11 -m venv .venv' in command
  assert (f'.venv/bin/python -m pip install --quiet -r requirements.txt "jax[tpu]=={pinned_jax()}"'
          in command)
  subprocess.run(['bash', '-n', '-c', command], check=True)


def test_setup_from_git():
  cmds = dry('setup', *COMMON, '--git-url', 'https://example.com/me/repo.git', '--git-ref', 'v1',
             '--python', '3.12', '--remote-dir', 'work/code')
  assert not gcloud_cmds(cmds, 'compute', 'tpus', 'tpu-vm', 'scp')
  (ssh,) = gcloud_cmds(cmds, 'compute', 'tpus', 'tpu-vm', 'ssh')
  command = option(ssh, '--command')
  assert 'D="$HOME"/work/code' in command
  assert 'remote add origin https://example.com/me/repo.git' in command
  assert "'origin/v1^{commit}'" in command and 'checkout -q --force --detach' in command
  assert 'python3.12 -m venv .venv' in command
  subprocess.run(['bash', '-n', '-c', command], check=True)


def test_run_on_all_workers_with_overrides():
  (ssh,) = dry('run', *COMMON, '--workdir', 'gs://bucket/wrn', '--config=configs/x.py',
               '--config.train.lr=0.4', '--config.model.name=wrn-70-16', '--env', 'XLA_FLAGS=-x',
               '--', '--flagfile=f.txt')
  assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'tpu1']
  assert '--worker=all' in ssh and '--zone=us-central2-b' in ssh and '--project=proj' in ssh
  command = option(ssh, '--command')
  assert ('env PYTHONUNBUFFERED=1 XLA_FLAGS=-x .venv/bin/python -m trainer.main '
          '--config=configs/x.py --workdir=gs://bucket/wrn --config.distributed=True '
          '--config.train.lr=0.4 --config.model.name=wrn-70-16 --flagfile=f.txt &') in command
  subprocess.run(['bash', '-n', '-c', command], check=True)


def test_logs_tensorboard_stop_delete():
  (logs,) = dry('logs', *COMMON, '--worker', '2')
  assert logs[4] == 'ssh' and '--worker=2' in logs
  assert option(logs, '--command') == 'tail -n 200 -F "$HOME"/robust/logs/trainer.log'

  (tb,) = dry('tensorboard', '--workdir', 'gs://bucket/wrn', '--port', '7007')
  assert tb[0].endswith('tensorboard') and tb[1:] == ['--logdir=gs://bucket/wrn', '--port=7007']
  (tb,) = dry('tensorboard', *COMMON, '--workdir', 'gs://bucket/wrn', '--remote')
  assert tb[4] == 'ssh' and '--worker=0' in tb and tb[-3:] == ['--', '-L', '6006:localhost:6006']
  assert '--logdir=gs://bucket/wrn' in option(tb, '--command')

  stop, stop_vm = dry('stop', *COMMON, '--tpu', '--grace', '30')
  assert stop[4] == 'ssh' and '--worker=all' in stop
  assert 'kill -TERM "$p"' in option(stop, '--command')
  assert '-lt 30' in option(stop, '--command')
  assert stop_vm == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'stop', 'tpu1', '--zone=us-central2-b',
                     '--project=proj']

  assert dry('delete', *COMMON) == [['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'tpu1',
                                     '--zone=us-central2-b', '--project=proj', '--quiet']]
  assert dry('delete', *COMMON, '--queued') == [
      ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'tpu1-qr',
       '--zone=us-central2-b', '--project=proj', '--force', '--quiet']]


def test_supervise_dry_run_lists_the_loop():
  cmds = dry('supervise', *COMMON, '--spot', '--workdir', 'gs://bucket/wrn', '--config',
             'configs/x.py')
  words = [c[1:5] for c in cmds if c[0] == 'gcloud']
  assert words[0][:2] == ['storage', 'ls'] and cmds[0][-1] == 'gs://bucket/wrn/done.json'
  assert ['compute', 'tpus', 'tpu-vm', 'describe'] in words
  assert ['compute', 'tpus', 'tpu-vm', 'create'] in words
  assert ['compute', 'tpus', 'tpu-vm', 'scp'] in words
  ssh = gcloud_cmds(cmds, 'compute', 'tpus', 'tpu-vm', 'ssh')
  assert len(ssh) == 2 and 'trainer.main' in option(ssh[1], '--command')
  assert '--spot' in gcloud_cmds(cmds, 'compute', 'tpus', 'tpu-vm', 'create')[0]


@pytest.mark.slow
def test_real_gcloud_parses_every_command(tmp_path):
  """Where the Cloud SDK is installed, every printed command gets past gcloud's argument parser
  (a fresh config has no account, so each stops at 'no active account' and nothing is sent)."""
  if shutil.which('gcloud') is None:
    pytest.skip('the Cloud SDK (gcloud) is not installed')
  workdir = ('--workdir', 'gs://bucket/wrn', '--config', 'configs/x.py')
  shapes = {}  # one command per subcommand and set of flags
  for args in (['create', '--spot', '--create-arg=--network=net1'], ['create', '--queued', '--spot'],
               ['setup'], ['run', *workdir, '--config.a=1'], ['tensorboard', '--remote', *workdir],
               ['status', '--queued', *workdir], ['stop', '--tpu'], ['delete'],
               ['delete', '--queued']):
    for c in dry(*args, *COMMON):
      if c[0] == 'gcloud':
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
])
def test_clear_errors(args, message):
  proc = sh(TPU_VM, '--dry-run', *args, check=False)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr
  assert not proc.stdout


def test_help():
  out = sh(TPU_VM, 'help').stdout
  for word in ('create', 'setup', 'run', 'logs', 'tensorboard', 'stop', 'delete', 'supervise',
               '--dry-run', 'TPU_NAME'):
    assert word in out


# ---- a fake gcloud: one TPU worker in a temporary HOME, a fake bucket, a fake trainer ----------------
FAKE_GCLOUD = textwrap.dedent('''\
    #!{python}
    """Records its calls; simulates TPU VMs, queued resources, ssh/scp and `storage ls`."""
    import json, os, shutil, subprocess, sys
    root = os.environ['FAKE_ROOT']
    args = sys.argv[1:]
    with open(os.path.join(root, 'calls.jsonl'), 'a') as f:
      f.write(json.dumps(args) + '\\n')
    state_file = os.path.join(root, 'state.json')
    st = json.load(open(state_file))
    def save():
      json.dump(st, open(state_file, 'w'))
    def fail(msg, rc=1):
      print(msg, file=sys.stderr)
      sys.exit(rc)
    def option(name):
      return next((a.split('=', 1)[1] for a in args if a.startswith(name + '=')), None)
    pos = [a for a in args if not a.startswith('--')]
    if pos[:2] == ['storage', 'ls']:
      path = os.path.join(root, 'gcs', pos[2][len('gs://'):])
      if os.path.exists(path):
        print(pos[2]); sys.exit(0)
      fail('ERROR: (gcloud.storage.ls) One or more URLs matched no objects.')
    group, verb = pos[2], pos[3]
    if group == 'queued-resources':
      if verb == 'describe':
        if st['qr'] is None:
          fail('ERROR: (gcloud.compute.tpus.queued-resources.describe) NOT_FOUND: not found')
        print(st['qr']); sys.exit(0)
      if verb == 'create':
        if st['qr'] is not None:
          fail('ERROR: ALREADY_EXISTS')
        st['qr'], st['node'] = 'ACTIVE', 'READY'
      elif verb == 'delete':
        st['qr'] = st['node'] = None
      save(); sys.exit(0)
    if verb == 'describe':
      if st['node'] is None:
        fail("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource 'x' was not found")
      print(st['node']); sys.exit(0)
    if verb == 'create':
      if st['node'] is not None:
        fail('ERROR: ALREADY_EXISTS')
      st['node'] = 'READY'
    elif verb == 'delete':
      st['node'] = None
    elif verb in ('stop', 'start'):
      st['node'] = 'STOPPED' if verb == 'stop' else 'READY'
    elif verb == 'scp':
      if st['node'] != 'READY':
        fail('ssh: connect to host: Connection refused', 255)
      shutil.copy(pos[4], os.path.join(os.environ['FAKE_HOME'], pos[5].split(':', 1)[1]))
    elif verb == 'ssh':
      if st['node'] != 'READY':
        fail('ssh: connect to host: Connection refused', 255)
      command = option('--command')
      env = dict(os.environ, HOME=os.environ['FAKE_HOME'])
      if '.venv/bin/python -m trainer.main' in command:
        step = st['plan'].pop(0)
        if step == 'preempt':
          st['node'] = 'PREEMPTED'
          if st['qr'] is not None:
            st['qr'] = 'SUSPENDED'
          save()
          fail('Connection to tpu closed by remote host.', 255)
        env['FAKE_TRAINER_MODE'] = step
        save()
      sys.exit(subprocess.run(['bash', '-c', command], env=env, cwd=env['HOME']).returncode)
    save()
''')

FAKE_PYTHON = textwrap.dedent('''\
    #!{python}
    """Stands in for a worker's .venv/bin/python: pip and -c succeed; -m trainer.main is a
    trainer that finishes, ends early, crashes or sleeps until SIGTERM (FAKE_TRAINER_MODE)."""
    import json, os, signal, sys, time
    root = os.environ['FAKE_ROOT']
    args = sys.argv[1:]
    with open(os.path.join(root, 'python_calls.jsonl'), 'a') as f:
      f.write(json.dumps(args) + '\\n')
    if args[:2] != ['-m', 'trainer.main']:
      print('0.10.2'); sys.exit(0)
    mode = os.environ.get('FAKE_TRAINER_MODE', 'finish')
    workdir = next(a.split('=', 1)[1] for a in args if a.startswith('--workdir='))
    print('trainer', mode, flush=True)
    if mode == 'finish':
      path = os.path.join(root, 'gcs', workdir[len('gs://'):])
      os.makedirs(path, exist_ok=True)
      json.dump({{'step': 10, 'total_steps': 10}}, open(os.path.join(path, 'done.json'), 'w'))
    elif mode == 'crash':
      sys.exit(1)
    elif mode == 'sleep':
      def on_term(*_):
        open(os.path.join(root, 'terminated'), 'w').write('saved')
        sys.exit(0)
      signal.signal(signal.SIGTERM, on_term)
      while True:
        time.sleep(0.05)
''')


class FakeCloud:

  def __init__(self, tmp_path, node=None, qr=None, plan=()):
    self.root = tmp_path
    self.home = tmp_path / 'home'
    venv_bin = self.home / 'robust' / '.venv' / 'bin'
    venv_bin.mkdir(parents=True)
    (self.home / 'robust' / 'stale.txt').write_text('removed by setup')
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for path, text in ((bin_dir / 'gcloud', FAKE_GCLOUD), (venv_bin / 'python', FAKE_PYTHON)):
      path.write_text(text.format(python=sys.executable))
      path.chmod(0o755)
    (tmp_path / 'gcs').mkdir()
    (tmp_path / 'state.json').write_text(json.dumps({'node': node, 'qr': qr, 'plan': list(plan)}))
    self.env = clean_env(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', FAKE_ROOT=str(tmp_path),
                         FAKE_HOME=str(self.home), TMPDIR=str(tmp_path))

  def __call__(self, *args, check=True):
    return sh(TPU_VM, *args, env=self.env, check=check, timeout=120)

  def calls(self):
    """Each gcloud call in short: 'storage ls', 'create', 'qr create', 'ssh run', ..."""
    out = []
    for line in (self.root / 'calls.jsonl').read_text().splitlines():
      argv = json.loads(line)
      if argv[0] == 'storage':
        out.append('storage ls')
      elif argv[2] == 'queued-resources':
        out.append('qr ' + argv[3])
      elif argv[3] == 'ssh':
        command = next(a for a in argv if a.startswith('--command='))
        out.append('ssh run' if 'trainer.main --config' in command else 'ssh setup')
      else:
        out.append(argv[3])
    return out

  def trainer_calls(self):
    lines = (self.root / 'python_calls.jsonl').read_text().splitlines()
    return [a for a in map(json.loads, lines) if a[:2] == ['-m', 'trainer.main']]

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
  creates = [json.loads(l) for l in (tmp_path / 'calls.jsonl').read_text().splitlines()
             if json.loads(l)[:4] == ['compute', 'tpus', 'tpu-vm', 'create']]
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
  attach = subprocess.Popen(['bash', str(TPU_VM), 'run', *COMMON, *args], env=cloud.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
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


# ---- local runner ----------------------------------------------------------------------------------
def test_local_dry_run_defaults():
  out = sh(LOCAL, '--dry-run', '--', '--config.train.steps=3').stdout.splitlines()
  assert out[-1] == ('+ .venv/bin/python -m trainer.method --config=configs/demo.py '
                     '--workdir=runs/demo --config.train.steps=3')
  assert '+ .venv/bin/python -m pip install -r requirements.txt' in out


def test_local_installs_once_then_runs(tmp_path):
  venv_bin = tmp_path / 'venv' / 'bin'
  venv_bin.mkdir(parents=True)
  log = tmp_path / 'calls.txt'
  python = venv_bin / 'python'
  python.write_text(textwrap.dedent(f'''\
      #!{sys.executable}
      import hashlib, sys
      if sys.argv[1] == '-c':
        code, sys.argv = sys.argv[2], ['-c'] + sys.argv[3:]
        exec(code)
      else:
        open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')
  '''))
  python.chmod(0o755)
  env = clean_env(VENV=str(tmp_path / 'venv'))
  sh(LOCAL, '--workdir', str(tmp_path / 'w'), '--', '--config.seed=1', env=env)
  sh(LOCAL, '--config', '', '--workdir', '', '--module', 'data.tool', env=env)
  assert log.read_text().splitlines() == [
      '-m pip install --upgrade pip',
      '-m pip install -r requirements.txt',
      f'-m trainer.method --config=configs/demo.py --workdir={tmp_path / "w"} --config.seed=1',
      '-m data.tool',
  ]
  proc = sh(LOCAL, '--no-install', '--venv', str(tmp_path / 'none'), check=False)
  assert proc.returncode == 2 and 'run once without --no-install' in proc.stderr
