"""One house style across the tree: ruff with the project's ruff.toml (100 columns, pyflakes)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_finds_nothing():
  proc = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--output-format', 'concise', '.'],
                        cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
