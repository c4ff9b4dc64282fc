"""Evaluation: the attacks (attacks), the suite every method is measured with (evaluate) and
its batches and precision (batching), and the analyses on stored models (analysis).

May import: bench.core, bench.data, bench.models.
"""
