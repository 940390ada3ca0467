#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create the TPU (on-demand, spot or through a queued resource),
# set up every worker, run the trainer on all workers, follow its logs, start TensorBoard,
# stop/delete, and a supervisor that relaunches after preemptions until the run has finished.
# `bash launch/tpu_vm.sh help` prints the usage. Every subcommand takes --dry-run, which prints
# the commands it would run, one per line, prefixed with '+ ', and runs none of them.
#
# On the workers: the code lives in ~/REMOTE_DIR (default ~/robust) with its own .venv; the
# trainer runs detached from the SSH session (it survives a dropped connection) and writes
# ~/REMOTE_DIR/logs/trainer.log, trainer.pid (the trainer's process id) and trainer.exit (its
# exit status, written when it ends). `run` attaches to a trainer that is already running
# instead of starting a second one.
#
# Contract with the trainer (how `supervise` knows that the run has finished):
#   * When the trainer has completed its last step -- final checkpoint saved and committed,
#     final evaluation written -- process 0 writes WORKDIR/done.json, as the very last thing,
#     in one write (a GCS object appears whole; on a local disk write a temporary file and
#     rename it). Content: JSON such as
#       {"step": 97656, "total_steps": 97656, "finished_at": "2021-10-27T12:00:00Z"}
#   * A trainer started on a workdir whose checkpoint is already at the last step (re)writes
#     done.json and exits 0 without training.
#   * done.json is never written for an unfinished run: on SIGTERM (what `stop` sends and what
#     a preemption notice brings) the trainer saves at the next step boundary and exits 0
#     WITHOUT done.json.
#   `supervise` stops as soon as `gcloud storage ls WORKDIR/done.json` succeeds. Any other
#   ending -- exit 0 after SIGTERM, a crash, a lost or preempted VM -- is followed by a relaunch
#   that resumes from the latest checkpoint.
set -euo pipefail

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "tpu_vm.sh: needs bash >= 4.4 (this is $BASH_VERSION; on macOS: brew install bash)" >&2
  exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
# shellcheck source=launch/common.sh
source "$ROOT/launch/common.sh"
readonly LIBTPU_INDEX="https://storage.googleapis.com/jax-releases/libtpu_releases.html"

