#!/usr/bin/env bash
# Refreshes the full locks from clean virtual environments:
#   requirements.lock      every package `pip install -r requirements.txt` brings (the main job)
#   requirements-dev.lock  the same for requirements-dev.txt + requirements-nodeps.txt (CI, tests)
# Run it after changing a pin in requirements*.txt, then commit the locks with that change:
#   bash launch/lock.sh
# Installs then use the locks with --no-deps, so a fresh machine gets exactly these versions.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
PYTHON="${PYTHON:-python3}"

freeze() { # freeze OUT REQUIREMENTS [NODEPS]
  local out=$1 requirements=$2 nodeps=${3:-} venv
  venv="$(mktemp -d)/venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$ROOT/$requirements"
  if [[ -n $nodeps ]]; then
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$ROOT/$nodeps"
  fi
  {
    printf '# Full lock of %s%s (Python %s); refresh: bash launch/lock.sh\n' "$requirements" \
      "${nodeps:+ + $nodeps}" "$("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])')"
    "$venv/bin/pip" freeze --exclude pip --exclude setuptools --exclude wheel
  } >"$ROOT/$out"
  rm -rf "$(dirname "$venv")"
  echo "wrote $out ($(grep -vc '^#' "$ROOT/$out") packages)"
}

freeze requirements.lock requirements.txt
freeze requirements-dev.lock requirements-dev.txt requirements-nodeps.txt
