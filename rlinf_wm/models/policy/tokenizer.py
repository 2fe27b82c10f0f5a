"""Discretisation of actions into tokens, and a byte-level instruction tokenizer.

Actions: each dimension is first normalised to [-1, 1] (q01..q99, see
:class:`rlinf_wm.data.ActionStatistics`), then cut into ``num_bins`` equal bins; a token is a bin
index and decodes to the bin centre, so a round trip is off by at most half a bin (``1 / num_bins``
in normalised units). OpenVLA discretises the same way (256 bins over q01..q99).

Instructions: UTF-8 bytes shifted by one (0 is padding), truncated or padded to a fixed length, so no
vocabulary file has to be downloaded.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


class ActionTokenizer:
    """Uniform bins over [-1, 1] for normalised actions."""

    def __init__(self, num_bins: int = 256) -> None:
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        self.num_bins = num_bins
        self.bin_width = 2.0 / num_bins

    def encode(self, normalized: np.ndarray) -> np.ndarray:
        """Normalised actions (any shape, values clipped to [-1, 1]) -> int64 tokens in [0, num_bins)."""
        clipped = np.clip(np.asarray(normalized, np.float64), -1.0, 1.0)
        tokens = np.floor((clipped + 1.0) / self.bin_width).astype(np.int64)
        # +1.0 lands exactly on the upper edge: it belongs to the last bin.
        return np.minimum(tokens, self.num_bins - 1)

    def decode(self, tokens: np.ndarray | torch.Tensor) -> np.ndarray:
        """Tokens -> bin centres in [-1, 1] (float32)."""
        tokens = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.num_bins):
            raise ValueError(
                f"action tokens must lie in [0, {self.num_bins}), got range [{tokens.min()}, {tokens.max()}]"
            )
        return (-1.0 + (tokens.astype(np.float64) + 0.5) * self.bin_width).astype(np.float32)


class ByteTokenizer:
    """Instruction strings -> int64 ids ``[B, max_length]``: UTF-8 byte + 1, 0 = padding."""

    vocab_size = 257  # 256 byte values + padding
    pad_id = 0

    def __init__(self, max_length: int = 64) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length = max_length

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("ByteTokenizer.encode expects a list of strings, got one str")
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        for row, text in enumerate(texts):
            # Lower-case and strip so "Open the drawer." and "open the drawer" share ids.
            data = text.strip().lower().encode("utf-8")[: self.max_length]
            if data:
                ids[row, : len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).long() + 1
        return ids

    def decode(self, ids: torch.Tensor) -> list[str]:
        out = []
        for row in ids.tolist():
            out.append(bytes(i - 1 for i in row if i != self.pad_id).decode("utf-8", errors="replace"))
        return out
