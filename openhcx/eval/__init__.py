"""Evaluation: `evaluate()` runs registered benchmarks on a model, `radar()` draws category scores.

See harness.py for scoring, tasks/ for the benchmarks, report.py for tables and the radar chart.
"""

from openhcx.eval.harness import EvalResults, evaluate
from openhcx.eval.report import radar

__all__ = ["EvalResults", "evaluate", "radar"]
