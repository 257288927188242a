"""The Triton kernels themselves (`@triton.jit`), one module per op of `sparse_tf.kernels`.

Only the launchers import these, at their first launch (on CUDA, or on a CPU under
TRITON_INTERPRET=1), so that sparse_tf imports, trains and loads models without triton
installed: the reference paths and the autograd Functions live in the op's own module.
"""
