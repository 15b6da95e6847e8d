"""Data: on-disk layout, image readers, the synthetic dataset, preparation and input pipelines."""
