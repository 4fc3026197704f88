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


# ============================================================================ named LLM layouts
# How today's multimodal LLMs place one image's token grid in their id sequence. Each layout is a
# rule taken from the model's own code (cited per class); ``get_layout(name, hf_tokenizer)`` builds
# one, ``Tokenizer.flatten(tokens, layout=name)`` applies it.

_IMG_PREFIX = "IMGIMG"


def _vocab(hf_tokenizer: Any, name: str) -> dict[str, int]:
    if hf_tokenizer is None:
        raise InputError(
            f"layout {name!r} needs the LLM's text tokenizer (its vocabulary holds the image tokens): pass "
            f"hf_tokenizer= a transformers tokenizer of that model, e.g. AutoTokenizer.from_pretrained(...)"
        )
    try:
        vocab = dict(hf_tokenizer.get_vocab())
    except AttributeError:
        raise InputError(f"hf_tokenizer must be a transformers tokenizer (with get_vocab()), got {type(hf_tokenizer).__name__}") from None
    return vocab


def _need(vocab: dict[str, int], token: str, layout: str) -> int:
    if token not in vocab:
        raise InputError(f"layout {layout!r}: the text tokenizer has no {token!r} token; is it the right model's tokenizer?")
    return int(vocab[token])


def _grid_batch(grid: Any, codebook_size: int, name: str) -> tuple[torch.Tensor, bool]:
    t = _as_long(grid, "tokens")
    if t.ndim not in (2, 3) or t.numel() == 0:
        raise InputError(f"layout {name!r} takes one token grid [h, w] or a batch [B, h, w], got shape {tuple(t.shape)}")
    if int(t.min()) < 0 or int(t.max()) >= codebook_size:
        raise InputError(f"token ids must lie in [0, {codebook_size}) for layout {name!r}, got min {int(t.min())}, max {int(t.max())}")
    return (t, True) if t.ndim == 3 else (t[None], False)


