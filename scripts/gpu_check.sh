#!/bin/sh
# The GPU check (bench.perf.gpucheck): needs one CUDA GPU, torch and bench, no network; under
# 8 minutes. Options pass through, e.g. --json check.json, --work DIR; --device cpu --tiny
# runs the same steps on a tiny budget (a smoke test).
exec "${PYTHON:-python}" -m bench.perf.gpucheck "$@"
