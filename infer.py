"""`python infer.py`: the hpa-infer command; see `python infer.py --help`."""

import sys

from hpa_tf.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
