"""The edge of every command: paths, the console, and errors a person can act on.

Each entry point (`trainer.main`, `trainer.method`, `trainer.evaluate`, `trainer.sample`, …) starts
through `run(main)` and, once it knows its workdir, calls `start(workdir)`. From then on:

- the console carries what a person reads (stage lines, progress bars, warnings, the report);
  every absl record (ours, Orbax's, Grain's, clu's) goes to `WORKDIR/logs/`; `--verbose` brings
  the records back to the console as well;
- an error that names what is wrong (an unknown config key, a dataset that is not prepared, a
  workdir that cannot be written or holds another run) prints as one line, its traceback in the log;
  so do the errors met at a gs:// edge once the clients' own retries are spent: a package that is
  not installed (ImportError), credentials refused (401/403), a bucket out of reach (connection
  refused or reset, 429/503) — each with what to do (docs/reliability.md).

Local paths become absolute here, once: Orbax refuses relative checkpoint paths, and a command that
changes its working directory must not lose its workdir. URLs (gs://…) pass through untouched.
"""
import os
import re
import socket
import sys
import tempfile
import traceback
from typing import Any, Callable

import jax
from absl import app
from absl import flags
from absl import logging
from etils import epath

_VERBOSE = flags.DEFINE_bool('verbose', False, 'Also print the log records (absl, Orbax, Grain, '
                             'TensorFlow) on the console; they always go to WORKDIR/logs/.')

# Errors whose message already says what is wrong and where: one line on the console.
ONE_LINE_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError,
                   FloatingPointError)
_state = {'log_dir': None}
# Multi-host commands (trainer.main, trainer.sample) share these; JAX detects them on Cloud TPU,
# SLURM, Open MPI and Kubernetes.
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'jax.distributed: HOST:PORT of process 0 (default: detected).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'jax.distributed: number of processes (default: detected).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'jax.distributed: index of this process (default: detected).')


def initialize_distributed(enabled: bool, switch: str) -> None:
  """jax.distributed.initialize() when `enabled`; cluster flags without it are a usage error
  (each process would otherwise run alone, all of them in the same workdir)."""
  cluster = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if enabled:
    jax.distributed.initialize(*cluster)
  elif any(v is not None for v in cluster):
    raise app.UsageError(f'--coordinator_address/--num_processes/--process_id need {switch}.')


class UserError(Exception):
  """A mistake in what the user asked for, told in one line (e.g. a bad flag or workdir)."""


def is_url(path: str) -> bool:
  return '://' in str(path)


def absolute(path: str | None) -> str | None:
  """A local path made absolute (and ~ expanded); a URL, '' or None as it is."""
  if not path or is_url(path):
    return path
  return os.path.abspath(os.path.expanduser(os.fspath(path)))


def log_dir(workdir: str) -> str:
  """WORKDIR/logs for a local workdir; a local temporary folder for a URL workdir (absl writes
  its log with plain file calls)."""
  if is_url(workdir):
    return os.path.join(tempfile.gettempdir(), 'robust-training-logs')
  return os.path.join(workdir, 'logs')


GCS_CREDENTIALS_HINT = ('give Google Cloud credentials (`gcloud auth application-default login`, '
                        'or GOOGLE_APPLICATION_CREDENTIALS=key.json) with write access to the '
                        'bucket')


NETWORK_HINT = ('Google Cloud Storage could not be reached, after retrying (network, proxy or '
                'service outage); what is saved is intact: run the same command again to resume')
INSTALL_HINT = ('install the pinned requirements: pip install --no-deps -r requirements.lock '
                '(or pip install -r requirements.txt)')
# Errors of the storage clients (TensorFlow's GCS filesystem, google-cloud-storage / requests),
# by class name: their retries are spent when one reaches us.
_CREDENTIAL_ERRORS = {'PermissionDeniedError', 'UnauthenticatedError', 'Forbidden', 'Unauthorized',
                      'RefreshError', 'DefaultCredentialsError'}
_NETWORK_ERRORS = {'UnavailableError', 'AbortedError', 'DeadlineExceededError',
                   'ServiceUnavailable', 'TooManyRequests', 'RetryError', 'ConnectionError',
                   'ConnectTimeout', 'ReadTimeout', 'ProxyError', 'SSLError'}
_CLIENT_MODULES = ('tensorflow', 'google.', 'requests', 'urllib3')


def storage_hint(error: BaseException) -> str | None:
  """What to do about an error of a storage client (credentials, network), or None when it is
  not one."""
  for cls in type(error).__mro__:
    if not cls.__module__.startswith(_CLIENT_MODULES):
      continue
    if cls.__name__ in _CREDENTIAL_ERRORS:
      return GCS_CREDENTIALS_HINT
    if cls.__name__ in _NETWORK_ERRORS:
      return NETWORK_HINT
  return None


