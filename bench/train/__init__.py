"""Training one cell: cells and experiment grids, teachers, how a step is computed, the
runner's loops, selection, SWA, checkpoints, the pipeline that evaluates and stores, sweeps.

May import: bench.core, bench.data, bench.models, bench.eval, bench.methods (via the registry).
"""
