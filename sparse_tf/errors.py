"""The base class of every error caused by what a user handed us (a config value, a file, a
corpus, a checkpoint). The message is one line naming the field, file or token at fault; the
`sparse-tf` command prints it as is, without a traceback.

Deliberately not a ValueError: CLI parsers (tyro) reformat ValueErrors raised while building
their arguments.
"""


class SparseTFError(Exception):
    """Bad input; `str(error)` is a complete one-line explanation."""
