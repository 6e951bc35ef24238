"""The no-show model, trained as bench/noshow_risk.py trains it, on a small synthetic history:
it must beat the past-no-show-rate baseline on visits it never saw, and stay calibrated."""

from __future__ import annotations

from bench.noshow_risk import train_and_evaluate
from scheduling.risk import FEATURES


def test_the_model_beats_the_past_noshow_rate_on_held_out_visits() -> None:
    report = train_and_evaluate(patients=800, seed=11)
    assert report.held_out > 500
    assert report.auc > report.baseline_auc + 0.02
    assert report.auc <= report.oracle_auc + 0.02  # nobody beats the process itself by much
    assert report.brier < report.baseline_brier
    assert report.ece < 0.08
    assert report.model["features"] == list(FEATURES)
    coef = dict(zip(FEATURES, report.model["coefficients"], strict=True))
    for name in ("noshow_rate", "unanswered", "new_patient", "monday"):
        assert coef[name] > 0, name  # the process raises the risk with each of these
