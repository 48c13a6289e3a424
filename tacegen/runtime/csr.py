"""Compressed sparse rows of a graph's edges (numpy only), the index arrays the printed Numba
programs read: edges sorted by receiver (the runtime batch sorts them so) own the slice
``offsets[n]:offsets[n + 1]`` of their receiver n; the sender CSR orders them by sender,
stably."""

from __future__ import annotations

import numpy as np


def receiver_offsets(receivers, num_nodes: int) -> np.ndarray:
    """CSR offsets (N+1,) of edges sorted by receiver: node n owns edges offsets[n]:offsets[n+1]."""
    receivers = np.asarray(receivers)
    if receivers.size and np.any(np.diff(receivers) < 0):
        raise ValueError("receivers must be sorted (the runtime batch sorts edges by receiver)")
    return np.searchsorted(receivers, np.arange(num_nodes + 1), side="left").astype(np.int64)


def sender_csr(senders, num_nodes: int) -> tuple:
    """(sender_order (E,), sender_offsets (N+1,)): edges sorted by sender, stably (equal senders
    keep their edge order, so sums by sender run in edge order), and the CSR offsets: node n
    sends edges ``sender_order[sender_offsets[n]:sender_offsets[n + 1]]``."""
    senders = np.asarray(senders, dtype=np.int64)
    if senders.size and (senders.min() < 0 or senders.max() >= num_nodes):
        raise ValueError("senders must be node indices in [0, num_nodes)")
    order = np.argsort(senders, kind="stable").astype(np.int64)
    offsets = np.searchsorted(senders[order], np.arange(num_nodes + 1), side="left").astype(np.int64)
    return np.ascontiguousarray(order), offsets
