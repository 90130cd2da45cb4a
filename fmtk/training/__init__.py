"""The training pipeline: engines, handlers, checkpoints, evaluation, and the run that assembles them."""
