"""Reports from stored rows (never training): aggregation over seeds, paper tables, published
numbers (reported.toml) against reproduced, figures and plots, the self-contained HTML page.

May import: bench.core, bench.data, bench.models, bench.eval, bench.train.
"""
