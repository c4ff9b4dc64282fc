"""The in-tree methods, installed as bench.methods: one module per method, each registering
one Distiller (its attack, loss, typed Params and presets, nothing else).

May import: bench.core, bench.eval (attacks), bench.models (features), and each other.
"""
