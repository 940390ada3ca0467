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
  cat <<'EOF2'
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

Options (environment variable and default in brackets; VALUE... is repeatable):
EOF2
  options_help
  cat <<'EOF2'
  --config.KEY=VALUE...   config override for the trainer
  -h, --help              this text
  -- ARGS                 everything after -- is passed to the trainer unchanged

The trainer runs as
  python -m MODULE --config=FILE --workdir=WORKDIR --config.distributed=True [overrides] [ARGS]

Example:
  export TPU_NAME=robust-v4 TPU_ZONE=us-central2-b TPU_SPOT=1
  bash launch/tpu_vm.sh supervise --workdir=gs://my-bucket/wrn70 \
    --config=configs/cifar10_linf_wrn70_16_100m.py --config.generated.path=gs://my-bucket/gen/manifest.json
EOF2
}

# ---- options: one table --------------------------------------------------------------------------
# A row: the option, its value (- for a switch, which takes none and sets 1; VALUE... for a
# repeatable one, which makes a list), 'env' where TPU_<VARIABLE> gives the default, the default
# (- for none) and the help, continued on indented lines. The variable is the option in capitals
# (--git-url sets GIT_URL).
# shellcheck disable=SC2016  # $HOME in a help text
readonly OPTIONS='
--name             NAME          env -       TPU name (required)
--zone             ZONE          env -       zone, e.g. us-central2-b (required)
--project          PROJECT       env -       project; unset: the project of gcloud config
--accelerator-type T             env v4-32   accelerator type
--version          V             env -       TPU software version; unset: from the type (v2/v3/v4
                                             tpu-ubuntu2204-base, v5p v2-alpha-tpuv5, v5e
                                             (v5litepod) v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e)
--spot             -             env -       spot capacity
--queued           -             env -       create through a queued resource
--create-arg       ARG...        -   -       extra flag for the create command
                                             (e.g. --create-arg=--network=my-net)
--workdir          gs://B/DIR    env -       training workdir: checkpoints, TensorBoard, done.json
--config           FILE          env -       config file, e.g. configs/cifar10_linf_wrn70_16_100m.py
--env              KEY=VALUE...  -   -       environment variable for the trainer
--module           MODULE        env trainer.main  trainer module, run as python -m MODULE
--remote-dir       DIR           env robust  code directory on the workers, under $HOME unless
                                             absolute; the log is DIR/logs/trainer.log
--python           VERSION       env 3.11    Python of the workers'"'"' venv
--git-url          URL           env -       setup clones this repository instead of copying
                                             the local files
--git-ref          REF           env -       commit, tag or branch to check out; unset: local HEAD
--detach           -             -   -       run: start the trainer and return
--worker           N|all         -   0       logs: which worker
--remote           -             -   -       tensorboard: on worker 0, reached through an SSH tunnel
--port             PORT          -   6006    tensorboard port
--grace            SECONDS       -   300     stop: wait this long after SIGTERM before SIGKILL
--tpu              -             -   -       stop: also stop the TPU VM
--poll             SECONDS       env 60      supervise: interval between state checks, relaunches
--max-restarts     N             env 100     supervise: give up after N relaunches
--dry-run          -             -   -       print the commands ('"'"'+ '"'"' prefix), run nothing
'
COMMAND=""
CREATE_ARG=()
ENV=()
OVERRIDES=()    # --config.KEY=VALUE
TRAINER_ARGS=() # after --
RUNTIME=""      # TPU software version, resolved in main
JAX_VERSION=""  # from requirements.txt, resolved in main
TMP=""          # this run's temporary directory
SHIPPED=0       # 1: the setup just before copied the worker script
STATE=""        # the last state tpu_ready saw

