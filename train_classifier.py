"""`python train_classifier.py`: the hpa-train-classifier command; see `python train_classifier.py --help`."""

import sys

from hpa_tf.cli.train_classifier import main

if __name__ == "__main__":
    sys.exit(main())
