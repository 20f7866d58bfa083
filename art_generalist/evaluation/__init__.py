"""Honest robustness evaluation: clean, PGD, CW, FGSM and AutoAttack accuracy with integrity checks.

``evaluate(classifier, x, y, eps)`` returns an :class:`EvaluationReport` with each attack's own
accuracy, the per-example worst case, the results of the integrity checks
(:mod:`art_generalist.evaluation.checks`) and a ``reliable`` flag. AutoAttack (Croce & Hein 2020,
https://arxiv.org/abs/2003.01690) is reached through
:class:`~art_generalist.evaluation.autoattack_adapter.AutoAttackAdapter` (fra31's ``autoattack``
when installed, else ``pyautoattack``).
"""
from art_generalist.evaluation.autoattack_adapter import AutoAttackAdapter
from art_generalist.evaluation.checks import CheckResult
from art_generalist.evaluation.report import EvaluationReport
from art_generalist.evaluation.runner import evaluate

__all__ = ["evaluate", "EvaluationReport", "AutoAttackAdapter", "CheckResult"]