log() { printf '[tpu_vm %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

truthy() { [[ ${1,,} =~ ^(1|true|yes|on)$ ]]; }

variable() { local v=${1#--} && v=${v^^} && printf '%s' "${v//-/_}"; } # --git-url: GIT_URL

# Usage lines from the table; each row ends with its environment variable and default.
options_help() {
  local line flag value env default help var text="" note=""
  while IFS= read -r line; do
    if [[ -z $line || $line == ' '* ]]; then
      read -r help <<<"$line"
      [[ -z $help ]] || text+=$'\n'"$(printf '%26s' '')$help"
      continue
    fi
    [[ -z $text ]] || printf '%s%s\n' "$text" "$note"
    read -r flag value env default help <<<"$line"
    var=TPU_$(variable "$flag")
    [[ $value != - ]] || value="" var+="=1"
    [[ $env == env ]] || var=""
    [[ $default == - ]] || var="${var:+$var; }$default"
    note=${var:+ [$var]}
    text=$(printf '  %-22s  %s' "$flag${value:+ $value}" "$help")
  done <<<"$OPTIONS"
  printf '%s%s\n' "$text" "$note"
}

# The row of an option: "VARIABLE KIND" (KIND: value, switch or list), or fails.
option_kind() {
  local flag value rest
  read -r flag value rest < <(grep -E -m1 -- "^$1 " <<<"$OPTIONS") || return 1
  case $value in
    -) printf '%s switch' "$(variable "$flag")" ;;
    *...) printf '%s list' "$(variable "$flag")" ;;
    *) printf '%s value' "$(variable "$flag")" ;;
  esac
}

set_option() { # set_option VARIABLE KIND VALUE
  case $2 in
    list) local -n list=$1 && list+=("$3") ;;
    switch) if truthy "$3"; then printf -v "$1" 1; else printf -v "$1" 0; fi ;;
    *) printf -v "$1" '%s' "$3" ;;
  esac
}

# Each option of the table from TPU_<VARIABLE> where the table says so, else its default.
set_defaults() {
  local flag value env default rest var kind from
  while read -r flag value env default rest; do
    [[ $flag == --* ]] || continue
    read -r var kind <<<"$(option_kind "$flag")"
    [[ $kind != list ]] || continue
    [[ $default != - ]] || default=""
    from=TPU_$var
    [[ $env != env ]] || default=${!from:-$default}
    set_option "$var" "$kind" "$default"
  done <<<"$OPTIONS"
}

parse_args() {
  local flag var kind value
  while (($#)); do
    case $1 in
      -h | --help | help) usage && exit 0 ;;
      --) shift && TRAINER_ARGS+=("$@") && break ;;
      --config.*) OVERRIDES+=("$1") ;;
      -*)
        flag=${1%%=*}
        read -r var kind <<<"$(option_kind "$flag")"
        [[ -n $var ]] || die "unknown option '$flag' (see: bash launch/tpu_vm.sh help)"
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

# check VARIABLE PATTERN WHAT: each value of the option matches PATTERN.
check() {
  local values="${1}[@]" flag=${1,,} v
  for v in "${!values}"; do
    [[ $v =~ $2 ]] || die "--${flag//_/-} '$v' is not $3"
  done
}

validate() {
  check POLL '^[0-9]+([.][0-9]+)?$' 'a number of seconds'
  check MAX_RESTARTS '^[0-9]+$' 'a whole number'
  check GRACE '^[0-9]+$' 'a whole number of seconds'
  check PORT '^[0-9]+$' 'a port number'
  check WORKER '^([0-9]+|all)$' "a worker index or 'all'"
  check MODULE '^[A-Za-z_][A-Za-z0-9_.]*$' 'a Python module name'
  check ENV '^[A-Za-z_][A-Za-z0-9_]*=' 'KEY=VALUE'
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

# ---- gcloud pieces -------------------------------------------------------------------------------
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
  run_cmd "${cmd[@]}" "${CREATE_ARG[@]}"
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
    run_cmd bash -c \
      'cd "$1" && git ls-files -z -co --exclude-standard | tar --null -T - -czf "$2"' pack_code \
      "$ROOT" "$1"
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
  local args=(--python "$PYTHON" --jax "$JAX_VERSION") files=()
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
  for kv in "${ENV[@]}"; do args+=(--env "$kv"); done
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
  if ((REMOTE)); then
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
  ((!TPU)) || run_cmd gcloud compute tpus tpu-vm stop "$NAME" "${LOC[@]}"
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
      SUSPENDED | FAILED)
        fix recreate "queued resource $(qr_id) is $qstate: re-creating it" && return 1
        ;;
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
    create | setup | run | logs | tensorboard | status | stop | delete | supervise)
      "cmd_$COMMAND"
      ;;
    *) die "unknown command '$COMMAND' (one of: create setup run logs tensorboard status stop delete supervise help)" ;;
  esac
}

main "$@"
