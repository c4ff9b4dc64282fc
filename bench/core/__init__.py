"""The contract and the record: the Distiller base and Params, the method registry, the
collectives a method may call under torchrun, the results store, safe files, name suggestions.

Imports nothing of bench but `bench` itself (BenchError); every other wing builds on it.
The registry's first use loads the in-tree methods (bench.methods), the one import upward.
"""
