#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create the TPU (on-demand, spot or through a queued resource),
# set up every worker, run the trainer on all workers, follow its logs, start TensorBoard,
# stop/delete, and a supervisor that relaunches after preemptions until the run has finished.
# `bash launch/tpu_vm.sh help` prints the usage. What runs on the workers is launch/worker.sh,
# which this script copies to each worker's home and runs there.
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
#   `supervise` stops as soon as `gcloud storage ls WORKDIR/done.json` lists it. Any other
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

usage() {
  cat <<'EOF'
Usage: bash launch/tpu_vm.sh COMMAND [options] [-- trainer args]

Commands:
  create      create the TPU: on-demand, --spot, and/or --queued (a queued resource NAME-qr)
  setup       on every worker: copy the code (or git clone it with --git-url), create .venv,
              pip install -r requirements.txt and jax[tpu] at the version pinned there
  run         run the trainer on all workers (--worker=all) and stream its log until it ends;
              --detach: start it and return. A trainer already running is attached to
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
                          [TPU_REMOTE_DIR; robust]; logs in DIR/logs/trainer.log
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
  --poll SECONDS          supervise: interval between state checks and relaunches [TPU_POLL; 60]
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

# ---- options: one row each --------------------------------------------------------------------
# option, variable, kind (value; switch: takes no value, sets 1; list: repeatable), environment
# variable giving the default, default, and the pattern a value must match with what it means.
# A '-' is an empty field.
readonly OPTIONS='
--name             NAME             value  TPU_NAME              -      -
--zone             ZONE             value  TPU_ZONE              -      -
--project          PROJECT          value  TPU_PROJECT           -      -
--accelerator-type ACCELERATOR_TYPE value  TPU_ACCELERATOR_TYPE  v4-32  -
--version          VERSION          value  TPU_VERSION           -      -
--spot             SPOT             switch TPU_SPOT              0      -
--queued           QUEUED           switch TPU_QUEUED            0      -
--create-arg       CREATE_ARGS      list   -                     -      -
--workdir          WORKDIR          value  TPU_WORKDIR           -      -
--config           CONFIG           value  TPU_CONFIG            -      -
--env              TRAINER_ENV      list   -                     -      ^[A-Za-z_][A-Za-z0-9_]*= KEY=VALUE
--module           MODULE           value  TPU_MODULE   trainer.main    ^[A-Za-z_][A-Za-z0-9_.]*$ a Python module name
--remote-dir       REMOTE_DIR       value  TPU_REMOTE_DIR        robust -
--python           PYTHON_VERSION   value  TPU_PYTHON            3.11   -
--git-url          GIT_URL          value  TPU_GIT_URL           -      -
--git-ref          GIT_REF          value  TPU_GIT_REF           -      -
--detach           DETACH           switch -                     0      -
--worker           WORKER           value  -                     0      ^([0-9]+|all)$ a worker index or '"'all'"'
--remote           REMOTE_TB        switch -                     0      -
--port             PORT             value  -                     6006   ^[0-9]+$ a port number
--grace            GRACE            value  -                     300    ^[0-9]+$ a whole number of seconds
--tpu              STOP_TPU         switch -                     0      -
--poll             POLL             value  TPU_POLL              60     ^[0-9]+([.][0-9]+)?$ a number of seconds
--max-restarts     MAX_RESTARTS     value  TPU_MAX_RESTARTS      100    ^[0-9]+$ a whole number
--dry-run          DRY_RUN          switch -                     0      -
'
COMMAND=""
CREATE_ARGS=()
TRAINER_ENV=()
OVERRIDES=()    # --config.KEY=VALUE
TRAINER_ARGS=() # after --
RUNTIME=""      # TPU software version, resolved in main
JAX_VERSION=""  # from requirements.txt, resolved in main
TMP=""          # this run's temporary directory
SHIPPED=0       # 1: the setup just before copied the worker script
STATE=""        # the last state tpu_ready saw

log() { printf '[tpu_vm %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

truthy() { [[ ${1,,} =~ ^(1|true|yes|on)$ ]]; }

set_option() { # set_option VARIABLE KIND VALUE
  case $2 in
    list) local -n list=$1 && list+=("$3") ;;
    switch) if truthy "$3"; then printf -v "$1" 1; else printf -v "$1" 0; fi ;;
    *) printf -v "$1" '%s' "$3" ;;
  esac
}

# Each variable of the table from its environment variable, else its default.
set_defaults() {
  local flag var kind env default rest
  while read -r flag var kind env default rest; do
    [[ -n $flag && $kind != list ]] || continue
    [[ $default != - ]] || default=""
    [[ $env == - ]] || default=${!env:-$default}
    set_option "$var" "$kind" "$default"
  done <<<"$OPTIONS"
}

