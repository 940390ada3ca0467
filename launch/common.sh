# Helpers of the launch scripts, which source this file. Plain bash 3.2 (macOS) like local.sh.
# shellcheck shell=bash

DRY_RUN=0 # --dry-run: run_cmd prints its command instead of running it
# Where run_cmd prints under --dry-run (stdout). A script that captures the output of run_cmd
# points it at a copy of stdout, so that the printed command is shown, not captured.
DRY_RUN_FD=1

die() {
  printf '%s: error: %s\n' "${0##*/}" "$*" >&2
  exit 2
}

# Quotes one word for a POSIX shell: as is when it is plainly safe, else in single quotes.
q() {
  local s=$1 sq="'\\''"
  if [[ $s =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/$sq}"
  fi
}

# Quotes every argument and joins them with spaces.
qjoin() {
  local out="" a
  for a in "$@"; do
    out+="${out:+ }$(q "$a")"
  done
  printf '%s' "$out"
}

# Runs a command, or prints it (one line, '+ ' prefix) under --dry-run.
run_cmd() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(qjoin "$@")" >&"$DRY_RUN_FD"
    return 0
  fi
  "$@"
}
