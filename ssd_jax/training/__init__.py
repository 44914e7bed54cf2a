"""Training: optimizer and schedules, train state, the pmapped step, checkpoints, the loop."""
