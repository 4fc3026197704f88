"""The LLM bridge: image token grids <-> ids in a language model's vocabulary.

A language model that reads or writes images sees each image as a run of ids::

    [BOI]  t(0,0) t(0,1) ... t(0,w-1) [EOR]  t(1,0) ... [EOR]  ...  [EOI]

- image code ``c`` of level ``l`` becomes ``offset + level_start[l] + c`` (levels coarse to fine,
  ``level_start`` = sizes of the codebooks before it, as in :meth:`Tokenizer.flatten`);
- ``BOI`` / ``EOI`` (begin / end of image) and ``EOR`` (end of row, after every row including the
  last) are optional; by default they take the ids right after the codes, in that order, so the
  image vocabulary is one contiguous block ``[offset, offset + num_added)``;
- several levels (VQ-VAE-2) follow each other coarse to fine inside one BOI ... EOI.

>>> bridge = LLMBridge.for_tokenizer(tok, offset=len(hf_tokenizer), boi=True, eoi=True)
>>> ids = bridge.to_llm(tok.encode("cat.jpg"))      # int64 [2 + h*w]
>>> tok.decode(bridge.from_llm(ids))                # the image back

:func:`extend_hf_tokenizer` adds exactly these tokens to a Hugging Face tokenizer and checks that
they land on the ids the bridge expects. Nothing here imports ``transformers``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from .errors import InputError

Tokens = Any  # torch/numpy [h, w] or [B, h, w], or a tuple of those (one per level)
_SPECIALS = ("boi", "eoi", "eor")


def _as_long(t: Any, what: str) -> torch.Tensor:
    if isinstance(t, np.ndarray):
        if not np.issubdtype(t.dtype, np.integer):
            raise InputError(f"{what} must be integers, got numpy {t.dtype}")
        return torch.from_numpy(t.astype(np.int64))
    if isinstance(t, (list, tuple)):
        t = torch.as_tensor(t)
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{what} must be a torch tensor or numpy array, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"{what} must be an integer tensor, got {t.dtype}")
    return t.long()


class LLMBridge:
    """Maps image token grids to language-model ids and back.

    Args:
        codebook_sizes: codebook size of each level, coarse to fine (``tok.codebook_sizes``).
        factors: downsampling factor of each level (``tok.downsample_factors``); needed to split a
            multi-level sequence back into grids.
        offset: LLM id of image code 0 (usually the text vocabulary size, ``len(hf_tokenizer)``).
        boi, eoi, eor: begin-of-image, end-of-image, end-of-row markers. ``False``: not used;
            ``True``: a new id right after the codes (in the order boi, eoi, eor); an int: use this
            existing LLM id (it must lie outside the code ids).

    Attributes:
        boi_id, eoi_id, eor_id: the resolved marker ids (None when unused).
        num_added: ids this bridge adds after ``offset`` (codes plus new markers).
        vocab_end: ``offset + num_added``, the LLM vocabulary size needed.
    """

    def __init__(
        self,
        codebook_sizes: Sequence[int],
        factors: Sequence[int] | None = None,
        *,
        offset: int = 0,
        boi: bool | int = False,
        eoi: bool | int = False,
        eor: bool | int = False,
    ):
        sizes = tuple(int(k) for k in codebook_sizes)
        if not sizes or any(k < 1 for k in sizes):
            raise InputError(f"codebook_sizes must be positive ints, got {list(codebook_sizes)}")
        factors = tuple(int(f) for f in factors) if factors is not None else (1,) * len(sizes)
        if len(factors) != len(sizes) or any(f < 1 for f in factors):
            raise InputError(f"need one positive factor per level, got factors {list(factors)} for {len(sizes)} level(s)")
        if any(factors[0] % f for f in factors):
            raise InputError(f"each level's factor must divide the coarsest level's, got {list(factors)}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InputError(f"offset must be an int >= 0, got {offset!r}")
        self.codebook_sizes, self.factors, self.offset = sizes, factors, offset
        self.num_codes = sum(sizes)
        nxt = offset + self.num_codes
        resolved: dict[str, int | None] = {}
        for name, value in zip(_SPECIALS, (boi, eoi, eor)):
            if value is True:
                resolved[name], nxt = nxt, nxt + 1
            elif value is False or value is None:
                resolved[name] = None
            elif isinstance(value, int) and value >= 0:
                if offset <= value < offset + self.num_codes:
                    raise InputError(f"{name} id {value} collides with the image code ids [{offset}, {offset + self.num_codes})")
                resolved[name] = value
            else:
                raise InputError(f"{name} must be True, False or an id >= 0, got {value!r}")
        used = [v for v in resolved.values() if v is not None]
        if len(set(used)) != len(used):
            raise InputError(f"boi/eoi/eor ids must differ, got {resolved}")
        self.boi_id, self.eoi_id, self.eor_id = resolved["boi"], resolved["eoi"], resolved["eor"]
        self._new_markers = [n for n, v in zip(_SPECIALS, (boi, eoi, eor)) if v is True]
        self.num_added = self.num_codes + len(self._new_markers)
        self.vocab_end = offset + self.num_added
        self._starts = [offset + sum(sizes[:i]) for i in range(len(sizes))]

    # ------------------------------------------------------------------ construction / storage
    @classmethod
    def for_tokenizer(cls, tok: Any, *, offset: int = 0, boi: bool | int = False, eoi: bool | int = False, eor: bool | int = False) -> "LLMBridge":
        """A bridge for an :class:`imagetok.Tokenizer` (or anything with ``codebook_sizes`` and
        ``downsample_factors``)."""
        return cls(tok.codebook_sizes, tok.downsample_factors, offset=offset, boi=boi, eoi=eoi, eor=eor)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; :meth:`from_dict` rebuilds the same bridge."""
        return {
            "codebook_sizes": list(self.codebook_sizes),
            "factors": list(self.factors),
            "offset": self.offset,
            "boi_id": self.boi_id,
            "eoi_id": self.eoi_id,
            "eor_id": self.eor_id,
            "vocab_end": self.vocab_end,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LLMBridge":
        def marker(name: str) -> bool | int:
            v = d.get(f"{name}_id")
            return False if v is None else int(v)

        b = cls(d["codebook_sizes"], d.get("factors"), offset=int(d.get("offset", 0)), boi=marker("boi"), eoi=marker("eoi"), eor=marker("eor"))
        return b

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LLMBridge) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (
            f"LLMBridge(codebook_sizes={self.codebook_sizes}, offset={self.offset}, boi={self.boi_id}, "
            f"eoi={self.eoi_id}, eor={self.eor_id}, vocab_end={self.vocab_end})"
        )

    # ---------------------------------------------------------------------------- mapping
    def _levels(self, tokens: Tokens) -> tuple[list[torch.Tensor], bool]:
        n = len(self.codebook_sizes)
        if n > 1:
            if not isinstance(tokens, (tuple, list)) or len(tokens) != n or not all(
                isinstance(t, (torch.Tensor, np.ndarray)) for t in tokens
            ):
                raise InputError(f"this bridge has {n} levels: pass a tuple of {n} token grids (coarse to fine)")
            parts = [_as_long(t, "tokens") for t in tokens]
        else:
            if isinstance(tokens, (tuple, list)) and len(tokens) == 1 and isinstance(tokens[0], (torch.Tensor, np.ndarray)):
                tokens = tokens[0]
            parts = [_as_long(tokens, "tokens")]
        dims = {t.ndim for t in parts}
        if len(dims) != 1 or dims.pop() not in (2, 3):
            raise InputError(f"token grids must all be [h, w] or all [B, h, w], got shapes {[tuple(t.shape) for t in parts]}")
        is_batch = parts[0].ndim == 3
        parts = [t if is_batch else t[None] for t in parts]
        for t, k in zip(parts, self.codebook_sizes):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
                raise InputError(f"token ids must lie in [0, {k}), got min {int(t.min())}, max {int(t.max())}")
        if len({t.shape[0] for t in parts}) != 1:
            raise InputError("all levels must hold the same number of images")
        return parts, is_batch

    def to_llm(self, tokens: Tokens) -> torch.Tensor:
        """Token grids -> LLM id sequence.

        Args:
            tokens: int ``[h, w]`` (one image) or ``[B, h, w]`` (a batch), torch or numpy; a tuple of
                those, coarse to fine, for multi-level models.

        Returns:
            int64 ``[N]`` or ``[B, N]`` with ``N = sum(h_l * (w_l + eor)) + boi + eoi``.
        """
        parts, is_batch = self._levels(tokens)
        b = parts[0].shape[0]
        pieces = []
        if self.boi_id is not None:
            pieces.append(torch.full((b, 1), self.boi_id, dtype=torch.long))
        for t, start in zip(parts, self._starts):
            t = t + start
            if self.eor_id is not None:
                t = torch.cat([t, torch.full((b, t.shape[1], 1), self.eor_id, dtype=torch.long)], dim=2)
            pieces.append(t.reshape(b, -1))
        if self.eoi_id is not None:
            pieces.append(torch.full((b, 1), self.eoi_id, dtype=torch.long))
        seq = torch.cat(pieces, dim=1)
        return seq if is_batch else seq[0]

    def _grid(self, n_rows: int | None, row_len: int | None, n_codes: int, grid: Sequence[int] | None) -> tuple[int, int]:
        """The coarsest level's (h, w) from the sequence's structure or the given grid."""
        ratios = [self.factors[0] // f for f in self.factors]
        if grid is not None:
            h0, w0 = (int(v) for v in grid)
        elif n_rows is not None and row_len is not None:
            rows_per_h0 = sum(ratios)
            if n_rows % rows_per_h0:
                raise InputError(f"{n_rows} rows cannot form {len(ratios)} level(s) with size ratios {ratios}")
            h0, w0 = n_rows // rows_per_h0, row_len
        else:
            area = sum(r * r for r in ratios)
            side = math.isqrt(n_codes // area) if n_codes % area == 0 else -1
            if side < 1 or side * side * area != n_codes:
                raise InputError(
                    f"cannot tell the grid shape of {n_codes} codes without end-of-row tokens: pass grid=(h, w)"
                )
            h0 = w0 = side
        return h0, w0

    def from_llm(self, ids: Any, grid: Sequence[int] | None = None) -> Tokens:
        """LLM id sequence -> token grids; the inverse of :meth:`to_llm`.

        Args:
            ids: int ``[N]`` (or ``[B, N]``) as made by :meth:`to_llm`. Leading BOI and trailing EOI
                are removed when present.
            grid: ``(h, w)`` of the coarsest level. Not needed when the bridge uses EOR (the rows
                tell) or when the image is square.

        Returns:
            int64 ``[h, w]`` (``[B, h, w]`` for a batch); a tuple of those for multi-level bridges.

        Raises:
            InputError: ids outside the image vocabulary, misplaced markers, ragged rows, or a
                length that does not fit the grid.
        """
        seq = _as_long(ids, "ids")
        if seq.ndim == 2:
            outs = [self.from_llm(s, grid) for s in seq]
            if isinstance(outs[0], tuple):
                return tuple(torch.stack(level) for level in zip(*outs))
            return torch.stack(outs)
        if seq.ndim != 1:
            raise InputError(f"ids must be [N] or [B, N], got shape {tuple(seq.shape)}")
        if self.boi_id is not None and seq.numel() and int(seq[0]) == self.boi_id:
            seq = seq[1:]
        if self.eoi_id is not None and seq.numel() and int(seq[-1]) == self.eoi_id:
            seq = seq[:-1]
        n_rows = row_len = None
        rows_w: list[int] = []
        if self.eor_id is not None:
            is_eor = seq == self.eor_id
            if seq.numel() == 0 or not bool(is_eor[-1]):
                raise InputError("a sequence with end-of-row tokens must end each row, the last included, with EOR")
            pos = torch.nonzero(is_eor).flatten()
            rows_w = torch.diff(pos, prepend=torch.tensor([-1])).sub(1).tolist()
            n_rows, row_len = len(rows_w), rows_w[0]
            seq = seq[~is_eor]
        h0, w0 = self._grid(n_rows, row_len, seq.numel(), grid)
        shapes = [(h0 * self.factors[0] // f, w0 * self.factors[0] // f) for f in self.factors]
        need = sum(h * w for h, w in shapes)
        if seq.numel() != need:
            raise InputError(f"got {seq.numel()} image codes, but grid(s) {shapes} need {need}")
        if rows_w:
            expect = [w for h, w in shapes for _ in range(h)]
            if rows_w != expect:
                raise InputError(f"rows have lengths {sorted(set(rows_w))}, expected {sorted(set(expect))} for grid(s) {shapes}")
        out, pos0 = [], 0
        for (h, w), start, k in zip(shapes, self._starts, self.codebook_sizes):
            part = seq[pos0 : pos0 + h * w] - start
            if part.numel() and (int(part.min()) < 0 or int(part.max()) >= k):
                bad = seq[pos0 : pos0 + h * w][(part < 0) | (part >= k)][:5].tolist()
                raise InputError(f"ids {bad} are not image codes of this level (expected [{start}, {start + k}))")
            out.append(part.reshape(h, w))
            pos0 += h * w
        return tuple(out) if len(out) > 1 else out[0]

    # ------------------------------------------------------------------ Hugging Face tokenizers
    def added_tokens(self, code_format: str = "<|img_{}|>", marker_format: str = "<|img_{}|>") -> list[str]:
        """The token strings to add to a text tokenizer, in id order from ``offset``.

        ``added_tokens()[i]`` must get id ``offset + i``: codes first (``code_format`` with the flat
        code index, e.g. ``<|img_0|>`` ... ``<|img_4095|>``), then the new markers among
        ``<|img_boi|>``, ``<|img_eoi|>``, ``<|img_eor|>`` (``marker_format`` with boi/eoi/eor).
        Markers given as existing ids are not listed.
        """
        return [code_format.format(i) for i in range(self.num_codes)] + [marker_format.format(m) for m in self._new_markers]

    def special_tokens(self, marker_format: str = "<|img_{}|>") -> dict[str, int]:
        """Marker name (as in :meth:`added_tokens`) -> id, for the markers this bridge uses."""
        return {
            marker_format.format(n): v for n, v in zip(_SPECIALS, (self.boi_id, self.eoi_id, self.eor_id)) if v is not None
        }


def extend_hf_tokenizer(
    hf_tokenizer: Any,
    tok: Any,
    *,
    boi: bool = True,
    eoi: bool = True,
    eor: bool = False,
    code_format: str = "<|img_{}|>",
    marker_format: str = "<|img_{}|>",
) -> LLMBridge:
    """Add image tokens to a Hugging Face tokenizer and return the matching bridge.

    Codes are added as ordinary added tokens, new markers as special tokens, starting at
    ``len(hf_tokenizer)``. Afterwards resize the model: ``model.resize_token_embeddings(len(hf_tokenizer))``.

    Args:
        hf_tokenizer: a ``transformers`` tokenizer (anything with ``__len__``, ``add_tokens`` and
            ``convert_tokens_to_ids``).
        tok: an :class:`imagetok.Tokenizer`, or an :class:`LLMBridge`'s source (``codebook_sizes`` and
            ``downsample_factors``).
        boi, eoi, eor: which markers to add.

    Raises:
        InputError: a token string already existed or the ids did not come out contiguous.
    """
    offset = len(hf_tokenizer)
    bridge = LLMBridge.for_tokenizer(tok, offset=offset, boi=boi, eoi=eoi, eor=eor)
    names = bridge.added_tokens(code_format, marker_format)
    codes, markers = names[: bridge.num_codes], names[bridge.num_codes :]
    hf_tokenizer.add_tokens(codes)
    if markers:
        hf_tokenizer.add_tokens(markers, special_tokens=True)
    got = hf_tokenizer.convert_tokens_to_ids(names)
    want = list(range(offset, offset + len(names)))
    if list(got) != want:
        bad = [(n, g, w) for n, g, w in zip(names, got, want) if g != w][:3]
        raise InputError(
            f"image tokens did not get contiguous ids from {offset} (token, got, expected): {bad}; "
            "does the tokenizer already contain some of these strings? pass another code_format"
        )
    return bridge


# ------------------------------------------------------------------ vocabulary remaps (from usage)
# Drop codes a dataset never uses, for a smaller LLM vocabulary (``imagetok usage --remap``).
import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from .usage import DatasetUsage, UsageReport

REMAP_FORMAT = "imagetok-remap/1"


def remap_unused(report: "UsageReport") -> tuple[torch.Tensor, torch.Tensor]:
    """A renumbering that drops codes never used (smaller LLM vocabulary).

    Returns:
        ``(old_to_new, new_to_old)``: int64 ``[K]`` with -1 for dropped codes, and int64
        ``[codes_used]`` (ascending old ids, so the new ids keep the old order).
    """
    counts = torch.tensor(report.counts, dtype=torch.int64)
    new_to_old = torch.nonzero(counts > 0).flatten()
    old_to_new = torch.full((report.codebook_size,), -1, dtype=torch.int64)
    old_to_new[new_to_old] = torch.arange(new_to_old.numel())
    return old_to_new, new_to_old


def apply_remap(tokens: Any, old_to_new: torch.Tensor) -> torch.Tensor:
    """Old ids -> new ids. Raises InputError if a token uses a dropped code."""
    t = _as_long(tokens, "token ids").cpu()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= old_to_new.numel()):
        raise InputError(f"token ids must lie in [0, {old_to_new.numel()})")
    out = old_to_new[t]
    if (out < 0).any():
        dropped = sorted(set(t[out < 0].tolist()))[:10]
        raise InputError(f"tokens use code(s) {dropped} that the remap dropped (unused when it was built)")
    return out


def undo_remap(tokens: Any, new_to_old: torch.Tensor) -> torch.Tensor:
    """New ids -> original ids (for decoding with the unchanged model)."""
    t = _as_long(tokens, "token ids").cpu()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= new_to_old.numel()):
        raise InputError(f"remapped token ids must lie in [0, {new_to_old.numel()})")
    return new_to_old[t]


def save_remap(usage: "DatasetUsage", path: str | os.PathLike) -> Path:
    """Write the remap of every level as JSON: ``{"format", "model", "config_hash", "levels":
    [{"name", "codebook_size", "new_size", "new_to_old"}]}``."""
    levels = []
    for r in usage.levels:
        _, new_to_old = remap_unused(r)
        levels.append({"name": r.name, "codebook_size": r.codebook_size, "new_size": int(new_to_old.numel()),
                       "new_to_old": new_to_old.tolist()})
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"format": REMAP_FORMAT, "model": usage.model, "config_hash": usage.config_hash,
                                   "levels": levels}) + "\n")
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def load_remap(path: str | os.PathLike) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Read :func:`save_remap` output: ``(old_to_new, new_to_old)`` per level."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        if data.get("format") != REMAP_FORMAT:
            raise InputError(f"{p}: not an imagetok remap file (format {data.get('format')!r})")
        out = []
        for lv in data["levels"]:
            new_to_old = torch.tensor(lv["new_to_old"], dtype=torch.int64)
            old_to_new = torch.full((int(lv["codebook_size"]),), -1, dtype=torch.int64)
            old_to_new[new_to_old] = torch.arange(new_to_old.numel())
            out.append((old_to_new, new_to_old))
        return tuple(out)
    except InputError:
        raise
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        raise InputError(f"{p}: not a readable remap file ({e})") from None
