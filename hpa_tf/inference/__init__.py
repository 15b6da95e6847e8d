"""Inference: TTA and fold ensembles, thresholds and label replacement, submissions."""
