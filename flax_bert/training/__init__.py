"""What every job shares: engine.py (the run sequence), feed.py (the device feed),
monitor.py (metric rows, evals, the non-finite guard), checks.py (the config and the run
folder), steps.py (pure train/eval steps), optimizer.py, sharding.py (the logical-axis
rules), state.py, metrics.py (metric writers), compile_cache.py. Signals:
flax_bert/preemption.py."""
