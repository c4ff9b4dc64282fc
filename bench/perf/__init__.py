"""Speed, side by side: training throughput against a straight reference loop (throughput)
and the GPU check built on it (gpucheck).

May import: every wing below the command line (core, data, models, eval, train, report).
"""