parse_args() {
  local flag spec var kind value
  while (($#)); do
    case $1 in
      -h | --help | help) usage && exit 0 ;;
      --) shift && TRAINER_ARGS+=("$@") && break ;;
      --config.*) OVERRIDES+=("$1") ;;
      -*)
        flag=${1%%=*}
        spec=$(grep -E -m1 -- "^$flag " <<<"$OPTIONS") ||
          die "unknown option '$flag' (see: bash launch/tpu_vm.sh help)"
        read -r _ var kind _ <<<"$spec"
        if [[ $kind == switch ]]; then
          [[ $1 != *=* ]] || die "option $flag takes no value"
          value=1
        elif [[ $1 == *=* ]]; then
          value=${1#*=}
        else
          (($# >= 2)) || die "option $flag needs a value"
          [[ $2 != -* || $flag == --create-arg ]] || die "option $flag needs a value (got '$2')"
          shift
          value=$1
        fi
        set_option "$var" "$kind" "$value"
        ;;
      *)
        [[ -z $COMMAND ]] || die "unexpected argument '$1' (trainer arguments go after --)"
        COMMAND=$1
        ;;
    esac
    shift
  done
}

# Every value against the pattern of its row.
validate() {
  local flag var kind env default pattern what v values
  while read -r flag var kind env default pattern what; do
    [[ -n $flag && $pattern != - ]] || continue
    values="${var}[@]"
    for v in "${!values}"; do
      [[ $v =~ $pattern ]] || die "$flag '$v' is not $what"
    done
  done <<<"$OPTIONS"
}

require() {
  local what no_workdir="no workdir: pass --workdir gs://BUCKET/DIR or set TPU_WORKDIR"
  for what in "$@"; do
    case $what in
      name) [[ -n $NAME ]] || die "no TPU name: pass --name NAME or set TPU_NAME" ;;
      zone) [[ -n $ZONE ]] || die "no zone: pass --zone ZONE (e.g. us-central2-b) or set TPU_ZONE" ;;
      config) [[ -n $CONFIG ]] || die "no config: pass --config configs/NAME.py or set TPU_CONFIG" ;;
      workdir) [[ -n $WORKDIR ]] || die "$no_workdir" ;;
      gs_workdir)
        [[ -n $WORKDIR ]] || die "$no_workdir"
        [[ $WORKDIR == gs://?* ]] ||
          die "workdir '$WORKDIR' is not a gs:// path: all workers write to it, so it must be a bucket"
        ;;
    esac
  done
}

# TPU software version: the flag, else the recommended one for the accelerator's generation.
runtime_version() {
  case "${VERSION:+set}:$ACCELERATOR_TYPE" in
    set:*) printf '%s' "$VERSION" ;;
    :v2-* | :v3-* | :v4-*) printf 'tpu-ubuntu2204-base' ;;
    :v5p-*) printf 'v2-alpha-tpuv5' ;;
    :v5litepod-* | :v5e-*) printf 'v2-alpha-tpuv5-lite' ;;
    :v6e-*) printf 'v2-alpha-tpuv6e' ;;
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

git_ref() {
  if [[ -n $GIT_REF ]]; then
    printf '%s' "$GIT_REF"
  elif ! git -C "$ROOT" rev-parse -q --verify HEAD 2>/dev/null; then
    printf 'main'
  fi
}

# ---- gcloud pieces --------------------------------------------------------------------------------
qr_id() { printf '%s-qr' "$NAME"; }

tpu_ssh() { # tpu_ssh WORKER COMMAND [extra gcloud args...]
  run_cmd gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker="$1" --command="$2" "${@:3}"
}

