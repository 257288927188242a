"""`python train.py [flags]` is `sparse-tf train [flags]` (see `python train.py --help`)."""

import sys

from sparse_tf.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
