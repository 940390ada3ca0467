#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create the TPU (on-demand, spot or through a queued resource),
# set up every worker, run the trainer on all workers and follow its log, TensorBoard, stop and
# delete, and a supervisor that relaunches after preemptions until the run has finished. What
# runs on the workers is launch/worker.sh, copied to each worker's home. Usage: `... help`.
#
# Contract with the trainer (how `supervise` knows that the run has finished): when the trainer
# has completed its last step (final checkpoint committed, final evaluation written), process 0
# writes WORKDIR/done.json as the very last thing, in one write (a GCS object appears whole; on a
# local disk write a temporary file and rename it), e.g. {"step": 97656, "total_steps": 97656,
# "finished_at": "2021-10-27T12:00:00Z"}. Started on a workdir whose checkpoint is at the last
# step, it (re)writes done.json and exits 0 without training. done.json is never written for an
# unfinished run: on SIGTERM (what `stop` sends and a preemption notice brings) the trainer saves
# at the next step boundary and exits 0 WITHOUT it. `supervise` stops as soon as `gcloud storage
# ls WORKDIR/done.json` lists it; any other ending (exit 0 after SIGTERM, a crash, a lost or
# preempted VM) is followed by a relaunch that resumes from the latest checkpoint.
set -euo pipefail

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "tpu_vm.sh: needs bash >= 4.4 (this is $BASH_VERSION; on macOS: brew install bash)" >&2
  exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
# shellcheck source=launch/common.sh
source "$ROOT/launch/common.sh"

# The options are parsed from this text: a line '  --FLAG VALUE  help [TPU_VARIABLE; default]'
# (no VALUE: a switch; VALUE...: a list) sets the variable FLAG in capitals (--git-url: GIT_URL).
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

Options (environment variable and default in brackets; VALUE... is repeatable):
  --name NAME             TPU name (required) [TPU_NAME]
  --zone ZONE             zone, e.g. us-central2-b (required) [TPU_ZONE]
  --project PROJECT       project; unset: the project of gcloud config [TPU_PROJECT]
  --accelerator-type T    accelerator type [TPU_ACCELERATOR_TYPE; v4-32]
  --version V             TPU software version [TPU_VERSION]; unset: from the type (v2/v3/v4
                          tpu-ubuntu2204-base, v5p v2-alpha-tpuv5, v5e
                          (v5litepod) v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e)
  --spot                  spot capacity [TPU_SPOT=1]
  --queued                create through a queued resource [TPU_QUEUED=1]
  --create-arg ARG...     extra flag for the create command
                          (e.g. --create-arg=--network=my-net)
  --workdir gs://B/DIR    training workdir: checkpoints, TensorBoard, done.json [TPU_WORKDIR]
  --config FILE           config file, e.g. configs/cifar10_linf_wrn70_16_100m.py [TPU_CONFIG]
  --env KEY=VALUE...      environment variable for the trainer
  --module MODULE         trainer module, run as python -m MODULE [TPU_MODULE; trainer.main]
  --remote-dir DIR        code directory on the workers [TPU_REMOTE_DIR; robust], under $HOME
                          unless absolute; the log is DIR/logs/trainer.log
  --python VERSION        Python of the workers' venv [TPU_PYTHON; 3.11]
  --git-url URL           setup clones this repository instead of copying the code [TPU_GIT_URL]
  --git-ref REF           commit, tag or branch to check out; unset: local HEAD [TPU_GIT_REF]
  --detach                run: start the trainer and return
  --worker N|all          logs: which worker [0]
  --remote                tensorboard: on worker 0, reached through an SSH tunnel
  --port PORT             tensorboard port [6006]
  --grace SECONDS         stop: wait this long after SIGTERM before SIGKILL [300]
  --tpu                   stop: also stop the TPU VM
  --poll SECONDS          supervise: interval between state checks, relaunches [TPU_POLL; 60]
  --max-restarts N        supervise: give up after N relaunches [TPU_MAX_RESTARTS; 100]
  --dry-run               print the commands ('+ ' prefix), run nothing
  --config.KEY=VALUE...   config override for the trainer
  -h, --help              this text
  -- ARGS                 everything after -- is passed to the trainer unchanged

The trainer runs as
  python -m MODULE --config=FILE --workdir=WORKDIR --config.distributed=True [overrides] [ARGS]

