"""`python train_metric.py`: the hpa-train-metric command; see `python train_metric.py --help`."""

import sys

from hpa_tf.cli.train_metric import main

if __name__ == "__main__":
    sys.exit(main())