usage() {
  cat <<'EOF'
Usage: bash launch/tpu_vm.sh COMMAND [options] [-- trainer args]

Commands:
  create      create the TPU: on-demand, --spot, and/or --queued (a queued resource NAME-qr)
  setup       on every worker: copy the code (or git clone it with --git-url), create .venv,
              pip install -r requirements.txt and jax[tpu] at the version pinned there
  run         run the trainer on all workers (--worker=all) and stream its log until it ends;
              --detach: start it and return
  logs        follow the trainer log of one worker (--worker N, default 0; or all)
  tensorboard TensorBoard on the workdir: locally, or with --remote on worker 0 through an
              SSH tunnel to localhost:PORT
  status      state of the TPU (and queued resource), done.json, trainer alive per worker
  stop        send SIGTERM to the trainer on all workers (it saves and exits); after --grace
              seconds, SIGKILL. --tpu also stops the TPU VM
  delete      delete the TPU (with --queued: the queued resource and its TPU)
  supervise   loop until WORKDIR/done.json exists: wait for the TPU to be READY (create or
              re-create it when missing or preempted), setup, run; relaunch after each ending
              that is not the end of training (stops after --max-restarts relaunches)
  help        this text

Options (environment variable defaults in brackets):
  --name NAME             TPU name [TPU_NAME] (required)
  --zone ZONE             zone, e.g. us-central2-b [TPU_ZONE] (required)
  --project PROJECT       project [TPU_PROJECT; unset: gcloud's configured project]
  --accelerator-type T    [TPU_ACCELERATOR_TYPE; v4-32]
  --version V             TPU software version [TPU_VERSION; from the type: v2/v3/v4
                          tpu-ubuntu2204-base, v5p v2-alpha-tpuv5, v5e (v5litepod)
                          v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e]
  --spot                  spot capacity [TPU_SPOT=1]
  --queued                create through a queued resource [TPU_QUEUED=1]
  --create-arg ARG        extra flag for the create command, repeatable
                          (e.g. --create-arg=--network=my-net)
  --workdir gs://B/DIR    training workdir: checkpoints, TensorBoard, done.json [TPU_WORKDIR]
  --config FILE           config file, e.g. configs/cifar10_linf_wrn70_16_100m.py [TPU_CONFIG]
  --config.KEY=VALUE      config override for the trainer, repeatable
  --env KEY=VALUE         environment variable for the trainer, repeatable
  --module MODULE         trainer module, run as python -m MODULE [TPU_MODULE; trainer.main]
  --remote-dir DIR        code directory on the workers, under $HOME unless absolute
                          [TPU_REMOTE_DIR; robust]
  --python VERSION        Python of the workers' venv [TPU_PYTHON; 3.11]
  --git-url URL           setup clones this repository instead of copying the local files
                          [TPU_GIT_URL]
  --git-ref REF           commit, tag or branch to check out [TPU_GIT_REF; the local HEAD]
  --detach                run: start the trainer and return
  --worker N|all          logs: which worker [0]
  --remote                tensorboard: on worker 0, reached through an SSH tunnel
  --port PORT             tensorboard port [6006]
  --grace SECONDS         stop: wait this long after SIGTERM before SIGKILL [300]
  --tpu                   stop: also stop the TPU VM
  --poll SECONDS          supervise: interval between state checks and relaunches
                          [TPU_POLL; 60]
  --max-restarts N        supervise: give up after N relaunches [TPU_MAX_RESTARTS; 100]
  --dry-run               print the commands ('+ ' prefix), run nothing
  -h, --help              this text
  -- ARGS                 everything after -- is passed to the trainer unchanged

The trainer runs as
  python -m MODULE --config=FILE --workdir=WORKDIR --config.distributed=True [overrides] [ARGS]

Example:
  export TPU_NAME=robust-v4 TPU_ZONE=us-central2-b TPU_SPOT=1
  bash launch/tpu_vm.sh supervise --workdir=gs://my-bucket/wrn70 \
    --config=configs/cifar10_linf_wrn70_16_100m.py --config.generated.path=gs://my-bucket/gen/manifest.json
EOF
}

# ---- settings ---------------------------------------------------------------------------------
COMMAND=""
NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
PROJECT="${TPU_PROJECT:-}"
ACCELERATOR_TYPE="${TPU_ACCELERATOR_TYPE:-v4-32}"
VERSION="${TPU_VERSION:-}"
SPOT="${TPU_SPOT:-0}"
QUEUED="${TPU_QUEUED:-0}"
WORKDIR="${TPU_WORKDIR:-}"
CONFIG="${TPU_CONFIG:-}"
MODULE="${TPU_MODULE:-trainer.main}"
REMOTE_DIR="${TPU_REMOTE_DIR:-robust}"
PYTHON_VERSION="${TPU_PYTHON:-3.11}"
GIT_URL="${TPU_GIT_URL:-}"
GIT_REF="${TPU_GIT_REF:-}"
POLL="${TPU_POLL:-60}"
MAX_RESTARTS="${TPU_MAX_RESTARTS:-100}"
DETACH=0
WORKER=0
REMOTE_TB=0
PORT=6006
GRACE=300
STOP_TPU=0
OVERRIDES=()
TRAINER_ARGS=()
TRAINER_ENV=()
CREATE_ARGS=()
ERR_FILE=""
RUNTIME=""     # TPU software version, resolved in main
JAX_VERSION="" # from requirements.txt, resolved in main

log() {
  printf '[tpu_vm %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2
}

truthy() {
  case "${1,,}" in
    1 | true | yes | on) return 0 ;;
    *) return 1 ;;
  esac
}

