"""Multi-process training: torchrun's world and clean exits (`launch`), FSDP2 sharding
(`fsdp`), and the exact L0 projection of sharded matrices (`projection`)."""

from sparse_tf.parallel.projection import project_sharded_, sharded_projection_masks

__all__ = ["project_sharded_", "sharded_projection_masks"]
