#!/usr/bin/env bash
# What runs on each TPU VM worker. launch/tpu_vm.sh copies this file to the home directory of
# every worker and runs it there, on all workers at once, through `gcloud ... ssh --worker=all`:
#   worker.sh setup  --dir D --module M --python V --jax J (--archive F | --git-url U --git-ref R)
#   worker.sh run    --dir D --module M [--detach] [--env KEY=VALUE]... -- TRAINER ARGS
#   worker.sh stop   --dir D --module M [--grace SECONDS]
#   worker.sh status --dir D --module M
# D is the code directory and F a code archive, both under $HOME unless absolute. The trainer
# (`D/.venv/bin/python -m M TRAINER ARGS`) runs detached from the SSH session, so it survives a
# dropped connection, and writes D/logs/trainer.log, trainer.pid (its process id) and trainer.exit
# (its exit status, written when it ends).
set -euo pipefail

readonly LIBTPU_INDEX="https://storage.googleapis.com/jax-releases/libtpu_releases.html"
readonly GCS_CHECK='import jax, tensorflow as tf
from google.cloud import storage
assert "gs" in tf.io.gfile.get_registered_schemes(), "TensorFlow has no gs:// filesystem"
print(f"jax {jax.__version__}, gs:// with google-cloud-storage {storage.__version__}")'
HOST=$(hostname)
DIR="" MODULE="" PYTHON="" JAX="" ARCHIVE="" GIT_URL="" GIT_REF="" GRACE=300 DETACH=0 PID=""
ENVS=()
ARGS=()

die() {
  printf 'worker.sh on %s: error: %s\n' "$HOST" "$*" >&2
  exit 2
}

# True when logs/trainer.pid names a live `python -m MODULE`, checked through /proc so that a
# stale pid from before a reboot does not count; sets PID.
alive() {
  local cmdline
  PID=$(cat "$DIR/logs/trainer.pid" 2>/dev/null) && [[ -n $PID ]] &&
    cmdline=$(tr '\0' ' ' <"/proc/$PID/cmdline" 2>/dev/null) &&
    [[ "$cmdline " == *" -m $MODULE "* ]]
}

# Waits up to 0.2 * TRIES seconds for FILE to be non-empty.
wait_for() {
  local file=$1 tries=$2 i
  for ((i = 0; i < tries; i++)); do
    [[ -s $file ]] && return 0
    sleep 0.2
  done
  return 1
}

# The code from a git repository, at GIT_REF (a branch, tag or commit); logs/ is kept.
checkout() {
  local ref
  if [[ ! -d $DIR/.git ]]; then
    mkdir -p "$DIR"
    git -C "$DIR" init -q
    git -C "$DIR" remote add origin "$GIT_URL"
  fi
  git -C "$DIR" remote set-url origin "$GIT_URL"
  git -C "$DIR" fetch -q --tags origin '+refs/heads/*:refs/remotes/origin/*'
  ref=$(git -C "$DIR" rev-parse -q --verify "origin/$GIT_REF^{commit}" ||
    git -C "$DIR" rev-parse -q --verify "$GIT_REF^{commit}") ||
    die "no commit '$GIT_REF' in $GIT_URL"
  git -C "$DIR" checkout -q --force --detach "$ref"
  git -C "$DIR" clean -fdq -e /logs/
}

# The code from the archive tpu_vm.sh copied here: replaces all but .venv and logs/.
unpack() {
  [[ -f $ARCHIVE ]] || die "no code archive at $ARCHIVE"
  mkdir -p "$DIR"
  find "$DIR" -mindepth 1 -maxdepth 1 ! -name .venv ! -name logs -exec rm -rf {} +
  tar -xzf "$ARCHIVE" -C "$DIR"
  rm -f "$ARCHIVE"
}

# .venv with python$PYTHON; where that Python is missing, uv fetches it.
make_venv() {
  [[ ! -x .venv/bin/python ]] || return 0
  local py="python$PYTHON"
  if command -v "$py" >/dev/null 2>&1 && "$py" -m venv .venv; then
    return 0
  fi
  rm -rf .venv
  if [[ ! -x $HOME/.local/bin/uv ]]; then
    python3 -m pip install --user --quiet uv || curl -LsSf https://astral.sh/uv/install.sh | sh
  fi
  "$HOME/.local/bin/uv" venv --seed --python "$PYTHON" .venv
}