Example:
  export TPU_NAME=robust-v4 TPU_ZONE=us-central2-b TPU_SPOT=1
  bash launch/tpu_vm.sh supervise --workdir=gs://my-bucket/wrn70 \
    --config=configs/cifar10_linf_wrn70_16_100m.py \
    --config.generated.path=gs://my-bucket/gen/manifest.json
EOF
}

declare -A KIND=() # --FLAG: switch, value or list
COMMAND="" CREATE_ARG=() ENV=() OVERRIDES=() TRAINER_ARGS=() SHIPPED=0 STATE=""

log() { printf '[tpu_vm %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

set_option() { # set_option --FLAG VALUE
  local var=${1#--} && var=${var^^} && var=${var//-/_}
  case ${KIND[$1]}:${2,,} in
    list:*) local -n list=$var && list+=("$2") ;;
    switch:1 | switch:true | switch:yes | switch:on) printf -v "$var" 1 ;;
    switch:*) printf -v "$var" 0 ;;
    *) printf -v "$var" '%s' "$2" ;;
  esac
}

# KIND of each option in the usage, and its default: from TPU_VARIABLE, else from the text.
read_options() {
  local line flag default
  while IFS= read -r line; do
    [[ $line =~ ^\ \ (--[a-z-]+)(\ [^ ]+)?\ \ + ]] || continue
    flag=${BASH_REMATCH[1]} && KIND[$flag]=value default=""
    case ${BASH_REMATCH[2]} in '') KIND[$flag]=switch ;; *...) KIND[$flag]=list && continue ;; esac
    if [[ $line =~ \[(TPU_[A-Z_]+)?(=1)?(; )?([^]]*)\] ]]; then
      default=${BASH_REMATCH[4]}
      [[ -z ${BASH_REMATCH[1]} ]] || default=${!BASH_REMATCH[1]:-$default}
    fi
    set_option "$flag" "$default"
  done < <(usage)
}

parse_args() {
  local flag
  while (($#)); do
    case $1 in
      -h | --help | help) usage && exit 0 ;;
      --) shift && TRAINER_ARGS+=("$@") && break ;;
      --config.*) OVERRIDES+=("$1") ;;
      -*)
        flag=${1%%=*}
        case ${KIND[$flag]:-}:$1 in
          :*) die "unknown option '$flag' (see: bash launch/tpu_vm.sh help)" ;;
          switch:*=*) die "option $flag takes no value" ;;
          switch:*) set_option "$flag" 1 ;;
          *=*) set_option "$flag" "${1#*=}" ;;
          *)
            (($# >= 2)) || die "option $flag needs a value"
            [[ $2 != -* || $flag == --create-arg ]] || die "option $flag needs a value (got '$2')"
            set_option "$flag" "$2" && shift
            ;;
        esac
        ;;
      *)
        [[ -z $COMMAND ]] || die "unexpected argument '$1' (trainer arguments go after --)"
        COMMAND=$1
        ;;
    esac
    shift
  done
}