class Layout:
    """One LLM's image-id layout: ``to_ids(grid)`` and its inverse ``from_ids(ids)``.

    Attributes:
        name: the layout's name (see :data:`LAYOUTS`).
        codebook_size: image codes it maps (``[0, codebook_size)``).
        source: where the rule comes from.
    """

    name = ""
    source = ""

    def __init__(self, codebook_size: int):
        self.codebook_size = int(codebook_size)

    def to_ids(self, grid: Any) -> torch.Tensor:
        """int token grid ``[h, w]`` (or ``[B, h, w]``) -> int64 ids ``[N]`` (or ``[B, N]``)."""
        t, is_batch = _grid_batch(grid, self.codebook_size, self.name)
        out = torch.stack([self._one(g) for g in t])
        return out if is_batch else out[0]

    def from_ids(self, ids: Any, grid: Sequence[int] | None = None) -> torch.Tensor:
        """int64 ids ``[N]`` (or ``[B, N]``) made by :meth:`to_ids` -> token grid ``[h, w]`` (``[B, h, w]``).

        Args:
            grid: ``(h, w)``, needed only by layouts whose ids do not tell the shape (default: square).
        """
        seq = _as_long(ids, "ids")
        if seq.ndim == 2:
            return torch.stack([self.from_ids(s, grid) for s in seq])
        if seq.ndim != 1:
            raise InputError(f"ids must be [N] or [B, N], got shape {tuple(seq.shape)}")
        return self._back(seq, grid)

    def _one(self, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _back(self, seq: torch.Tensor, grid: Sequence[int] | None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, codebook_size={self.codebook_size})"


def _square(n: int, grid: Sequence[int] | None, name: str) -> tuple[int, int]:
    if grid is not None:
        h, w = (int(v) for v in grid)
        if h * w != n:
            raise InputError(f"layout {name!r}: {n} image ids do not fill grid {h}x{w}")
        return h, w
    side = math.isqrt(n)
    if side * side != n:
        raise InputError(f"layout {name!r}: cannot tell the grid of {n} image ids (not square): pass grid=(h, w)")
    return side, side


class OffsetLayout(Layout):
    """``[boi] offset + c(0,0) ... offset + c(h-1,w-1) [eoi]``, raster order, no end-of-row ids."""

    def __init__(self, codebook_size: int, offset: int, boi: int | None, eoi: int | None):
        super().__init__(codebook_size)
        self.bridge = LLMBridge([codebook_size], offset=offset, boi=False if boi is None else boi, eoi=False if eoi is None else eoi)
        self.offset, self.boi_id, self.eoi_id = offset, boi, eoi

    def _one(self, g: torch.Tensor) -> torch.Tensor:
        return self.bridge.to_llm(g)

    def _back(self, seq: torch.Tensor, grid: Sequence[int] | None) -> torch.Tensor:
        for marker, at in ((self.boi_id, 0), (self.eoi_id, -1)):
            if marker is not None and (seq.numel() == 0 or int(seq[at]) != marker):
                raise InputError(f"layout {self.name!r}: expected id {marker} at position {at}, got {seq[at:].tolist()[:1] if seq.numel() else 'nothing'}")
        n = seq.numel() - (self.boi_id is not None) - (self.eoi_id is not None)
        return self.bridge.from_llm(seq, grid=_square(n, grid, self.name))


class JanusLayout(OffsetLayout):
    """Janus / Janus-Pro: image ids index a *separate* generation vocabulary (``gen_embed`` / ``gen_head``,
    16384 rows), so codes are used as they are: no offset, no markers in the image part. The prompt
    that precedes them ends with the text token ``<begin_of_image>``.

    Source: deepseek-ai/Janus ``janus/models/modeling_vlm.py`` (``gen_embed = nn.Embedding(image_token_size, ...)``),
    ``generation_inference.py`` (``prompt = sft_format + image_start_tag``; 576 generated ids, 24 x 24).
    """

    name = "janus"
    source = "deepseek-ai/Janus janus/models/modeling_vlm.py, generation_inference.py"

    def __init__(self, codebook_size: int = 16384):
        super().__init__(codebook_size, 0, None, None)


class ShowOLayout(OffsetLayout):
    """Show-o / MMaDA: ``<|soi|>  code + len(text_tokenizer) ...  <|eoi|>`` (raster, no end-of-row).

    ``len(text_tokenizer)`` counts the special tokens Show-o adds (``<|soi|>``, ``<|eoi|>``, ``<|t2i|>``...),
    so pass the tokenizer *after* they were added (as Show-o's ``UniversalPrompting`` does).
    Source: showlab/Show-o ``inference_mmu.py`` (``vq_model.get_code(image) + len(uni_prompting.text_tokenizer)``),
    ``training/prompting_utils.py`` (``[task] [sot] text [eot] [soi] image [eoi]``).
    """

    name = "show-o"
    source = "showlab/Show-o inference_mmu.py L96, training/prompting_utils.py"
    markers = ("<|soi|>", "<|eoi|>")

    def __init__(self, codebook_size: int = 8192, hf_tokenizer: Any = None):
        vocab = _vocab(hf_tokenizer, self.name)
        boi, eoi = (_need(vocab, t, self.name) for t in self.markers)
        super().__init__(codebook_size, len(hf_tokenizer), boi, eoi)


class LiquidLayout(ShowOLayout):
    """Liquid: the 8192 Chameleon-VQGAN codes are new rows after the LLM's vocabulary
    (``resize_token_embeddings(ori_vocab + 8192)``): ``<boi>  code + len(tokenizer) ...  <eoi>``.

    Source: FoundationVision/Liquid ``liquid/train/train.py`` (``vqcode + len(self.tokenizer)`` placed between
    ``<boi>`` and ``<eoi>``), ``liquid/expand_vocabulary.py``, ``evaluation/T2I_Eval/mjhq_generation.py``.
    """

    name = "liquid"
    source = "FoundationVision/Liquid liquid/train/train.py, liquid/expand_vocabulary.py"
    markers = ("<boi>", "<eoi>")


def _chameleon_table(vocab: dict[str, int], codebook_size: int, name: str) -> torch.Tensor:
    """code -> BPE id from the vocabulary's ``IMGIMG...`` tokens (digits written as letters A-J, one
    trailing character), as ``chameleon/inference/vocab.py`` ``VocabTranslation.bpe2img`` reads them."""
    letters = {chr(ord("A") + i): str(i) for i in range(10)}
    table = torch.full((codebook_size,), -1, dtype=torch.long)
    for tok, i in vocab.items():
        if tok.startswith(_IMG_PREFIX):
            digits = "".join(letters.get(ch, ch) for ch in tok[len(_IMG_PREFIX) : -1])
            if digits.isdigit() and int(digits) < codebook_size:
                table[int(digits)] = int(i)
    missing = (table < 0).nonzero().flatten()
    if missing.numel():
        raise InputError(
            f"layout {name!r}: the text tokenizer has no {_IMG_PREFIX}... token for {missing.numel()} of {codebook_size} "
            f"image codes (e.g. code {int(missing[0])}); is it Chameleon's / Anole's / Lumina-mGPT's tokenizer?"
        )
    return table


class _TableLayout(Layout):
    def __init__(self, codebook_size: int, hf_tokenizer: Any):
        super().__init__(codebook_size)
        vocab = _vocab(hf_tokenizer, self.name)
        self.table = _chameleon_table(vocab, codebook_size, self.name)
        self.boi_id, self.eoi_id = _need(vocab, "<racm3:break>", self.name), _need(vocab, "<eoss>", self.name)
        order = torch.argsort(self.table)
        self._sorted_ids, self._sorted_codes = self.table[order], order
        self.vocab = vocab

    def _codes(self, ids: torch.Tensor) -> torch.Tensor:
        """BPE ids -> codes (InputError for ids that are not image tokens)."""
        pos = torch.searchsorted(self._sorted_ids, ids).clamp(max=self.codebook_size - 1)
        bad = self._sorted_ids[pos] != ids
        if bool(bad.any()):
            raise InputError(f"layout {self.name!r}: ids {ids[bad][:5].tolist()} are not image tokens")
        return self._sorted_codes[pos]

    def _strip(self, seq: torch.Tensor) -> torch.Tensor:
        if seq.numel() < 2 or int(seq[0]) != self.boi_id or int(seq[-1]) != self.eoi_id:
            raise InputError(f"layout {self.name!r}: ids must start with <racm3:break> ({self.boi_id}) and end with <eoss> ({self.eoi_id})")
        return seq[1:-1]


class ChameleonLayout(_TableLayout):
    """Chameleon / Anole: ``<racm3:break>  table[c(0,0)] ... table[c(h-1,w-1)]  <eoss>``, where ``table``
    maps each of the 8192 codes to its BPE token ``IMGIMG<code, digits as letters A-J><one char>``
    (a lookup table, not an offset). Raster order, no end-of-row ids (Chameleon: 32 x 32 at 512 px).

    Source: facebookresearch/chameleon ``chameleon/inference/vocab.py`` (``begin_image = <racm3:break>``,
    ``end_image = <eoss>``, ``VocabTranslation.bpe2img`` / ``img2bpe``), ``chameleon/inference/chameleon.py``.
    """

    name = "chameleon"
    source = "facebookresearch/chameleon chameleon/inference/vocab.py, chameleon/inference/chameleon.py"

    def _one(self, g: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.tensor([self.boi_id]), self.table[g.flatten()], torch.tensor([self.eoi_id])])

    def _back(self, seq: torch.Tensor, grid: Sequence[int] | None) -> torch.Tensor:
        body = self._strip(seq)
        h, w = _square(body.numel(), grid, self.name)
        return self._codes(body).view(h, w)


