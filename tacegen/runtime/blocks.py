"""Sizes of the edge blocks the generated PyTorch models evaluate their atomic basis in.

The per-edge intermediates of an interaction (edges x channels x (2l+1) values) are
memory-bound elementwise work. Over a whole system they are tens to hundreds of MB each:
every such tensor is mapped and zeroed afresh by the kernel (glibc serves allocations above
its 32 MiB mmap ceiling with fresh pages), and none of it stays in cache. Evaluated in
blocks of receivers whose widest intermediate takes about ``EDGE_BLOCK_BYTES``, the memory
is reused by the allocator from block to block and the block's data stays in the last-level
cache, so the time per atom no longer grows with the system.
"""

from __future__ import annotations

import torch

EDGE_BLOCK_BYTES = 8 * 2**20
"""Target size of one block's widest per-edge intermediate (a typical last-level cache
share, well under glibc's mmap ceiling)."""

MIN_EDGE_BLOCK = 256


def edge_block_size(channels: int, width: int, dtype: torch.dtype) -> int:
    """Edges per block so that an (edges, channels, width) tensor of ``dtype`` takes about
    ``EDGE_BLOCK_BYTES`` (at least ``MIN_EDGE_BLOCK`` edges)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(MIN_EDGE_BLOCK, EDGE_BLOCK_BYTES // (int(channels) * int(width) * itemsize))
