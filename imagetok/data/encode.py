"""Batches of decoded images -> token rows, on the tokenizer's device.

On CPU each batch is encoded and returned at once. On CUDA (untested here: no GPU was available
when this was written) the host side is kept off the GPU's critical path: uint8 pixels are stacked
into pinned memory and copied with ``non_blocking=True`` (4x less traffic than float32; converted
to [0, 1] on the GPU with the same float32 division as :func:`imagetok.image.to_tensor`), the
tokens come back through pinned buffers with ``non_blocking=True``, and results are returned one
batch late, so the GPU encodes batch ``k + 1`` while this process writes the rows of batch ``k``.
Decoding runs in loader worker processes. Tokens are the same either way: only where the work runs
changes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .. import image as _image

Encoded = dict  # item index -> (grid: list[int], flat tokens: np.ndarray)


class BatchEncoder:
    """Encode lists of decoded items (objects with ``index`` and ``pixels``: HxWx3 uint8 or float32).

    Use :meth:`submit` per batch and :meth:`flush` at the end; each returns ``[(batch, encoded)]``
    for the batches that are finished, in submission order (``encoded``: item index -> ``(grid,
    flat tokens)``; items without pixels are left out). ``lag``: how many batches stay in flight
    (default 1 on CUDA, 0 on CPU).
    """

    def __init__(self, tok: Any, lag: int | None = None):
        self.tok = tok
        self.levels = len(tok.codebook_sizes)
        self.cuda = tok.device.type == "cuda"
        self.lag = (1 if self.cuda else 0) if lag is None else lag  # CUDA: return the previous batch while this one runs
        self._pending: list[tuple[Any, list]] = []

    def submit(self, batch: Sequence[Any], tag: Any = None) -> list[tuple[Any, Encoded]]:
        good = [it for it in batch if it.pixels is not None]
        by_shape: dict[tuple, list[Any]] = {}
        for it in good:
            by_shape.setdefault((it.pixels.shape, it.pixels.dtype.str), []).append(it)
        groups = [(group, self._launch(group)) for group in by_shape.values()]
        self._pending.append((tag if tag is not None else batch, groups))
        done = []
        while len(self._pending) > self.lag:
            done.append(self._finish(*self._pending.pop(0)))
        return done

    def flush(self) -> list[tuple[Any, Encoded]]:
        done = [self._finish(*p) for p in self._pending]
        self._pending = []
        return done

    def _launch(self, group: list) -> Any:
        arrays = [it.pixels for it in group]
        if not self.cuda:
            tokens = self.tok.encode_pixels(_image.to_tensor(arrays))
            return [t.numpy() for t in (tokens if isinstance(tokens, tuple) else (tokens,))]
        dev = self.tok.device
        if all(a.dtype == np.uint8 for a in arrays):
            host = torch.from_numpy(np.stack(arrays)).pin_memory()
            x = host.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        else:
            x = _image.to_tensor(arrays).pin_memory().to(dev, non_blocking=True)
        tokens = self.tok.encode_pixels(x)
        outs = []
        for t in tokens if isinstance(tokens, tuple) else (tokens,):
            buf = torch.empty(t.shape, dtype=torch.int32, pin_memory=True)
            buf.copy_(t.to(torch.int32), non_blocking=True)
            outs.append(buf)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(dev))  # the stream all of the above was queued on
        return (outs, event)

    def _finish(self, tag: Any, groups: list) -> tuple[Any, Encoded]:
        encoded: Encoded = {}
        for group, result in groups:
            if self.cuda:
                outs, event = result
                event.synchronize()
                parts = [o.numpy() for o in outs]
            else:
                parts = result
            grid = [d for p in parts for d in p.shape[1:]]
            for j, it in enumerate(group):
                flat = parts[0][j].reshape(-1) if self.levels == 1 else np.concatenate([p[j].reshape(-1) for p in parts])
                encoded[it.index] = (grid, flat)
        return tag, encoded
