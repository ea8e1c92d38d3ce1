"""The training loop, optimiser groups, schedules and crash-safe checkpoints."""
