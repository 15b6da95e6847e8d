"""For HPA curators (the uses the original author proposed): the annotated pool of a metric run's
embeddings (pool), the label-noise report (report), the galleries of nearest annotated images (gallery),
and the web page (web) with its review queues (queues), decisions file (corrections) and access (access)."""
