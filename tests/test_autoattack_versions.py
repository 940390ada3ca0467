"""AutoAttack's versions and names as fra31/auto-attack builds them, and its norm spellings.

The table below is transcribed from fra31/auto-attack, `autoattack/autoattack.py` at commit
a39220048b3c9f2cca9a4d3a54604793c68eca7e: the attack objects built in `AutoAttack.__init__`
(lines 33-48: APGD n_iter=100, rho=.75, eot_iter=1; FAB n_iter=100; Square p_init=.8,
n_queries=5000, n_restarts=1, resc_schedule=False; APGD-T n_iter=100), the per-version settings
of `set_version` (lines 306-337) and the run loop setting `fab.n_restarts = 1` for 'fab-t'
(lines 211-216). The reference uses the same settings for 'Linf' and 'L2'.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.attacks.autoattack import autoattack
from trainer.attacks.square import p_selection
from trainer.attacks.stages import resolve_stages

APGD = lambda restarts, eot=1: {'n_restarts': restarts, 'n_iter': 100, 'eot_iter': eot}
APGD_T = {'n_target_classes': 9, 'n_restarts': 1, 'n_iter': 100}
FAB = {'n_restarts': 5, 'n_iter': 100}
FAB_T = {'n_target_classes': 9, 'n_restarts': 1, 'n_iter': 100}
SQUARE = {'n_queries': 5000, 'p_init': 0.8, 'resc_schedule': False}

_BY_VERSION = {
    'standard': [('apgd-ce', APGD(1)), ('apgd-t', APGD_T), ('fab-t', FAB_T), ('square', SQUARE)],
    'plus': [('apgd-ce', APGD(5)), ('apgd-dlr', APGD(5)), ('fab', FAB), ('square', SQUARE),
             ('apgd-t', APGD_T), ('fab-t', FAB_T)],
    'rand': [('apgd-ce', APGD(1, eot=20)), ('apgd-dlr', APGD(1, eot=20))],
}
REFERENCE = {(norm, version): stages for norm in ('Linf', 'L2')
             for version, stages in _BY_VERSION.items()}


@pytest.mark.parametrize('norm,version', sorted(REFERENCE))
def test_versions_match_the_reference(norm, version):
  # Our stage lists do not depend on the norm; the reference's settings must not either.
  stages = resolve_stages(version, 10)
  assert [(s.name, s.options) for s in stages] == REFERENCE[norm, version]


def _affine(params, x):
  w, b = params
  return (x.reshape(x.shape[0], -1) - 0.5) @ w + b


@pytest.mark.parametrize('norm', ['Linf', 'L2', 'linf', 'l2'])
@pytest.mark.parametrize('version', ['plus', 'rand'])
def test_cascade_takes_reference_norm_names_and_reports_reference_stage_names(norm, version):
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(16, 10)).astype(np.float32) / 4)
  logits_fn = jax.tree_util.Partial(_affine, (w, jnp.zeros(10)))
  x = rng.uniform(0.3, 0.7, (8, 4, 4, 1)).astype(np.float32)
  y = np.asarray(jnp.argmax(logits_fn(x), axis=1))
  eps = 0.3 if norm.lower() == 'linf' else 1.0       # far beyond every boundary: APGD-CE wins
  result = autoattack(logits_fn, x, y, norm=norm, eps=eps, version=version, batch_size=8)
  assert list(result.stage_accuracy) == [name for name, _ in _BY_VERSION[version]]
  assert result.robust_accuracy == 0.0
  with pytest.raises(ValueError, match='Unknown norm'):
    autoattack(logits_fn, x, y, norm='L1', eps=eps, version=version)


def test_square_schedule_not_rescaled_as_in_standard():
  # The reference's p_selection with rescale_schedule=False compares the raw query index.
  table = [(0, 0.8), (10, 0.8), (11, 0.4), (50, 0.4), (51, 0.2), (201, 0.1), (501, 0.05),
           (1001, 0.025), (2001, 0.0125), (4000, 0.0125), (4001, 0.00625), (4999, 0.00625)]
  for it, p in table:
    assert p_selection(it, 5000, 0.8, resc_schedule=False) == pytest.approx(p, rel=1e-12), it
  # Rescaled, query 4999 of 5000 stands for 9998 of 10,000: p_init / 512.
  assert p_selection(4999, 5000, 0.8, resc_schedule=True) == pytest.approx(0.8 / 512)