check() { # check VARIABLE PATTERN WHAT: each value of the option matches PATTERN
  local values="${1}[@]" flag=${1,,} v
  for v in "${!values}"; do [[ $v =~ $2 ]] || die "--${flag//_/-} '$v' is not $3"; done
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

need() { [[ -n ${!1} ]] || die "no ${1,,}: pass --${1,,} $2 or set TPU_$1"; } # need VARIABLE HINT
need_tpu() { need NAME NAME && need ZONE 'ZONE (e.g. us-central2-b)'; }

need_run() {
  need_tpu && need CONFIG configs/NAME.py && need WORKDIR gs://BUCKET/DIR
  [[ $WORKDIR == gs://?* ]] ||
    die "workdir '$WORKDIR' is not a gs:// path: all workers write to it, so it must be a bucket"
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

git_ref() { # --git-ref, else the local HEAD, else main
  [[ -z $GIT_REF ]] || { printf '%s' "$GIT_REF" && return; }
  git -C "$ROOT" rev-parse -q --verify HEAD 2>/dev/null || printf 'main'
}

# ---- gcloud --------------------------------------------------------------------------------------
gc() { # gc tpu|qr VERB ARGS...: gcloud on the TPU VM or on its queued resource NAME-qr
  local group=tpu-vm id=$NAME
  [[ $1 == tpu ]] || group=queued-resources id=$NAME-qr
  run_cmd gcloud compute tpus "$group" "$2" "$id" "${LOC[@]}" "${@:3}"
}
tpu_ssh() { gc tpu ssh --worker="$1" --command="$2" "${@:3}"; } # tpu_ssh WORKER COMMAND ARGS...

# The state of the TPU VM or queued resource (tpu|qr), MISSING when it does not exist, UNKNOWN on
# other errors and under --dry-run (where nothing is asked).
state() {
  local out field=state
  [[ $1 == tpu ]] || field=state.state
  if out=$(gc "$1" describe --format="value($field)" 2>"$TMP/err"); then
    printf '%s\n' "${out:-UNKNOWN}"
  elif grep -qiE 'NOT_FOUND|not found' "$TMP/err"; then
    printf 'MISSING\n'
  else
    printf 'UNKNOWN\n'
  fi
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

# Runs `worker.sh SUBCOMMAND ARGS` on every worker, copying it there first unless the setup just
# before did. Keep-alives: a run follows its log for days, a setup installs for minutes.
on_workers() {
  ((SHIPPED)) || ship || return
  # shellcheck disable=SC2016  # $HOME is expanded on the worker
  tpu_ssh all "$(printf 'bash "$HOME"/%s %s' "$(q "$(remote_name worker.sh)")" \
    "$(qjoin "$1" --dir "$REMOTE_DIR" --module "$MODULE" "${@:2}")")" \
    --ssh-flag="-o ServerAliveInterval=60" --ssh-flag="-o ServerAliveCountMax=5"
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

# ---- commands (each returns its failure: supervise runs them where set -e does not act) ---------
cmd_create() {
  local args=(--accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME") kind=tpu
  ((!QUEUED)) || kind=qr args=(--node-id="$NAME" "${args[0]}" --runtime-version="$RUNTIME")
  ((!SPOT)) || args+=(--spot)
  gc "$kind" create "${args[@]}" "${CREATE_ARG[@]}" || return
  ((!QUEUED)) || log "queued resource $NAME-qr requested; the TPU $NAME exists once it is ACTIVE"
}

cmd_delete() { if ((QUEUED)); then gc qr delete --force --quiet; else gc tpu delete --quiet; fi; }

cmd_setup() {
  local args=(--python "$PYTHON" --jax "$JAX_VERSION") files=()
  if [[ -n $GIT_URL ]]; then
    args+=(--git-url "$GIT_URL" --git-ref "$(git_ref)")
  else
    files=("$TMP/$(remote_name code.tar.gz)")
    pack_code "${files[0]}" || return
    args+=(--archive "$(remote_name code.tar.gz)")
  fi
  ship "${files[@]}" && SHIPPED=1 on_workers setup "${args[@]}"
}

cmd_run() {
  local args=() kv
  ((!DETACH)) || args+=(--detach)
  for kv in "${ENV[@]}"; do args+=(--env "$kv"); done
  on_workers run "${args[@]}" -- --config="$CONFIG" --workdir="$WORKDIR" \
    --config.distributed=True "${OVERRIDES[@]}" "${TRAINER_ARGS[@]}"
}

cmd_logs() { tpu_ssh "$WORKER" "tail -n 200 -F $(remote_dir)/logs/trainer.log"; }

cmd_tensorboard() {
  if ((REMOTE)); then
    log "TensorBoard on worker 0, tunnelled to http://localhost:$PORT"
    tpu_ssh 0 "cd $(remote_dir) && .venv/bin/tensorboard --logdir=$(q "$WORKDIR") \
--host=localhost --port=$PORT" -- -L "$PORT:localhost:$PORT"
  else
    local tb=tensorboard
    [[ ! -x $ROOT/.venv/bin/tensorboard ]] || tb="$ROOT/.venv/bin/tensorboard"
    run_cmd "$tb" --logdir="$WORKDIR" --port="$PORT"
  fi
}

cmd_status() {
  ((!QUEUED)) || printf 'queued resource %s: %s\n' "$NAME-qr" "$(state qr)"
  printf 'TPU %s: %s\n' "$NAME" "$(state tpu)"
  if [[ -n $WORKDIR ]]; then
    if is_done; then printf 'done.json: present (finished)\n'; else printf 'done.json: absent\n'; fi
  fi
  on_workers status || true
}

cmd_stop() {
  on_workers stop --grace "$GRACE"
  ((!TPU)) || gc tpu stop
}

# One look at the TPU: true when it is READY; else creates, re-creates or starts it as its state
# asks, and leaves the state in STATE.
tpu_ready() {
  if ((QUEUED)); then
    local qr
    qr=$(state qr) && STATE="queued resource $qr"
    case $qr in
      MISSING) fix create "queued resource $NAME-qr does not exist" ;;
      SUSPENDED | FAILED) fix recreate "queued resource $NAME-qr is $qr" ;;
    esac
    [[ $qr == ACTIVE ]] || return 1
  fi
  STATE=$(state tpu)
  case $QUEUED:$STATE in
    *:READY) return 0 ;;
    0:MISSING) fix create "TPU $NAME does not exist" ;;
    *:PREEMPTED | *:TERMINATED | 1:MISSING) fix recreate "TPU $NAME is $STATE" ;;
    0:STOPPED) fix start "TPU $NAME is STOPPED" ;;
  esac
  return 1
}

# fix create|recreate|start WHY: logs, then acts on the TPU (with --queued: on its queued
# resource); a failure is only logged, as the caller looks again after --poll seconds.
fix() {
  local what="TPU $NAME"
  ((!QUEUED)) || what="queued resource $NAME-qr"
  log "$2: ${1%e}ing $what"
  case $1 in
    create) cmd_create ;;
    recreate) cmd_delete || true && cmd_create ;;
    start) gc tpu start ;;
  esac || log "$1 failed; retrying in ${POLL}s"
}