parse_args() {
  local value
  while (($#)); do
    case "$1" in
      -h | --help | help)
        usage
        exit 0
        ;;
      --)
        shift
        TRAINER_ARGS+=("$@")
        break
        ;;
      --config.*)
        OVERRIDES+=("$1")
        ;;
      --spot) SPOT=1 ;;
      --queued) QUEUED=1 ;;
      --detach) DETACH=1 ;;
      --remote) REMOTE_TB=1 ;;
      --tpu) STOP_TPU=1 ;;
      --dry-run) DRY_RUN=1 ;;
      --*)
        local flag=${1%%=*}
        case "$flag" in
          --name | --zone | --project | --accelerator-type | --version | --workdir | --config | \
            --module | --remote-dir | --python | --git-url | --git-ref | --poll | --max-restarts | \
            --worker | --port | --grace | --env | --create-arg) ;;
          *) die "unknown option '$flag' (see: bash launch/tpu_vm.sh help)" ;;
        esac
        if [[ $1 == *=* ]]; then
          value=${1#*=}
        else
          (($# >= 2)) || die "option $flag needs a value"
          [[ $2 != -* || $flag == --create-arg ]] || die "option $flag needs a value (got '$2')"
          shift
          value=$1
        fi
        case "$flag" in
          --name) NAME=$value ;;
          --zone) ZONE=$value ;;
          --project) PROJECT=$value ;;
          --accelerator-type) ACCELERATOR_TYPE=$value ;;
          --version) VERSION=$value ;;
          --workdir) WORKDIR=$value ;;
          --config) CONFIG=$value ;;
          --module) MODULE=$value ;;
          --remote-dir) REMOTE_DIR=$value ;;
          --python) PYTHON_VERSION=$value ;;
          --git-url) GIT_URL=$value ;;
          --git-ref) GIT_REF=$value ;;
          --poll) POLL=$value ;;
          --max-restarts) MAX_RESTARTS=$value ;;
          --worker) WORKER=$value ;;
          --port) PORT=$value ;;
          --grace) GRACE=$value ;;
          --env) TRAINER_ENV+=("$value") ;;
          --create-arg) CREATE_ARGS+=("$value") ;;
        esac
        ;;
      -*) die "unknown option '$1' (see: bash launch/tpu_vm.sh help)" ;;
      *)
        [[ -z $COMMAND ]] || die "unexpected argument '$1' (trainer arguments go after --)"
        COMMAND=$1
        ;;
    esac
    shift
  done
  truthy "$SPOT" && SPOT=1 || SPOT=0
  truthy "$QUEUED" && QUEUED=1 || QUEUED=0
}

