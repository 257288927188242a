"""Data under torchrun: every rank opens the prepared token store itself, by memory map.

No rank tokenises inside the process group, where the others would wait in a collective until
its timeout: the trainer prepares the data before the group starts (`prepare_data`, under the
cache's prepare lock, so the ranks of one machine build it once), or the user ran `sparse-tf
data prepare`. Inside the group the ranks only open what is there, and refuse to train on
different data: a node whose cache holds another corpus or tokenizer (no shared storage, files
changed on one node) fails every rank with one line.
"""

from __future__ import annotations

from collections.abc import Callable

from sparse_tf.data.pipeline import Data
from sparse_tf.data.tokenizer import tokenizer_digest
from sparse_tf.data.tokens import TokenDataError
from sparse_tf.errors import SparseTFError
from sparse_tf.parallel import launch


def data_digest(data: Data) -> str:
    """What every rank must agree on: the corpus, the tokenizer, the tokens of each split."""
    val = len(data.val.tokens) if data.val is not None else 0
    return (
        f"corpus {data.corpus.digest[:16]}, tokenizer {tokenizer_digest(data.tokenizer)[:16]}, "
        f"{len(data.train.tokens)}+{val} tokens"
    )


def open_on_every_rank(world: launch.World, load: Callable[[bool], Data]) -> Data:
    """`load(build)` on every rank: building (tokenising) in a process of one, only opening
    under torchrun. A rank's failure fails all of them with its message, and so does a
    difference between the ranks' data."""
    if not world.distributed:
        return load(True)
    data, message = None, None
    try:
        data = load(False)
    except SparseTFError as e:
        message = f"rank {world.rank}: {e}"
    errors = [m for m in launch.gather_text(world, message) if m is not None]
    if errors:
        raise TokenDataError(errors[0])
    assert data is not None
    digests = launch.gather_text(world, data_digest(data))
    for rank, digest in enumerate(digests):
        if digest != digests[0]:
            raise TokenDataError(
                f"rank {rank} reads other data than rank 0 ({digest} vs {digests[0]}): put the "
                "token store on storage every node sees, or prepare the same corpus on each"
            )
    return data
