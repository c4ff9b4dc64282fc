"""Evaluation: the attacks (attacks), the suite every method is measured with (evaluate),
and the analyses on stored models: tutor accuracy, transfer, attack strength (analysis).

May import: bench.core, bench.data, bench.models.
"""