# ---- validation ---------------------------------------------------------------------------------
require() {
  local what
  for what in "$@"; do
    case "$what" in
      name) [[ -n $NAME ]] || die "no TPU name: pass --name NAME or set TPU_NAME" ;;
      zone) [[ -n $ZONE ]] || die "no zone: pass --zone ZONE (e.g. us-central2-b) or set TPU_ZONE" ;;
      config) [[ -n $CONFIG ]] || die "no config: pass --config configs/NAME.py or set TPU_CONFIG" ;;
      workdir) [[ -n $WORKDIR ]] || die "no workdir: pass --workdir gs://BUCKET/DIR or set TPU_WORKDIR" ;;
      gs_workdir)
        [[ -n $WORKDIR ]] || die "no workdir: pass --workdir gs://BUCKET/DIR or set TPU_WORKDIR"
        [[ $WORKDIR == gs://?* ]] ||
          die "workdir '$WORKDIR' is not a gs:// path: all workers write to it, so it must be a bucket"
        ;;
    esac
  done
  [[ $POLL =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--poll '$POLL' is not a number of seconds"
  [[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "--max-restarts '$MAX_RESTARTS' is not a whole number"
  [[ $GRACE =~ ^[0-9]+$ ]] || die "--grace '$GRACE' is not a whole number of seconds"
  [[ $PORT =~ ^[0-9]+$ ]] || die "--port '$PORT' is not a port number"
  [[ $WORKER =~ ^([0-9]+|all)$ ]] || die "--worker '$WORKER' is not a worker index or 'all'"
  [[ $MODULE =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] || die "--module '$MODULE' is not a Python module name"
  local kv
  for kv in "${TRAINER_ENV[@]}"; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$kv' is not KEY=VALUE"
  done
}

# TPU software version: the flag, else the recommended one for the accelerator's generation.
runtime_version() {
  if [[ -n $VERSION ]]; then
    printf '%s' "$VERSION"
    return
  fi
  case "$ACCELERATOR_TYPE" in
    v2-* | v3-* | v4-*) printf 'tpu-ubuntu2204-base' ;;
    v5p-*) printf 'v2-alpha-tpuv5' ;;
    v5litepod-* | v5e-*) printf 'v2-alpha-tpuv5-lite' ;;
    v6e-*) printf 'v2-alpha-tpuv6e' ;;
    *) die "no default TPU software version for '$ACCELERATOR_TYPE': pass --version" ;;
  esac
}

# The jax version pinned in requirements.txt (jax[tpu] is installed at the same version).
jax_version() {
  local v
  v=$(sed -n 's/^[[:space:]]*jax[[:space:]]*==[[:space:]]*\([^[:space:];#]*\).*/\1/p' \
    "$ROOT/requirements.txt" | head -n 1)
  [[ -n $v ]] || die "found no 'jax==VERSION' line in $ROOT/requirements.txt"
  [[ $v =~ ^[0-9A-Za-z.+!-]+$ ]] || die "odd jax version '$v' in $ROOT/requirements.txt"
  printf '%s' "$v"
}

# ---- gcloud pieces --------------------------------------------------------------------------------
location() {
  LOC=(--zone="$ZONE")
  [[ -z $PROJECT ]] || LOC+=(--project="$PROJECT")
}

qr_id() { printf '%s-qr' "$NAME"; }

tpu_ssh() { # tpu_ssh WORKER COMMAND [extra gcloud args...]
  local worker=$1 command=$2
  shift 2
  run_cmd gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker="$worker" \
    --command="$command" "$@"
}

create_tpu() {
  local version=$RUNTIME
  if ((QUEUED)); then
    local cmd=(gcloud compute tpus queued-resources create "$(qr_id)" --node-id="$NAME" "${LOC[@]}"
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$version")
  else
    local cmd=(gcloud compute tpus tpu-vm create "$NAME" "${LOC[@]}"
      --accelerator-type="$ACCELERATOR_TYPE" --version="$version")
  fi
  ((SPOT)) && cmd+=(--spot)
  run_cmd "${cmd[@]}" "${CREATE_ARGS[@]}"
}

delete_tpu() {
  if ((QUEUED)); then
    run_cmd gcloud compute tpus queued-resources delete "$(qr_id)" "${LOC[@]}" --force --quiet
  else
    run_cmd gcloud compute tpus tpu-vm delete "$NAME" "${LOC[@]}" --quiet
  fi
}

# Prints the state from a describe command, MISSING when it does not exist, UNKNOWN on errors.
describe_state() {
  local out rc=0
  if ((DRY_RUN)); then
    run_cmd "$@"
    return 0
  fi
  out=$("$@" 2>"$ERR_FILE") || rc=$?
  if ((rc == 0)) && [[ -n $out ]]; then
    printf '%s\n' "$out"
  elif ((rc != 0)) && grep -qiE 'NOT_FOUND|not found' "$ERR_FILE"; then
    printf 'MISSING\n'
  else
    printf 'UNKNOWN\n'
  fi
}

node_state() {
  describe_state gcloud compute tpus tpu-vm describe "$NAME" "${LOC[@]}" --format='value(state)'
}

qr_state() {
  describe_state gcloud compute tpus queued-resources describe "$(qr_id)" "${LOC[@]}" \
    --format='value(state.state)'
}

is_done() {
  if ((DRY_RUN)); then
    run_cmd gcloud storage ls "$WORKDIR/done.json"
    return 1
  fi
  gcloud storage ls "$WORKDIR/done.json" >/dev/null 2>&1
}

# ---- remote shell snippets (each one line: `--command` is one argument) --------------------------
remote_dir() {
  if [[ $REMOTE_DIR == /* ]]; then
    q "$REMOTE_DIR"
  else
    # shellcheck disable=SC2016  # $HOME is expanded on the worker
    printf '"$HOME"/%s' "$(q "$REMOTE_DIR")"
  fi
}

# Defines D (code dir) and alive(): true when logs/trainer.pid names a live `python -m MODULE`
# (checked through /proc, so a stale pid from before a reboot does not count); sets p.
remote_prelude() {
  local pattern="-m $MODULE"
  printf '%s' "set -euo pipefail; D=$(remote_dir); alive() { p=\$(cat \"\$D/logs/trainer.pid\" 2>/dev/null) && [ -n \"\$p\" ] && c=\$(tr \"\\0\" \" \" < \"/proc/\$p/cmdline\" 2>/dev/null) && [[ \"\$c \" == *\" $pattern \"* ]]; }"
}

remote_setup_cmd() {
  local jax_v=$JAX_VERSION code_step archive
  if [[ -n $GIT_URL ]]; then
    code_step="if [ ! -d \"\$D/.git\" ]; then mkdir -p \"\$D\"; git -C \"\$D\" init -q; git -C \"\$D\" remote add origin $(q "$GIT_URL"); fi; git -C \"\$D\" remote set-url origin $(q "$GIT_URL"); git -C \"\$D\" fetch -q --tags origin '+refs/heads/*:refs/remotes/origin/*'; ref=\$(git -C \"\$D\" rev-parse -q --verify $(q "origin/$(git_ref)^{commit}") || git -C \"\$D\" rev-parse -q --verify $(q "$(git_ref)^{commit}")); git -C \"\$D\" checkout -q --force --detach \"\$ref\"; git -C \"\$D\" clean -fdq -e /logs/"
  else
    archive=$(remote_archive)
    code_step="mkdir -p \"\$D\"; find \"\$D\" -mindepth 1 -maxdepth 1 ! -name .venv ! -name logs -exec rm -rf {} +; tar -xzf \"\$HOME\"/$(q "$archive") -C \"\$D\"; rm -f \"\$HOME\"/$(q "$archive")"
  fi
  local py="python$PYTHON_VERSION"
  printf '%s' "$(remote_prelude); if alive; then echo \"trainer running on \$(hostname) (pid \$p): setup skipped\"; exit 0; fi; $code_step; cd \"\$D\"; if [ ! -x .venv/bin/python ]; then if command -v $(q "$py") >/dev/null 2>&1 && $(q "$py") -m venv .venv; then :; else rm -rf .venv; if [ ! -x \"\$HOME/.local/bin/uv\" ]; then python3 -m pip install --user --quiet uv || curl -LsSf https://astral.sh/uv/install.sh | sh; fi; \"\$HOME/.local/bin/uv\" venv --seed --python $(q "$PYTHON_VERSION") .venv; fi; fi; .venv/bin/python -m pip install --quiet --upgrade pip; .venv/bin/python -m pip install --quiet -r requirements.txt \"jax[tpu]==$jax_v\" -f $LIBTPU_INDEX; echo \"\$(hostname): jax \$(.venv/bin/python -c \"import jax; print(jax.__version__)\")\""
}

trainer_argv() {
  TRAINER_ARGV=(--config="$CONFIG" --workdir="$WORKDIR" --config.distributed=True
    "${OVERRIDES[@]}" "${TRAINER_ARGS[@]}")
}

remote_run_cmd() {
  trainer_argv
  local launch wait_part start
  launch="env PYTHONUNBUFFERED=1 $(qjoin "${TRAINER_ENV[@]}")${TRAINER_ENV[*]:+ }.venv/bin/python -m $(q "$MODULE") $(qjoin "${TRAINER_ARGV[@]}")"
  wait_part="for i in \$(seq 600); do [ -s logs/trainer.pid ] && break; sleep 0.2; done; p=\$(cat logs/trainer.pid); tail -n \"+\$from\" -s 0.5 -f --pid=\"\$p\" logs/trainer.log || true; for i in \$(seq 300); do [ -s logs/trainer.exit ] && break; sleep 0.2; done; rc=\$(cat logs/trainer.exit 2>/dev/null || echo 1); echo \"trainer on \$(hostname) exited with status \$rc\"; exit \"\$rc\""
  start="$(remote_prelude); cd \"\$D\"; mkdir -p logs; touch logs/trainer.log; n=\$(wc -l < logs/trainer.log); if alive; then echo \"trainer already running on \$(hostname) (pid \$p): attaching\"; from=\$(( n > 50 ? n - 49 : 1 )); else rm -f logs/trainer.pid logs/trainer.exit; from=\$(( n + 1 )); echo \"=== launch \$(date -u +%FT%TZ) on \$(hostname) ===\" >> logs/trainer.log; ( trap \"\" HUP; $launch & echo \$! > logs/trainer.pid; rc=0; wait \$! || rc=\$?; echo \$rc > logs/trainer.exit ) >> logs/trainer.log 2>&1 < /dev/null & fi"
  if ((DETACH)); then
    printf '%s' "$start; for i in \$(seq 600); do [ -s logs/trainer.pid ] && break; sleep 0.2; done; echo \"trainer started on \$(hostname) (pid \$(cat logs/trainer.pid)); log: \$D/logs/trainer.log\""
  else
    printf '%s' "$start; $wait_part"
  fi
}

remote_stop_cmd() {
  printf '%s' "$(remote_prelude); if alive; then kill -TERM \"\$p\"; echo \"SIGTERM sent to the trainer (pid \$p) on \$(hostname)\"; i=0; while kill -0 \"\$p\" 2>/dev/null && [ \"\$i\" -lt $GRACE ]; do sleep 1; i=\$((i + 1)); done; if kill -0 \"\$p\" 2>/dev/null; then echo \"still running after ${GRACE}s: SIGKILL\"; kill -KILL \"\$p\"; else echo \"trainer on \$(hostname) has exited\"; fi; else echo \"no trainer running on \$(hostname)\"; fi"
}

remote_status_cmd() {
  printf '%s' "$(remote_prelude); if alive; then echo \"\$(hostname): trainer running (pid \$p)\"; else echo \"\$(hostname): no trainer running (last exit status: \$(cat \"\$D/logs/trainer.exit\" 2>/dev/null || echo none))\"; fi"
}

# ---- code shipping ----------------------------------------------------------------------------------
git_ref() {
  if [[ -n $GIT_REF ]]; then
    printf '%s' "$GIT_REF"
  elif git -C "$ROOT" rev-parse -q --verify HEAD >/dev/null 2>&1; then
    git -C "$ROOT" rev-parse HEAD
  else
    printf 'main'
  fi
}

remote_archive() { printf '%s-code.tar.gz' "$(basename "$REMOTE_DIR")"; }

local_archive() { printf '%s/%s-code.tar.gz' "${TMPDIR:-/tmp}" "$NAME"; }

# Packs the tracked and untracked-but-not-ignored files of the checkout.
pack_code() {
  local archive=$1
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    if ((DRY_RUN)); then
      printf '+ %s\n' "(cd $(q "$ROOT") && git ls-files -z -co --exclude-standard | tar --null -T - -czf $(q "$archive"))"
      return 0
    fi
    (cd "$ROOT" && git ls-files -z -co --exclude-standard | tar --null -T - -czf "$archive")
  else
    run_cmd tar -czf "$archive" -C "$ROOT" --exclude=.venv --exclude=.git --exclude=runs \
      --exclude=workdirs --exclude=__pycache__ .
  fi
}

# ---- subcommands ---------------------------------------------------------------------------------
cmd_create() {
  require name zone
  create_tpu
  if ((QUEUED)) && ! ((DRY_RUN)); then
    log "queued resource $(qr_id) requested; the TPU $NAME exists once it is ACTIVE (see: status)"
  fi
}

cmd_setup() {
  require name zone
  if [[ -z $GIT_URL ]]; then
    local archive
    archive=$(local_archive)
    pack_code "$archive" || return 1
    run_cmd gcloud compute tpus tpu-vm scp "$archive" "$NAME:$(remote_archive)" "${LOC[@]}" \
      --worker=all || return 1
    ((DRY_RUN)) || rm -f "$archive"
  fi
  tpu_ssh all "$(remote_setup_cmd)"
}

cmd_run() {
  require name zone config gs_workdir
  tpu_ssh all "$(remote_run_cmd)" --ssh-flag="-o ServerAliveInterval=60" \
    --ssh-flag="-o ServerAliveCountMax=5"
}

cmd_logs() {
  require name zone
  tpu_ssh "$WORKER" "tail -n 200 -F $(remote_dir)/logs/trainer.log"
}

cmd_tensorboard() {
  require workdir
  if ((REMOTE_TB)); then
    require name zone
    ((DRY_RUN)) || log "TensorBoard on worker 0, tunnelled to http://localhost:$PORT"
    tpu_ssh 0 "cd $(remote_dir) && .venv/bin/tensorboard --logdir=$(q "$WORKDIR") --host=localhost --port=$PORT" \
      -- -L "$PORT:localhost:$PORT"
  else
    local tb=tensorboard
    [[ -x $ROOT/.venv/bin/tensorboard ]] && tb="$ROOT/.venv/bin/tensorboard"
    run_cmd "$tb" --logdir="$WORKDIR" --port="$PORT"
  fi
}

cmd_status() {
  require name zone
  if ((DRY_RUN)); then
    ((QUEUED)) && qr_state
    node_state
    [[ -z $WORKDIR ]] || is_done || true
    tpu_ssh all "$(remote_status_cmd)"
    return 0
  fi
  if ((QUEUED)); then
    printf 'queued resource %s: %s\n' "$(qr_id)" "$(qr_state)"
  fi
  printf 'TPU %s: %s\n' "$NAME" "$(node_state)"
  if [[ -n $WORKDIR ]]; then
    if is_done; then printf 'done.json: present (finished)\n'; else printf 'done.json: absent\n'; fi
  fi
  tpu_ssh all "$(remote_status_cmd)" || true
}

cmd_stop() {
  require name zone
  tpu_ssh all "$(remote_stop_cmd)"
  if ((STOP_TPU)); then
    run_cmd gcloud compute tpus tpu-vm stop "$NAME" "${LOC[@]}"
  fi
}

cmd_delete() {
  require name zone
  delete_tpu
}

# Waits until the TPU is READY, creating it when missing and re-creating it when preempted.
ensure_ready() {
  local state qstate last=""
  while true; do
    if ((QUEUED)); then
      qstate=$(qr_state)
      state="queued resource $qstate"
      case "$qstate" in
        ACTIVE)
          state=$(node_state)
          case "$state" in
            READY) return 0 ;;
            PREEMPTED | TERMINATED | MISSING)
              log "TPU $NAME is $state: re-creating the queued resource $(qr_id)"
              delete_tpu || true
              create_tpu || log "create failed; retrying in ${POLL}s"
              ;;
          esac
          ;;
        MISSING)
          log "queued resource $(qr_id) does not exist: creating it"
          create_tpu || log "create failed; retrying in ${POLL}s"
          ;;
        SUSPENDED | FAILED)
          log "queued resource $(qr_id) is $qstate: re-creating it"
          delete_tpu || true
          create_tpu || log "create failed; retrying in ${POLL}s"
          ;;
      esac
    else
      state=$(node_state)
      case "$state" in
        READY) return 0 ;;
        MISSING)
          log "TPU $NAME does not exist: creating it"
          create_tpu || log "create failed; retrying in ${POLL}s"
          ;;
        PREEMPTED | TERMINATED)
          log "TPU $NAME is $state: re-creating it"
          delete_tpu || true
          create_tpu || log "create failed; retrying in ${POLL}s"
          ;;
        STOPPED)
          log "TPU $NAME is STOPPED: starting it"
          run_cmd gcloud compute tpus tpu-vm start "$NAME" "${LOC[@]}" ||
            log "start failed; retrying in ${POLL}s"
          ;;
      esac
    fi
    if [[ $state != "$last" ]]; then
      log "waiting for TPU $NAME to be READY (now: $state)"
      last=$state
    fi
    sleep "$POLL"
  done
}

supervise_dry_run() {
  echo "# supervise: repeat until $WORKDIR/done.json exists (checked before each launch and after each ending)"
  is_done || true
  echo "# wait for the TPU to be READY: poll its state every ${POLL}s"
  ((QUEUED)) && qr_state
  node_state
  echo "# when it is missing: create it; when it is preempted or terminated: delete and re-create it"
  delete_tpu
  create_tpu
  echo "# then set up every worker and run the trainer"
  cmd_setup
  cmd_run
}

cmd_supervise() {
  require name zone config gs_workdir
  ((!DETACH)) || die "supervise follows each run to its end: leave out --detach"
  if ((DRY_RUN)); then
    supervise_dry_run
    return 0
  fi
  local restarts=0 rc
  while true; do
    if is_done; then
      log "found $WORKDIR/done.json: the run has finished"
      return 0
    fi
    ensure_ready
    rc=0
    if (cmd_setup); then
      log "launching the trainer (launch $((restarts + 1)); relaunches so far: $restarts of at most $MAX_RESTARTS)"
      (cmd_run) || rc=$?
      if is_done; then
        log "found $WORKDIR/done.json: the run has finished"
        return 0
      fi
      log "the trainer ended (status $rc) before its last step"
    else
      log "setup failed"
    fi
    restarts=$((restarts + 1))
    if ((restarts > MAX_RESTARTS)); then
      log "giving up after $MAX_RESTARTS relaunches (--max-restarts); the TPU is left as it is"
      return 1
    fi
    log "relaunching in ${POLL}s"
    sleep "$POLL"
  done
}

main() {
  parse_args "$@"
  [[ -n $COMMAND ]] || {
    usage >&2
    exit 2
  }
  location
  # Resolved here, where a failure ends the script, not inside a supervise retry.
  case "$COMMAND" in
    create | supervise) RUNTIME=$(runtime_version) || exit 2 ;;
  esac
  case "$COMMAND" in
    setup | supervise) JAX_VERSION=$(jax_version) || exit 2 ;;
  esac
  if ! ((DRY_RUN)); then
    ERR_FILE=$(mktemp)
    trap 'rm -f "$ERR_FILE"' EXIT
  fi
  case "$COMMAND" in
    create) cmd_create ;;
    setup) cmd_setup ;;
    run) cmd_run ;;
    logs) cmd_logs ;;
    tensorboard) cmd_tensorboard ;;
    status) cmd_status ;;
    stop) cmd_stop ;;
    delete) cmd_delete ;;
    supervise) cmd_supervise ;;
    *) die "unknown command '$COMMAND' (one of: create setup run logs tensorboard status stop delete supervise help)" ;;
  esac
}

main "$@"
