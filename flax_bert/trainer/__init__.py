"""The trainer: one loop, one train step, the run folder, checkpoints, metrics."""
