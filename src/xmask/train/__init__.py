"""Training: configs, the EMA teacher, checkpoints, data plans and the Mean Teacher trainer."""
