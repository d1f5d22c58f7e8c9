"""Training: the per-worker loop for Ray Train, its state and checkpoints, and the driver that launches it."""
