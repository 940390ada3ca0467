"""The full locks agree with the readable pins, so a fresh machine installs what CI tested."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pins(name):
  """{package: version} of a requirements file, following `-r` includes."""
  out = {}
  for line in open(os.path.join(ROOT, name)):
    line = line.split('#', 1)[0].strip()
    if line.startswith('-r '):
      out.update(pins(line[3:].strip()))
    elif line:
      package, version = re.fullmatch(r'([A-Za-z0-9_.\-]+)==(\S+)', line).groups()
      out[re.sub(r'[-_.]+', '-', package).lower()] = version
  return out


def _same_release(pinned, locked):
  return locked == pinned or locked.split('+')[0] == pinned  # torch's '+cpu' build tag


@pytest.mark.parametrize('readable, lock', [
    (['requirements.txt'], 'requirements.lock'),
    (['requirements-dev.txt', 'requirements-nodeps.txt'], 'requirements-dev.lock')])
def test_every_pin_is_locked_at_its_version(readable, lock):
  locked = pins(lock)
  for name in readable:
    wrong = {p: (v, locked.get(p)) for p, v in pins(name).items()
             if not _same_release(v, locked.get(p, ''))}
    assert not wrong, f'{name} and {lock} disagree (pin, lock): {wrong}; run bash launch/lock.sh'


def test_the_dev_lock_holds_the_main_lock():
  main, dev = pins('requirements.lock'), pins('requirements-dev.lock')
  assert {p: v for p, v in main.items() if dev.get(p) != v} == {}


def test_installs_use_the_locks():
  assert '--no-deps -r requirements-dev.lock' in open(os.path.join(ROOT, '.ci', 'run')).read()
  assert 'lock=requirements.lock' in open(os.path.join(ROOT, 'launch', 'local.sh')).read()
