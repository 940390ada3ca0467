#!/usr/bin/env bash
# Local runner: creates .venv when it is missing, installs the full lock of the requirements
# (requirements.lock, exactly what CI tested; again only when it changed), then runs the trainer
# from the repository root:
#   python -m trainer.method --config=configs/demo.py --workdir=runs/demo [extra args]
# `bash launch/local.sh --help` prints the usage.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
# shellcheck source=launch/common.sh
source "$ROOT/launch/common.sh"

usage() {
  cat <<'EOF'
Usage: bash launch/local.sh [options] [-- extra args for the module]

Options (environment variable defaults in brackets):
  --workdir DIR      training workdir [WORKDIR; runs/demo]; '' leaves --workdir out
  --config FILE      config file [CONFIG; configs/demo.py]; '' leaves --config out
  --module MODULE    module to run as python -m MODULE [MODULE; trainer.method]
  --venv DIR         virtual environment [VENV; .venv]
  --python PYTHON    interpreter that creates the venv, Python >= 3.11 [PYTHON; python3]
  --dev              install requirements-dev.lock (the main job's lock plus the test tools)
  --no-install       do not create the venv or install anything
  --dry-run          print the commands ('+ ' prefix), run nothing
  -h, --help         this text

The command runs in the repository root: relative paths are taken from there.

Examples:
  bash launch/local.sh                                   # the demo run
  bash launch/local.sh --workdir runs/try -- --config.train.num_epochs=10
  bash launch/local.sh --dev --module pytest --config '' --workdir '' -- -q tests
EOF
}

main() {
  local workdir="${WORKDIR-runs/demo}" config="${CONFIG-configs/demo.py}"
  local module="${MODULE:-trainer.method}" venv="${VENV:-.venv}" python="${PYTHON:-python3}"
  local lock=requirements.lock install=1 value flag
  local -a extra=()
  while (($#)); do
    case "$1" in
      -h | --help)
        usage
        exit 0
        ;;
      --)
        shift
        extra+=("$@")
        break
        ;;
      --dev) lock="requirements-dev.lock" ;;
      --no-install) install=0 ;;
      --dry-run) DRY_RUN=1 ;;
      --workdir | --workdir=* | --config | --config=* | --module | --module=* | --venv | --venv=* | \
        --python | --python=*)
        flag=${1%%=*}
        if [[ $1 == *=* ]]; then
          value=${1#*=}
        else
          (($# >= 2)) || die "option $flag needs a value"
          shift
          value=$1
        fi
        case "$flag" in
          --workdir) workdir=$value ;;
          --config) config=$value ;;
          --module) module=$value ;;
          --venv) venv=$value ;;
          --python) python=$value ;;
        esac
        ;;
      *) die "unknown argument '$1' (arguments for the module go after --; see --help)" ;;
    esac
    shift
  done
  [[ -n $module ]] || die "--module is empty"

  cd "$ROOT"
  local py="$venv/bin/python"
  if ((install)); then
    if [[ ! -x $py ]]; then
      if ! ((DRY_RUN)); then
        command -v "$python" >/dev/null 2>&1 ||
          die "'$python' not found: pass --python python3.11 (or newer), or set PYTHON"
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
          die "$("$python" -V 2>&1) is too old: the pinned requirements need Python >= 3.11 (pass --python)"
      fi
      run_cmd "$python" -m venv "$venv"
    fi
    # Installs only when the lock changed since the last successful install. The lock names every
    # package, so pip resolves nothing (--no-deps): a fresh machine gets exactly these versions.
    local stamp="$venv/.requirements.sha256" digest=""
    if ! ((DRY_RUN)); then
      digest=$("$py" -c 'import hashlib, sys
print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$lock")
    fi
    if ((DRY_RUN)) || [[ ! -f $stamp || $(cat "$stamp") != "$digest" ]]; then
      run_cmd "$py" -m pip install -q --disable-pip-version-check --no-deps -r "$lock"
      ((DRY_RUN)) || printf '%s\n' "$digest" >"$stamp"
    fi
  elif [[ ! -x $py ]] && ! ((DRY_RUN)); then
    die "no Python at $py: run once without --no-install, or pass --venv"
  fi

  local -a cmd=("$py" -m "$module")
  [[ -z $config ]] || cmd+=(--config="$config")
  [[ -z $workdir ]] || cmd+=(--workdir="$workdir")
  cmd+=(${extra[@]+"${extra[@]}"}) # (this form also works on bash 3.2 under set -u)
  if ((DRY_RUN)); then
    run_cmd "${cmd[@]}"
  else
    exec "${cmd[@]}"
  fi
}

main "$@"