create_tpu() {
  local cmd=(gcloud compute tpus tpu-vm create "$NAME" "${LOC[@]}"
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME")
  if ((QUEUED)); then
    cmd=(gcloud compute tpus queued-resources create "$(qr_id)" --node-id="$NAME" "${LOC[@]}"
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME")
  fi
  ((!SPOT)) || cmd+=(--spot)
  run_cmd "${cmd[@]}" "${CREATE_ARGS[@]}"
}

delete_tpu() {
  if ((QUEUED)); then
    run_cmd gcloud compute tpus queued-resources delete "$(qr_id)" "${LOC[@]}" --force --quiet
  else
    run_cmd gcloud compute tpus tpu-vm delete "$NAME" "${LOC[@]}" --quiet
  fi
}

# Prints the state from a describe command, MISSING when it does not exist, UNKNOWN on errors
# (and under --dry-run, where nothing is asked).
describe_state() {
  local out rc=0
  out=$(run_cmd "$@" 2>"$TMP/err") || rc=$?
  if ((rc == 0)) && [[ -n $out ]]; then
    printf '%s\n' "$out"
  elif ((rc != 0)) && grep -qiE 'NOT_FOUND|not found' "$TMP/err"; then
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

# True when done.json is listed (never under --dry-run, where nothing is listed).
is_done() { [[ -n $(run_cmd gcloud storage ls "$WORKDIR/done.json" 2>/dev/null) ]]; }

# ---- the workers ---------------------------------------------------------------------------------
# DIR on a worker as its shell reads it: under $HOME unless absolute.
remote_dir() {
  # shellcheck disable=SC2016  # $HOME is expanded on the worker
  [[ $REMOTE_DIR == /* ]] && q "$REMOTE_DIR" || printf '"$HOME"/%s' "$(q "$REMOTE_DIR")"
}

remote_name() { printf '%s-%s' "$(basename "$REMOTE_DIR")" "$1"; } # files copied to $HOME

# Copies launch/worker.sh and FILES to the home directory of every worker.
ship() {
  run_cmd cp "$ROOT/launch/worker.sh" "$TMP/$(remote_name worker.sh)"
  run_cmd gcloud compute tpus tpu-vm scp "$TMP/$(remote_name worker.sh)" "$@" "$NAME:" \
    "${LOC[@]}" --worker=all
}

# The command that runs `worker.sh SUBCOMMAND ARGS` on a worker.
worker_cmd() {
  # shellcheck disable=SC2016  # $HOME is expanded on the worker
  printf 'bash "$HOME"/%s %s' "$(q "$(remote_name worker.sh)")" \
    "$(qjoin "$1" --dir "$REMOTE_DIR" --module "$MODULE" "${@:2}")"
}

# Packs the tracked and untracked-but-not-ignored files of the checkout into ARCHIVE.
pack_code() {
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # shellcheck disable=SC2016  # expanded by the inner shell
    run_cmd bash -c 'cd "$1" && git ls-files -z -co --exclude-standard | tar --null -T - -czf "$2"' \
      pack_code "$ROOT" "$1"
  else
    run_cmd tar -czf "$1" -C "$ROOT" --exclude=.venv --exclude=.git --exclude=runs \
      --exclude=workdirs --exclude=__pycache__ .
  fi
}

# ---- subcommands ---------------------------------------------------------------------------------
cmd_create() {
  require name zone
  create_tpu
  ((!QUEUED)) || log "queued resource $(qr_id) requested; the TPU $NAME exists once it is ACTIVE"
}

cmd_setup() {
  require name zone
  local args=(--python "$PYTHON_VERSION" --jax "$JAX_VERSION") files=()
  if [[ -n $GIT_URL ]]; then
    args+=(--git-url "$GIT_URL" --git-ref "$(git_ref)")
  else
    files=("$TMP/$(remote_name code.tar.gz)")
    pack_code "${files[0]}" || return 1
    args+=(--archive "$(remote_name code.tar.gz)")
  fi
  ship "${files[@]}" || return 1
  tpu_ssh all "$(worker_cmd setup "${args[@]}")"
}

cmd_run() {
  require name zone config gs_workdir
  local args=() kv
  ((!DETACH)) || args+=(--detach)
  for kv in "${TRAINER_ENV[@]}"; do args+=(--env "$kv"); done
  ((SHIPPED)) || ship || return 1
  tpu_ssh all "$(worker_cmd run "${args[@]}" -- --config="$CONFIG" --workdir="$WORKDIR" \
    --config.distributed=True "${OVERRIDES[@]}" "${TRAINER_ARGS[@]}")" \
    --ssh-flag="-o ServerAliveInterval=60" --ssh-flag="-o ServerAliveCountMax=5"
}

cmd_logs() {
  require name zone
  tpu_ssh "$WORKER" "tail -n 200 -F $(remote_dir)/logs/trainer.log"
}

cmd_tensorboard() {
  require workdir
  if ((REMOTE_TB)); then
    require name zone
    log "TensorBoard on worker 0, tunnelled to http://localhost:$PORT"
    tpu_ssh 0 "cd $(remote_dir) && .venv/bin/tensorboard --logdir=$(q "$WORKDIR") --host=localhost --port=$PORT" \
      -- -L "$PORT:localhost:$PORT"
  else
    local tb=tensorboard
    [[ ! -x $ROOT/.venv/bin/tensorboard ]] || tb="$ROOT/.venv/bin/tensorboard"
    run_cmd "$tb" --logdir="$WORKDIR" --port="$PORT"
  fi
}

cmd_status() {
  require name zone
  ((!QUEUED)) || printf 'queued resource %s: %s\n' "$(qr_id)" "$(qr_state)"
  printf 'TPU %s: %s\n' "$NAME" "$(node_state)"
  if [[ -n $WORKDIR ]]; then
    if is_done; then printf 'done.json: present (finished)\n'; else printf 'done.json: absent\n'; fi
  fi
  { ship && tpu_ssh all "$(worker_cmd status)"; } || true
}

cmd_stop() {
  require name zone
  ship
  tpu_ssh all "$(worker_cmd stop --grace "$GRACE")"
  ((!STOP_TPU)) || run_cmd gcloud compute tpus tpu-vm stop "$NAME" "${LOC[@]}"
}

cmd_delete() {
  require name zone
  delete_tpu
}

# One look at the TPU: true when it is READY; else creates, re-creates or starts it as its state
# asks, and leaves the state in STATE.
tpu_ready() {
  if ((QUEUED)); then
    local qstate
    qstate=$(qr_state)
    STATE="queued resource $qstate"
    case $qstate in
      ACTIVE) ;;
      MISSING) fix create "queued resource $(qr_id) does not exist: creating it" && return 1 ;;
      SUSPENDED | FAILED) fix recreate "queued resource $(qr_id) is $qstate: re-creating it" && return 1 ;;
      *) return 1 ;;
    esac
  fi
  STATE=$(node_state)
  case $STATE in
    READY) return 0 ;;
    PREEMPTED | TERMINATED | MISSING)
      if ((QUEUED)); then
        fix recreate "TPU $NAME is $STATE: re-creating the queued resource $(qr_id)"
      elif [[ $STATE == MISSING ]]; then
        fix create "TPU $NAME does not exist: creating it"
      else
        fix recreate "TPU $NAME is $STATE: re-creating it"
      fi
      ;;
    STOPPED) ((QUEUED)) || fix start "TPU $NAME is STOPPED: starting it" ;;
  esac
  return 1
}

# fix ACTION MESSAGE: logs MESSAGE, then creates, re-creates or starts the TPU; a failure is only
# logged (the caller looks again after --poll seconds).
fix() {
  log "$2"
  case $1 in
    create) create_tpu ;;
    recreate) delete_tpu || true && create_tpu ;;
    start) run_cmd gcloud compute tpus tpu-vm start "$NAME" "${LOC[@]}" ;;
  esac || log "$1 failed; retrying in ${POLL}s"
}

# Waits until the TPU is READY, creating it when missing and re-creating it when preempted.
ensure_ready() {
  local last=""
  until tpu_ready; do
    [[ $STATE == "$last" ]] || log "waiting for TPU $NAME to be READY (now: $STATE)"
    last=$STATE
    sleep "$POLL"
  done
}

# A dry run cannot follow the TPU's state, so it lists what one pass of the loop runs.
supervise_dry_run() {
  echo "# supervise: repeat until $WORKDIR/done.json exists (checked before each launch and after each ending)"
  is_done || true
  echo "# wait for the TPU to be READY: poll its state every ${POLL}s"
  ((!QUEUED)) || qr_state >/dev/null
  node_state >/dev/null
  echo "# when it is missing: create it; when it is preempted or terminated: delete and re-create it"
  delete_tpu
  create_tpu
  echo "# then set up every worker and run the trainer"
  cmd_setup
  SHIPPED=1 cmd_run
}

cmd_supervise() {
  require name zone config gs_workdir
  ((!DETACH)) || die "supervise follows each run to its end: leave out --detach"
  if ((DRY_RUN)); then
    supervise_dry_run
    return 0
  fi
  local restarts=0 rc
  until is_done; do
    ensure_ready
    rc=0
    if (cmd_setup); then
      log "launching the trainer (launch $((restarts + 1)); relaunches so far: $restarts of at most $MAX_RESTARTS)"
      (SHIPPED=1 cmd_run) || rc=$?
      is_done && break
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
  log "found $WORKDIR/done.json: the run has finished"
}

main() {
  exec 3>&1 # run_cmd prints to it under --dry-run, also from inside $(...)
  DRY_RUN_FD=3
  set_defaults
  parse_args "$@"
  validate
  [[ -n $COMMAND ]] || { usage >&2 && exit 2; }
  LOC=(--zone="$ZONE")
  [[ -z $PROJECT ]] || LOC+=(--project="$PROJECT")
  # Resolved here, where a failure ends the script, not inside a supervise retry.
  case $COMMAND in
    create | supervise) RUNTIME=$(runtime_version) || exit 2 ;;
  esac
  case $COMMAND in
    setup | supervise) JAX_VERSION=$(jax_version) || exit 2 ;;
  esac
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  case $COMMAND in
    create | setup | run | logs | tensorboard | status | stop | delete | supervise) "cmd_$COMMAND" ;;
    *) die "unknown command '$COMMAND' (one of: create setup run logs tensorboard status stop delete supervise help)" ;;
  esac
}

main "$@"
