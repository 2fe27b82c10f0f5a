"""Seeds derived from names and counters, so every random choice of a run can be replayed alone.

A resumed run, a redone iteration after a worker crash, and an uninterrupted run all draw the
same reset ids, reset seeds, action samples and minibatch orders, whatever ran before.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: int | str) -> int:
    """A 31-bit seed from ``parts`` (e.g. ``(run_seed, "act", iteration, batch, chunk)``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF
