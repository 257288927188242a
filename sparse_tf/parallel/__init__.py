"""Multi-process training support: the exact sharded projection (more to come: launch, DDP,
FSDP2, distributed checkpoints)."""

from sparse_tf.parallel.projection import sharded_projection_masks

__all__ = ["sharded_projection_masks"]
