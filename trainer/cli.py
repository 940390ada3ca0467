"""The edge of every command: paths, the console, and errors a person can act on.

Each entry point (`trainer.main`, `trainer.method`, `trainer.evaluate`, `trainer.sample`, …) starts
through `run(main)` and, once it knows its workdir, calls `start(workdir)`. From then on:

- the console carries what a person reads (stage lines, progress bars, this project's warnings,
  the report); every absl record (ours, Orbax's, Grain's, clu's) goes to `WORKDIR/logs/`;
  `--verbose` brings the records back to the console as well;
- an error that names what is wrong (an unknown config key, a dataset that is not prepared, a
  workdir that cannot be written or holds another run) prints as one line, its traceback in the log;
  so do the errors met at a gs:// edge once the clients' own retries are spent: a package that is
  not installed (ImportError), credentials refused (401/403), a bucket out of reach (connection
  refused or reset, 429/503) — each with what to do (docs/reliability.md).

Local paths become absolute here, once: Orbax refuses relative checkpoint paths, and a command that
changes its working directory must not lose its workdir. URLs (gs://…) pass through untouched.
"""
import errno
import logging as std_logging
import os
import re
import socket
import sys
import tempfile
import threading
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
# A disk that cannot take more: what was saved before is intact (every write is atomic).
DISK_HINTS = {
    errno.ENOSPC: 'the disk is full: free space (or pass another --workdir), then run the same '
                  'command again; what was saved is intact',
    errno.EDQUOT: 'the disk quota is used up: free space, then run the same command again; what '
                  'was saved is intact',
    errno.EROFS: 'the file system is read-only: pass a --workdir on a writable disk'}
def disk_hint(error: BaseException) -> str | None:
  """What to do when a write failed for want of space, whichever layer raised it (an OSError, or
  tensorstore's RESOURCE_EXHAUSTED naming errno 28 in its message)."""
  hint = DISK_HINTS.get(getattr(error, 'errno', None))
  if hint is None and 'No space left on device' in str(error):
    hint = DISK_HINTS[errno.ENOSPC]
  return hint


def _with_disk_hint(message: str, error: BaseException) -> str:
  hint = disk_hint(error)
  return f'{message}; {hint}' if hint else message


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
  not one. A gs:// request that failed where no credentials exist is told as their absence (the
  first thing to fix), whatever the client made of it (TensorFlow says the host is unknown)."""
  for cls in type(error).__mro__:
    if not cls.__module__.startswith(_CLIENT_MODULES):
      continue
    if 'gs://' in str(error) and not has_gcs_credentials():
      return GCS_CREDENTIALS_HINT
    if cls.__name__ in _CREDENTIAL_ERRORS:
      return GCS_CREDENTIALS_HINT
    if cls.__name__ in _NETWORK_ERRORS or 'Could not resolve host' in str(error):
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


def check_gcs_readable(path: str, what: str) -> None:
  """A gs:// path without any Google Cloud credentials fails here, in one line, before a client
  spends a minute retrying (and TensorFlow prints its own warnings)."""
  if str(path).startswith('gs://') and not has_gcs_credentials():
    raise UserError(f'cannot read {path} ({what}): no Google Cloud credentials found; '
                    f'{GCS_CREDENTIALS_HINT}.')


def check_config_paths(config) -> None:
  """check_gcs_readable for every gs:// path in a config (data, shards, generators)."""
  def walk(tree, prefix):
    for key, value in tree.items():
      if isinstance(value, dict):
        walk(value, f'{prefix}{key}.')
      elif isinstance(value, str):
        check_gcs_readable(value, f'--config.{prefix}{key}')
  walk(config.to_dict(), '')


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
  # The console shows this project's warnings; the libraries' records (Orbax's errors of a save
  # that the run reports itself, Grain's and TensorFlow's notices) stay in the log.
  flags.FLAGS.stderrthreshold = 'fatal'
  if not _VERBOSE.value and not any(isinstance(h, _ConsoleWarnings)
                                    for h in std_logging.getLogger().handlers):
    std_logging.getLogger().addHandler(_ConsoleWarnings())
  # A log file that cannot be written (its disk is full) must not print a traceback per record;
  # and a background thread's exception (Orbax's writers) goes to the log: the main thread
  # raises it again at the next save, which the console shows in one line.
  std_logging.raiseExceptions = False
  threading.excepthook = _log_thread_exception
  sys.excepthook = _background_excepthook(sys.excepthook)
  sys.unraisablehook = _log_unraisable
  _state['log_dir'] = directory
  logging.info('Command line: %s', ' '.join(sys.argv))
  return directory


_PROJECT_CODE = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d)
                      + os.sep for d in ('trainer', 'data', 'models', 'configs'))


class _ConsoleWarnings(std_logging.StreamHandler):
  """`warning: …` on stderr for WARNING and worse records of this project's own code."""

  def __init__(self):
    super().__init__(sys.stderr)
    self.setFormatter(std_logging.Formatter('warning: %(message)s'))
    self.addFilter(lambda r: r.levelno >= std_logging.WARNING
                   and os.path.abspath(r.pathname).startswith(_PROJECT_CODE))


def _log_thread_exception(args):
  logging.info('Exception in thread %s:\n%s', getattr(args.thread, 'name', '?'), ''.join(
      traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))


def _log_unraisable(unraisable):
  """Errors Python cannot raise anywhere (e.g. a TensorStore callback into an event loop that
  Orbax closed after a failed save): the log, not the console."""
  logging.info('Unraisable exception (%s):\n%s', unraisable.err_msg or '', ''.join(
      traceback.format_exception(unraisable.exc_type, unraisable.exc_value,
                                 unraisable.exc_traceback)))


def _background_excepthook(original):
  """sys.excepthook that leaves the main thread's errors to `original` and logs the others:
  TensorStore's threads report their callbacks' errors through it (e.g. an event loop that Orbax
  closed after a failed save), which are noise once the run reports the failure itself."""
  def hook(exc_type, exc_value, exc_traceback):
    if threading.current_thread() is threading.main_thread():
      return original(exc_type, exc_value, exc_traceback)
    logging.info('Exception in a background thread:\n%s', ''.join(
        traceback.format_exception(exc_type, exc_value, exc_traceback)))
  return hook


def start_run(config, workdir: str) -> str:
  """The start of a training command: jax.distributed when config.distributed, the workdir made
  absolute and checked, the logs sent there; returns the workdir."""
  initialize_distributed(config.distributed, '--config.distributed=True')
  workdir = absolute(workdir)
  check_config_paths(config)
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
  except ONE_LINE_ERRORS as e:  # e.g. the config a command reads from its workdir is not there
    _fail(_first_line(e), e)
  except Exception as e:  # pylint: disable=broad-except  (a workdir in a bucket out of reach)
    hint = storage_hint(e)
    if hint is None:
      raise
    _fail(f'{" ".join(str(e).split())}; {hint}', e)


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
      _fail(_with_disk_hint(_first_line(e), e), e)
    except OSError as e:
      if disk_hint(e) is None:
        raise
      _fail(_with_disk_hint(_first_line(e), e), e)
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
