"""Launch-grid arithmetic, as Triton's helpers compute it, without importing triton."""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for non-negative a and positive b (`triton.cdiv`)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= n, 1 for n <= 1 (`triton.next_power_of_2`)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
