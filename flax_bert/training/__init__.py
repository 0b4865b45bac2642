"""Training: optimizer, sharding rules and mesh, train/eval steps, the loop, metric writers."""