# A dry run cannot follow the TPU's state, so it lists what one pass of the loop runs.
supervise_dry_run() {
  echo "# supervise, until $WORKDIR/done.json exists: look for it; wait for the TPU to be READY"
  echo "# (look every ${POLL}s; create it when missing, delete and re-create it when preempted or"
  echo "# terminated); set up every worker; run the trainer"
  is_done || true
  ((!QUEUED)) || state qr >/dev/null
  state tpu >/dev/null
  cmd_delete && cmd_create && cmd_setup && SHIPPED=1 cmd_run
}

cmd_supervise() {
  if ((DRY_RUN)); then
    supervise_dry_run
    return
  fi
  local restarts=0 rc last=""
  until is_done; do
    until tpu_ready; do
      [[ $STATE == "$last" ]] || log "waiting for TPU $NAME to be READY (now: $STATE)"
      last=$STATE && sleep "$POLL"
    done
    rc=0
    if (cmd_setup); then
      log "launch $((restarts + 1)) of the trainer (at most $MAX_RESTARTS relaunches)"
      (SHIPPED=1 cmd_run) || rc=$?
      is_done && break
      log "the trainer ended (status $rc) before its last step"
    else
      log "setup failed"
    fi
    if ((++restarts > MAX_RESTARTS)); then
      log "giving up after $MAX_RESTARTS relaunches (--max-restarts); the TPU is left as it is"
      return 1
    fi
    log "relaunching in ${POLL}s" && sleep "$POLL"
  done
  log "found $WORKDIR/done.json: the run has finished"
}

main() {
  exec 3>&1 # run_cmd prints to it under --dry-run, also from inside $(...)
  DRY_RUN_FD=3
  read_options
  parse_args "$@"
  validate
  [[ -n $COMMAND ]] || { usage >&2 && exit 2; }
  # What each command needs, resolved here, where a failure ends the script (not a supervise retry).
  case $COMMAND in
    create) need_tpu && RUNTIME=$(runtime_version) ;;
    setup) need_tpu && JAX_VERSION=$(jax_version) ;;
    run) need_run ;;
    supervise)
      need_run
      ((!DETACH)) || die "supervise follows each run to its end: leave out --detach"
      RUNTIME=$(runtime_version)
      JAX_VERSION=$(jax_version)
      ;;
    logs | status | stop | delete) need_tpu ;;
    tensorboard)
      need WORKDIR gs://BUCKET/DIR
      ((!REMOTE)) || need_tpu
      ;;
    *) die "unknown command '$COMMAND' (one of: create setup run logs tensorboard status stop" \
      "delete supervise help)" ;;
  esac
  LOC=(--zone="$ZONE")
  [[ -z $PROJECT ]] || LOC+=(--project="$PROJECT")
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  "cmd_$COMMAND"
}

main "$@"
