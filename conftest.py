"""Every test and doctest runs with one intra-op thread.

The networks and batches of the test suite are tiny: with torch's default intra-op threads on a small, shared CPU,
another busy process made one BCQ update about 100x slower (674 ms against 6 ms with one thread, measured on the
2-core CI machine). Benchmarks (``benchmarks/``) choose their own thread count.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
