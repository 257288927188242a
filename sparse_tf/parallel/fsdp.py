"""FSDP2 for the GPT: every parameter sharded by rows over the ranks (`fully_shard`).

    model = GPT(cfg)               # the same initialisation on every rank (same seed)
    shard_model(model, device)     # now each rank holds rows [r·⌈n/W⌉, (r+1)·⌈n/W⌉) of each tensor

Each block is its own FSDP unit (its parameters are all-gathered just before it runs and freed
after), and the root holds the embeddings, final norm, unembedding and bigram table. The
parameters stay `DTensor`s with placement `Shard(0)` on a 1-D mesh of all ranks between steps;
the optimizer, the projection and the checkpoints work on those shards:

- `SparseOptimizer` takes the global gradient RMS from the shards (one all-reduce) and runs Adam
  on the sharded parameters and moments;
- the L0 projection of a sharded matrix is `parallel.projection.sharded_projection_masks`: the
  kept set equals the single-process one exactly;
- checkpoints are written with `torch.distributed.checkpoint` (one file per rank, resharded on
  load to any number of ranks; `sparse_tf.checkpoint`).

Mixed precision on GPU: parameters are all-gathered in bf16 for the forward and backward, the
gradients are reduce-scattered in fp32, and the sharded parameters, Adam moments and the
projection stay fp32 (`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`).

The sparse matmul (`SparseLinear`) stays on cuBLAS under FSDP: the weight a layer sees is
rebuilt by an all-gather before every forward, so a sparse format cached per weight version
would be rebuilt every time.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard

from sparse_tf.model import GPT


def shard_model(model: GPT, device: torch.device) -> GPT:
    """Shard `model` in place over all ranks of the default process group (FSDP2); returns it.

    bf16 all-gathers with fp32 gradient reduction on CUDA; fp32 throughout on CPU."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy()
    if device.type == "cuda":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    # The root's parameters (embeddings, unembedding) are needed again at the start of the
    # backward pass: keeping them gathered after the forward saves an all-gather per step.
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether `model`'s parameters are FSDP shards (DTensors)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def local(t: Tensor) -> Tensor:
    """This rank's part of `t`: the local shard of a DTensor (a view: writing to it writes the
    parameter), `t` itself otherwise."""
    return t.to_local() if isinstance(t, DTensor) else t


def row_shard_group(params: list[Tensor]) -> dist.ProcessGroup:
    """The process group over which every tensor of `params` is sharded by rows; a ValueError
    names the first tensor that is not a row shard of a 1-D mesh (the sharded projection and
    the gradient norm rely on that layout)."""
    mesh = None
    for p in params:
        if not isinstance(p, DTensor):
            raise ValueError(f"a {type(p).__name__} among sharded parameters: all must be DTensors")
        if p.device_mesh.ndim != 1 or tuple(p.placements) != (Shard(0),):
            raise ValueError(
                f"parameter of shape {tuple(p.shape)} has placements {p.placements} on a "
                f"{p.device_mesh.ndim}-D mesh; the sharded projection needs Shard(0) on a 1-D mesh"
            )
        if mesh is None:
            mesh = p.device_mesh
        elif p.device_mesh != mesh:
            raise ValueError("sharded parameters live on different device meshes")
    assert mesh is not None, "no parameters"
    return mesh.get_group()


def row_offset(p: DTensor) -> int:
    """Global index of the first row of this rank's shard of `p` (FSDP2 splits rows as
    `torch.chunk`: ⌈n/W⌉ per rank, the last ranks possibly short or empty)."""
    n, world = p.shape[0], p.device_mesh.size()
    per_rank = -(-n // world)
    start = min(p.device_mesh.get_local_rank() * per_rank, n)
    rows = p.to_local().shape[0]
    if rows != min(per_rank, n - start):
        raise ValueError(
            f"parameter of shape {tuple(p.shape)}: this rank holds {rows} rows, not the "
            f"{min(per_rank, n - start)} of an even row split over {world} ranks"
        )
    return start


def gathered_model(model: GPT) -> GPT | None:
    """A plain copy of a sharded `model` on rank 0's CPU, for exporting (None on the other
    ranks). Collective: every rank calls it; the parameters travel once, to rank 0."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)  # the whole tensors, on rank 0 only
    if dist.get_rank() != 0:
        return None
    with torch.device("meta"):  # no memory, no random numbers drawn: every value is loaded
        copy = GPT(model.cfg)
    copy.load_state_dict(state, assign=True)
    return copy.eval()
