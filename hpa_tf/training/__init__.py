"""Training: learning-rate schedules, the global-batch trainer, callbacks and the classifier loop."""