def has_gcs_credentials() -> bool:
  """Whether Google Cloud credentials can be found: a key file, gcloud's application-default
  credentials, or a metadata server (on GCE and TPU VMs). Checked before the first gs:// call,
  which would otherwise retry for about a minute before failing."""
  key = os.environ.get('GOOGLE_APPLICATION_CREDENTIALS')
  if key and os.path.exists(key):
    return True
  config = os.environ.get('CLOUDSDK_CONFIG', os.path.expanduser('~/.config/gcloud'))
  if os.path.exists(os.path.join(config, 'application_default_credentials.json')):
    return True
  try:
    socket.getaddrinfo(os.environ.get('GCE_METADATA_HOST', 'metadata.google.internal'), 80)
    return True
  except OSError:
    return False


def check_writable(workdir: str) -> None:
  """Fails in one line, before any work, when the workdir cannot be created or written."""
  if str(workdir).startswith('gs://') and not has_gcs_credentials():
    raise UserError(f'cannot write to {workdir}: no Google Cloud credentials found; '
                    f'{GCS_CREDENTIALS_HINT}.')
  probe = epath.Path(workdir) / f'.write-probe-{os.getpid()}'
  try:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    probe.write_text('')
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except
    if is_url(workdir):
      raise UserError(f'cannot write to {workdir}: {_first_line(e)}; '
                      f'{storage_hint(e) or GCS_CREDENTIALS_HINT}.') from e
    raise UserError(f'cannot write to workdir {workdir}: {_first_line(e)}') from e


def start(workdir: str) -> str:
  """Checks the workdir can be written, then sends the log records to its logs/ folder."""
  check_writable(workdir)
  directory = log_dir(workdir)
  os.makedirs(directory, exist_ok=True)
  program = os.path.basename(sys.argv[0]).removesuffix('.py') or 'run'
  if program == '__main__':
    program = 'run'
  handler = logging.get_absl_handler()
  handler.use_absl_log_file(program, directory)
  flags.FLAGS.alsologtostderr = _VERBOSE.value
  flags.FLAGS.stderrthreshold = 'warning'
  _state['log_dir'] = directory
  logging.info('Command line: %s', ' '.join(sys.argv))
  return directory


def start_run(config, workdir: str) -> str:
  """The start of a training command: jax.distributed when config.distributed, the workdir made
  absolute and checked, the logs sent there; returns the workdir."""
  initialize_distributed(config.distributed, '--config.distributed=True')
  workdir = absolute(workdir)
  start(workdir)
  logging.info('Process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  return workdir


def _first_line(e: BaseException) -> str:
  text = str(e).strip() or type(e).__name__
  return text.splitlines()[0].strip('"\'')


def unknown_key_message(argv: list[str], error: BaseException) -> str | None:
  """The override that names a key the config does not have, if that is what `error` is, with
  ml_collections' suggestion of the nearest key when it has one."""
  text = str(error)
  name = re.search(r"[\w.]+", text.replace('\\n', '\n').split('\n')[0])
  suggestion = re.search(r'Did you mean "([\w.]+)"', text)
  if name is None:
    return None
  for arg in argv:
    match = re.match(r'--?config\.([\w.]+)(=|$)', arg)
    if match and name.group(0) in match.group(1).split('.'):
      hint = f'did you mean {suggestion.group(1)!r}? ' if suggestion else ''
      return (f'unknown config key in {arg}: {name.group(0)!r} is not a key of the config '
              f'({hint}every key is documented in configs/base.py)')
  return None


def parse_flags(argv: list[str], parser: Callable | None = None) -> list[str]:
  """absl's flag parsing, with an unknown config key or a bad flag told in one line."""
  try:
    return parser(argv) if parser else flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    message = unknown_key_message(argv, e)
    if message is None:
      raise
    _fail(message, e)
  except flags.Error as e:
    _fail(f'{e} (see --helpfull)', e)
  except UserError as e:
    _fail(str(e), e)


def _fail(message: str, error: BaseException) -> None:
  if _state['log_dir']:
    logging.info('%s', ''.join(traceback.format_exception(error)))
    message += f'  (traceback in {_state["log_dir"]})'
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(1)


def run(main: Callable[[], Any], parser: Callable | None = None) -> None:
  """app.run(main) for a command whose flags are defined at module level: positional arguments
  are refused, and the errors a newcomer meets are told in one line with nothing else lost."""

  def guarded(argv):
    try:
      if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])} (flags take the form '
                             '--name=value)')
      return main()
    except UserError as e:
      _fail(str(e), e)
    except ONE_LINE_ERRORS as e:
      _fail(_first_line(e), e)
    except ImportError as e:  # ours say what to install; a library's says which module
      message = _first_line(e)
      _fail(message if 'pip install' in message else
            f'{message}: a package is missing; {INSTALL_HINT}', e)
    except Exception as e:  # pylint: disable=broad-except
      hint = storage_hint(e)
      if hint is None:
        raise
      # TensorFlow names the gs:// object on the message's last line.
      _fail(f'{" ".join(str(e).split())}; {hint}', e)

  app.run(guarded, flags_parser=lambda argv: parse_flags(argv, parser))