class LuminaMGPTLayout(_TableLayout):
    """Lumina-mGPT: Chameleon's table plus the grid size and a newline after every row::

        <racm3:break> <reserved{8800 + h/2}> <reserved{8800 + w/2}>  (row + <reserved08799>) x h  <eoss>

    The size tokens count 32-px patches (2 tokens each), so ``h`` and ``w`` must be even.
    Source: Alpha-VLLM/Lumina-mGPT ``lumina_mgpt/data/item_processor.py`` (``process_image``,
    ``get_n_grids_token``, ``new_line_token = "<reserved08799>"``, ``patch_size = 32``, ``decode_image``).
    """

    name = "lumina-mgpt"
    source = "Alpha-VLLM/Lumina-mGPT lumina_mgpt/data/item_processor.py"
    newline = "<reserved08799>"

    def __init__(self, codebook_size: int, hf_tokenizer: Any):
        super().__init__(codebook_size, hf_tokenizer)
        self.newline_id = _need(self.vocab, self.newline, self.name)
        self._size_of = {int(i): int(t[len("<reserved") : -1]) - 8800 for t, i in self.vocab.items()
                         if t.startswith("<reserved") and t.endswith(">") and t[9:-1].isdigit() and int(t[9:-1]) > 8800}  # fmt: skip

    @staticmethod
    def grid_token(n_patches: int) -> str:
        return f"<reserved{8800 + n_patches:05d}>"

    def _one(self, g: torch.Tensor) -> torch.Tensor:
        h, w = g.shape
        if h % 2 or w % 2:
            raise InputError(f"layout 'lumina-mgpt' needs an even token grid (its size tokens count 32-px patches), got {h}x{w}")
        rows = torch.cat([self.table[g], torch.full((h, 1), self.newline_id)], 1).flatten()
        head = [self.boi_id, _need(self.vocab, self.grid_token(h // 2), self.name), _need(self.vocab, self.grid_token(w // 2), self.name)]
        return torch.cat([torch.tensor(head), rows, torch.tensor([self.eoi_id])])

    def _back(self, seq: torch.Tensor, grid: Sequence[int] | None) -> torch.Tensor:
        body = self._strip(seq)
        if body.numel() < 2 or int(body[0]) not in self._size_of or int(body[1]) not in self._size_of:
            raise InputError("layout 'lumina-mgpt': expected two grid-size tokens <reserved08801>... after <racm3:break>")
        h, w = 2 * self._size_of[int(body[0])], 2 * self._size_of[int(body[1])]
        rows = body[2:]
        if rows.numel() != h * (w + 1) or bool((rows.view(h, w + 1)[:, -1] != self.newline_id).any()):
            raise InputError(f"layout 'lumina-mgpt': expected {h} rows of {w} ids each followed by <reserved08799>")
        return self._codes(rows.view(h, w + 1)[:, :-1].flatten()).view(h, w)


class Emu3Layout(Layout):
    """Emu3: visual tokens are the text tokens ``<|visual token NNNNNN|>`` (special tokens, one id each)::

        <|image start|> "{h}*{w}" <|image token|>  (row + <|extra_200|>) x h  <|extra_201|> <|image end|>

    ``"{h}*{w}"`` is ordinary text, tokenized by the given tokenizer; ``<|extra_200|>`` ends every row
    (the last too), ``<|extra_201|>`` ends the frame. Source: baaivision/Emu3 ``emu3/mllm/processing_emu3.py``
    (``prefix_template "{H}*{W}"``, ``visual_template``, ``to_imgstr``, the understanding prompt) and
    ``emu3/mllm/tokenization_emu3.py`` (``boi/img/eol/eof/eoi`` token names); token count confirmed by the
    maintainers in baaivision/Emu3#73.
    """

    name = "emu3"
    source = "baaivision/Emu3 emu3/mllm/processing_emu3.py L160-175, emu3/mllm/tokenization_emu3.py L65-72"
    specials = ("<|image start|>", "<|image token|>", "<|extra_200|>", "<|extra_201|>", "<|image end|>")

    def __init__(self, codebook_size: int, hf_tokenizer: Any):
        super().__init__(codebook_size)
        vocab = _vocab(hf_tokenizer, self.name)
        self.hf_tokenizer = hf_tokenizer
        self.boi_id, self.img_id, self.eol_id, self.eof_id, self.eoi_id = (_need(vocab, t, self.name) for t in self.specials)
        table = torch.full((codebook_size,), -1, dtype=torch.long)
        for i in range(codebook_size):
            tid = vocab.get(f"<|visual token {i:06d}|>")
            if tid is None:
                raise InputError(f"layout 'emu3': the text tokenizer has no '<|visual token {i:06d}|>' (need {codebook_size} visual tokens)")
            table[i] = int(tid)
        self.table = table
        self._inverse = {int(t): i for i, t in enumerate(table.tolist())}

    def _prefix(self, h: int, w: int) -> list[int]:
        return list(self.hf_tokenizer.encode(f"{h}*{w}", add_special_tokens=False))

    def _one(self, g: torch.Tensor) -> torch.Tensor:
        h, w = g.shape
        rows = torch.cat([self.table[g], torch.full((h, 1), self.eol_id)], 1).flatten()
        head = torch.tensor([self.boi_id, *self._prefix(h, w), self.img_id])
        return torch.cat([head, rows, torch.tensor([self.eof_id, self.eoi_id])])

    def _back(self, seq: torch.Tensor, grid: Sequence[int] | None) -> torch.Tensor:
        s = seq.tolist()
        if len(s) < 4 or s[0] != self.boi_id or s[-2:] != [self.eof_id, self.eoi_id] or self.img_id not in s:
            raise InputError("layout 'emu3': ids must be <|image start|> H*W <|image token|> rows <|extra_201|> <|image end|>")
        k = s.index(self.img_id)
        text = "".join(str(self.hf_tokenizer.decode(s[1:k])).split())
        hw = text.split("*")
        if len(hw) != 2 or not all(v.isdigit() for v in hw):
            raise InputError(f"layout 'emu3': expected an 'H*W' prefix, got {text!r}")
        h, w = int(hw[0]), int(hw[1])
        body = torch.tensor(s[k + 1 : -2], dtype=torch.long)
        if body.numel() != h * (w + 1) or bool((body.view(h, w + 1)[:, -1] != self.eol_id).any()):
            raise InputError(f"layout 'emu3': expected {h} rows of {w} visual tokens each followed by <|extra_200|>")
        try:
            return torch.tensor([self._inverse[int(t)] for t in body.view(h, w + 1)[:, :-1].flatten()]).view(h, w)
        except KeyError as e:
            raise InputError(f"layout 'emu3': id {e.args[0]} is not a visual token") from None


LAYOUTS: dict[str, type[Layout]] = {
    c.name: c for c in (ChameleonLayout, LuminaMGPTLayout, Emu3Layout, JanusLayout, ShowOLayout, LiquidLayout)
}
"""Layout name -> class. Defaults: ``codebook_size`` of the tokenizer each LLM uses."""
_DEFAULT_CODES = {"chameleon": 8192, "lumina-mgpt": 8192, "emu3": 32768, "janus": 16384, "show-o": 8192, "liquid": 8192}


def get_layout(name: str, hf_tokenizer: Any = None, *, codebook_size: int | None = None) -> Layout:
    """The named LLM layout, ready to map token grids to LLM ids (``to_ids``) and back (``from_ids``).

    Args:
        name: one of :data:`LAYOUTS`: ``chameleon``, ``lumina-mgpt``, ``emu3``, ``janus``, ``show-o``, ``liquid``.
        hf_tokenizer: the LLM's transformers text tokenizer; needed by every layout but ``janus``
            (its vocabulary holds the image tokens, markers, or sets the offset).
        codebook_size: image codes to map (default: the size of the tokenizer that LLM uses).

    Raises:
        InputError: unknown name, missing or unsuitable text tokenizer.
    """
    if name not in LAYOUTS:
        raise InputError(f"unknown layout {name!r}; choose one of {sorted(LAYOUTS)}")
    k = int(codebook_size if codebook_size is not None else _DEFAULT_CODES[name])
    if k < 1:
        raise InputError(f"codebook_size must be >= 1, got {k}")
    if name == "janus":
        return JanusLayout(k)
    if name in ("show-o", "liquid"):
        return LAYOUTS[name](k, hf_tokenizer=hf_tokenizer)  # type: ignore[call-arg]
    return LAYOUTS[name](k, hf_tokenizer)  # type: ignore[call-arg]


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
