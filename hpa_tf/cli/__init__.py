"""The commands: flags parsed into a configuration, then one library call per mode (console scripts
hpa-train-classifier, hpa-train-metric, hpa-infer; the repository's three scripts call these)."""
