"""For HPA curators (the uses the original author proposed): the annotated pool of a metric run's
embeddings (pool), the label-noise report (report) and the galleries of nearest annotated images
(gallery)."""
