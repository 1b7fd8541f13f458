"""A preallocated key/value cache for incremental decoding.

Without a cache, generating token t+1 recomputes attention keys and values for
all t previous tokens. With it, each step computes k and v for the new token
only and writes them in place into buffers allocated once, so a step costs
O(t) attention reads and no tensor concatenation or reallocation.
"""

from __future__ import annotations

import torch

from gptforge.errors import ModelError


class KVCache:
    """Keys and values of every layer, preallocated.

    Buffers ``k`` and ``v`` have shape (n_layer, B, nh, S, hs) where S is
    ``max_seq_len``. ``pos`` counts the positions already filled: the next
    forward writes its T new positions at ``[pos, pos + T)``.

    Usage (what ``GPT.forward`` does)::

        k_all, v_all = cache.update(layer, k, v)   # each layer: write, get (B, nh, pos + T, hs)
        cache.advance(T)                           # once all layers have written
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        max_seq_len: int,
        head_size: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (n_layer, batch_size, n_head, max_seq_len, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0
        self.max_seq_len = max_seq_len

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values (B, nh, T, hs) of ``layer`` and return all of them so far.

        Returns:
            (k_all, v_all), views of shape (B, nh, pos + T, hs).
        """
        T = k.shape[2]
        end = self.pos + T
        if end > self.max_seq_len:
            raise ModelError(
                f"KV cache overflow: {end} positions exceed its size {self.max_seq_len}; "
                "make a larger cache (make_kv_cache(max_seq_len=...)) or crop it"
            )
        k_all, v_all = self._layer(layer)  # (B, nh, S, hs) each
        k_all.narrow(2, self.pos, T).copy_(k)
        v_all.narrow(2, self.pos, T).copy_(v)
        return k_all.narrow(2, 0, end), v_all.narrow(2, 0, end)

    def _layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views (B, nh, S, hs) of one layer's keys and values, made once per buffer.

        Why: a decoding step writes every layer; with the views kept, a write is one narrow
        and one copy instead of re-indexing the 5-D buffers (~5 small ops, ~2 us each). They
        are re-made whenever ``k`` or ``v`` is another tensor (a caller may set them, as the
        server's scheduler does for a view of its shared cache).
        """
        views = getattr(self, "_views", None)  # absent on a cache made with __new__
        if views is None or views[0] is not self.k or views[1] is not self.v:
            # select, not unbind: unbind's views may not be written in place under grad mode
            n = self.k.shape[0]
            views = self._views = (self.k, self.v, [self.k.select(0, i) for i in range(n)],
                                   [self.v.select(0, i) for i in range(n)])
        return views[2][layer], views[3][layer]

    def advance(self, T: int) -> None:
        """Mark T more positions as filled (called once per forward, after every layer)."""
        self.pos += T

    def reset(self) -> None:
        """Forget every position (the buffers are reused, not reallocated)."""
        self.pos = 0

    def crop(self, length: int) -> None:
        """Keep only the first ``length`` positions (e.g. to roll back speculative tokens)."""
        if length < 0:
            raise ModelError(f"cannot crop a KV cache to a negative length ({length})")
        self.pos = min(self.pos, length)
