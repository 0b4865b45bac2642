"""Robustness harnesses (preemption chaos, fuzzed prepared folders) and what they share with
the tests; run from the repo root as modules: python -m tools.chaos, python -m
tools.fuzz_prepared."""
