"""A small classifier over token grids, for rejection sampling (VQ-VAE-2's recipe, on tokens instead of pixels).

>>> clf = TokenClassifier.fit("tokens-labelled/", steps=300)        # a labelled token dataset
>>> tokens = prior.sample(16, accept=clf.acceptor("red", 0.9), max_tries=20)

Per level: token embedding, two 3x3 conv layers, global mean pool; the pooled features of all
levels are concatenated and mapped to class logits. Stored like a prior: ``config.json`` +
``model.safetensors``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InputError
from .data import load_token_data

FORMAT = "imagetok-token-classifier"


class _LevelNet(nn.Module):
    def __init__(self, vocab: int, width: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = self.embedding(t).permute(0, 3, 1, 2)
        x = x + self.conv2(F.gelu(self.conv1(F.gelu(x))))
        return x.mean(dim=(2, 3))


class TokenClassifier(nn.Module):
    """Class probabilities of token grids (``[B, h, w]``, or a ``(top, bottom)`` tuple).

    Args:
        codebook_sizes: per level. num_classes: >= 2. classes: names (index = label id).
        tokenizer_hash: config hash of the tokenizer whose tokens it classifies (recorded only).
    """

    def __init__(self, codebook_sizes: Sequence[int], num_classes: int, *, width: int = 64, classes: Sequence[str] = (),
                 tokenizer_hash: str = ""):  # fmt: skip
        super().__init__()
        if num_classes < 2 or (classes and len(classes) != num_classes) or not 1 <= width <= 4096:
            raise ConfigError(f"a token classifier needs >= 2 classes (and one name per class) and 1 <= width <= 4096; "
                              f"got {num_classes} classes, names {list(classes)}, width {width}")  # fmt: skip
        self.codebook_sizes, self.num_classes, self.width = tuple(codebook_sizes), num_classes, width
        self.classes, self.tokenizer_hash = tuple(classes), tokenizer_hash
        self.levels = nn.ModuleList(_LevelNet(k, width) for k in self.codebook_sizes)
        self.head = nn.Linear(width * len(self.codebook_sizes), num_classes)

    def _check(self, tokens: Any) -> list[torch.Tensor]:
        parts = list(tokens) if isinstance(tokens, (tuple, list)) else [tokens]
        if len(parts) != len(self.codebook_sizes):
            raise InputError(f"this classifier takes {len(self.codebook_sizes)} token level(s), got {len(parts)}")
        out = []
        for t, k in zip(parts, self.codebook_sizes):
            t = torch.as_tensor(t)
            if t.is_floating_point() or t.ndim != 3:
                raise InputError(f"tokens must be integer [B, h, w] grids, got {t.dtype} {tuple(t.shape)}")
            if int(t.min()) < 0 or int(t.max()) >= k:
                raise InputError(f"token ids must be in [0, {k}), got min {int(t.min())}, max {int(t.max())}")
            out.append(t.long().to(self.head.weight.device))
        return out

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """int64 ``[B, h, w]`` per level -> float ``[B, num_classes]`` logits."""
        return self.head(torch.cat([net(t) for net, t in zip(self.levels, levels)], 1))

    @torch.inference_mode()
    def predict_proba(self, tokens: Any) -> torch.Tensor:
        """float ``[B, num_classes]`` class probabilities (rows sum to 1)."""
        self.eval()
        return self(self._check(tokens)).softmax(-1).cpu()

    def label_id(self, label: int | str) -> int:
        if isinstance(label, str) and label in self.classes:
            return self.classes.index(label)
        if isinstance(label, str) and not label.isdigit():
            raise InputError(f"unknown class {label!r}; known classes: {list(self.classes)}")
        i = int(label)
        if not 0 <= i < self.num_classes:
            raise InputError(f"class id {i} is out of range [0, {self.num_classes})")
        return i

    def acceptor(self, label: int | str, threshold: float = 0.5) -> Callable[[Any], torch.Tensor]:
        """``accept`` for :meth:`Prior.sample`: keep samples with ``P(label | tokens) >= threshold``."""
        i = self.label_id(label)
        if not 0 <= threshold <= 1:
            raise InputError(f"threshold must be in [0, 1], got {threshold}")
        return lambda tokens: self.predict_proba(tokens)[:, i] >= threshold

    # ------------------------------------------------------------------------- training
    @classmethod
    def fit(cls, data: Any, *, steps: int = 300, width: int = 64, batch_size: int = 32, lr: float = 3e-3,
            weight_decay: float = 1e-4, seed: int = 0) -> "TokenClassifier":  # fmt: skip
        """Train on a labelled token dataset (a ``tokenize-dataset`` folder with a ``label`` column, or
        :class:`~imagetok.prior.data.TokenData` with labels). Batches are drawn from ``(seed, step)``."""
        data = load_token_data(data)
        if data.labels is None:
            raise InputError("the token data has no labels ('label' column); a classifier needs them")
        tok_hash = (data.tokenizer or {}).get("config_hash") or ""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clf = cls(data.codebook_sizes, max(data.num_classes, 2), width=width, classes=data.classes or (), tokenizer_hash=tok_hash)
        opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)
        clf.train()
        for step in range(steps):
            idx = torch.from_numpy(np.random.default_rng([seed, step]).integers(len(data), size=batch_size))
            loss = F.cross_entropy(clf(list(data.levels(idx))), data.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return clf.eval()

    def accuracy(self, data: Any) -> float:
        """Share of rows of a labelled token dataset whose most likely class is their label."""
        data = load_token_data(data)
        if data.labels is None:
            raise InputError("the token data has no labels")
        pred = self.predict_proba(data.levels()).argmax(-1)
        return float((pred == data.labels).double().mean())

    # -------------------------------------------------------------------------- storage
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically (:func:`imagetok.serialization.save_folder`)."""
        from ..serialization import save_folder

        cfg = {"format": FORMAT, "codebook_sizes": list(self.codebook_sizes), "num_classes": self.num_classes,
               "width": self.width, "classes": list(self.classes), "tokenizer_hash": self.tokenizer_hash}  # fmt: skip
        return save_folder(directory, cfg, {k: v.detach().float() for k, v in self.state_dict().items()})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "TokenClassifier":
        """Load a folder written by :meth:`save_pretrained` (strict, header-checked)."""
        from ..serialization import load_folder

        def parse(cfg: dict) -> dict:
            if cfg.get("format") != FORMAT:
                raise ConfigError(f"not an imagetok token classifier (format {cfg.get('format')!r}, expected {FORMAT!r})")
            missing = [k for k in ("codebook_sizes", "num_classes", "width") if k not in cfg]
            if missing:
                raise ConfigError(f"missing key(s) {missing}")
            return cfg

        def build(cfg: dict) -> "TokenClassifier":
            try:
                return cls(cfg["codebook_sizes"], cfg["num_classes"], width=cfg["width"], classes=cfg.get("classes", ()),
                           tokenizer_hash=cfg.get("tokenizer_hash", ""))  # fmt: skip
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{directory}/config.json: malformed value ({e})") from None

        return load_folder(directory, parse_config=parse, build=build, to_dict=lambda c: c).model.eval()