cmd_setup() {
  [[ -n $PYTHON && -n $JAX ]] || die "setup needs --python VERSION and --jax VERSION"
  if alive; then
    echo "trainer running on $HOST (pid $PID): setup skipped"
    return 0
  fi
  if [[ -n $GIT_URL ]]; then
    [[ -n $GIT_REF ]] || die "--git-url needs --git-ref"
    checkout
  else
    [[ -n $ARCHIVE ]] || die "setup needs --archive FILE or --git-url URL"
    unpack
  fi
  cd "$DIR"
  make_venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt "jax[tpu]==$JAX" -f "$LIBTPU_INDEX"
  # The workdir is a bucket: TensorFlow's gs:// filesystem (shards, events, JSON) and
  # google-cloud-storage (Orbax lists checkpoint steps with it) come with requirements.txt. A
  # worker without them fails its setup here rather than the run at its first checkpoint.
  echo "$HOST: $(.venv/bin/python -c "$GCS_CHECK")"
}

# Runs in the background, ignoring the SIGHUP of a closing SSH session.
start_trainer() {
  trap '' HUP
  env PYTHONUNBUFFERED=1 "${ENVS[@]}" .venv/bin/python -m "$MODULE" "${ARGS[@]}" &
  echo "$!" >logs/trainer.pid
  local rc=0
  wait "$!" || rc=$?
  echo "$rc" >logs/trainer.exit
}

# Starts the trainer, or attaches to the one already running, then follows its log to the end
# and exits with its status (--detach: returns once it has started).
cmd_run() {
  local n from rc
  cd "$DIR"
  mkdir -p logs
  touch logs/trainer.log
  n=$(wc -l <logs/trainer.log)
  if alive; then
    echo "trainer already running on $HOST (pid $PID): attaching"
    from=$((n > 50 ? n - 49 : 1))
  else
    rm -f logs/trainer.pid logs/trainer.exit
    from=$((n + 1))
    echo "=== launch $(date -u +%FT%TZ) on $HOST ===" >>logs/trainer.log
    start_trainer >>logs/trainer.log 2>&1 </dev/null &
  fi
  wait_for logs/trainer.pid 600 || die "the trainer did not start (see $DIR/logs/trainer.log)"
  PID=$(cat logs/trainer.pid)
  if ((DETACH)); then
    echo "trainer started on $HOST (pid $PID); log: $DIR/logs/trainer.log"
    return 0
  fi
  tail -n "+$from" -s 0.5 -f --pid="$PID" logs/trainer.log || true
  wait_for logs/trainer.exit 300 || true
  rc=$(cat logs/trainer.exit 2>/dev/null || echo 1)
  echo "trainer on $HOST exited with status $rc"
  exit "$rc"
}

# SIGTERM (the trainer saves at the next step boundary and exits); SIGKILL after GRACE seconds.
cmd_stop() {
  [[ $GRACE =~ ^[0-9]+$ ]] || die "--grace '$GRACE' is not a whole number of seconds"
  if ! alive; then
    echo "no trainer running on $HOST"
    return 0
  fi
  kill -TERM "$PID"
  echo "SIGTERM sent to the trainer (pid $PID) on $HOST"
  local i=0
  while kill -0 "$PID" 2>/dev/null && ((i < GRACE)); do
    sleep 1
    i=$((i + 1))
  done
  if kill -0 "$PID" 2>/dev/null; then
    echo "still running after ${GRACE}s: SIGKILL"
    kill -KILL "$PID"
  else
    echo "trainer on $HOST has exited"
  fi
}

cmd_status() {
  if alive; then
    echo "$HOST: trainer running (pid $PID)"
  else
    echo "$HOST: no trainer running (last exit status: $(cat "$DIR/logs/trainer.exit" 2>/dev/null ||
      echo none))"
  fi
}

# A path under $HOME unless it is absolute.
from_home() { if [[ $1 == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$HOME" "$1"; fi; }

main() {
  local command=${1:-}
  (($#)) && shift
  while (($#)); do
    case $1 in
      --) shift && ARGS=("$@") && break ;;
      --detach) DETACH=1 && shift && continue ;;
    esac
    (($# >= 2)) || die "option $1 needs a value"
    case $1 in
      --dir) DIR=$(from_home "$2") ;;
      --module) MODULE=$2 ;;
      --python) PYTHON=$2 ;;
      --jax) JAX=$2 ;;
      --archive) ARCHIVE=$(from_home "$2") ;;
      --git-url) GIT_URL=$2 ;;
      --git-ref) GIT_REF=$2 ;;
      --grace) GRACE=$2 ;;
      --env) ENVS+=("$2") ;;
      *) die "unknown option '$1'" ;;
    esac
    shift 2
  done
  [[ -n $DIR && -n $MODULE ]] || die "needs --dir DIR and --module MODULE"
  case $command in
    setup | run | stop | status) "cmd_$command" ;;
    *) die "unknown command '$command' (one of: setup run stop status)" ;;
  esac
}

main "$@"
