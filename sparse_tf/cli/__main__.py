"""`python -m sparse_tf.cli` (what torchrun runs): the `sparse-tf` command."""

from sparse_tf.cli import main

main()
