"""``Prior``: the front door of stage 2. Token grids in, likelihoods out; samples out, for ``decode``.

>>> prior = Prior.from_pretrained("runs/prior/prior")      # folder or Hub id
>>> tokens = prior.sample(8, label="red", top_k=100, cfg=2.0, generator=0)
>>> images = prior.load_tokenizer().decode(tokens)         # what Tokenizer.encode returns, so decode works
>>> prior.log_prob(tokens, label="red")                   # float64 [8], nats
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import config_hash
from ..errors import InputError, UnknownModelError
from . import sampling
from .config import PriorConfig
from .pixelcnn import GatedPixelCNN
from .transformer import TransformerPrior
from .vqvae2 import TwoLevelPrior

CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"
Tokens = Any  # int64 [B, h, w], or a (top, bottom) tuple of them


def build_prior_model(cfg: PriorConfig) -> torch.nn.Module:
    """The ``nn.Module`` for a config (random weights)."""
    if cfg.arch == "transformer":
        return TransformerPrior(cfg.codebook_sizes[0], cfg.seq_lens[0], cfg.width, cfg.depth, cfg.heads, cfg.dropout, cfg.num_classes)
    if cfg.arch == "pixelcnn":
        return GatedPixelCNN(cfg.codebook_sizes[0], cfg.grid_shapes[0], cfg.width, cfg.depth, cfg.kernel, cfg.num_classes)
    return TwoLevelPrior(cfg.codebook_sizes, cfg.grid_shapes, cfg.width, cfg.depth, cfg.heads, cfg.dropout, cfg.num_classes)


def model_logits(model: torch.nn.Module, arch: str, levels: Sequence[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Next-token logits of ``[B, h, w]`` levels under ``model`` (or its DDP wrapper): float ``[B, h*w, K]`` per level."""
    if arch == "transformer":
        return (model(levels[0].flatten(1), labels),)
    if arch == "pixelcnn":
        return (model(levels[0], labels),)
    return tuple(model(levels[0], levels[1], labels))


def model_nll(model: torch.nn.Module, arch: str, levels: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per sample summed over all tokens (nats), float ``[B]``, differentiable."""
    total = 0
    for lg, t in zip(model_logits(model, arch, levels, labels), levels):
        total = total + F.cross_entropy(lg.float().transpose(1, 2), t.flatten(1), reduction="none").sum(1)
    return total


def _push_folder(folder: Path, repo_id: str, *, token: str | None = None, branch: str | None = None,
                 private: bool | None = None, commit_message: str | None = None) -> str:  # fmt: skip
    """Upload a saved prior folder to a Hub model repo; returns the commit URL."""
    from .. import hub

    hub._hf()
    api = hub._api(token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if branch:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=branch,
                                 commit_message=commit_message or "Upload imagetok prior")  # fmt: skip
    except Exception as e:
        raise hub.HubError(f"pushing to Hub repo {repo_id!r} failed: {hub._first_line(e)}") from None
    return str(info.commit_url if hasattr(info, "commit_url") else info)


class Prior:
    """A stage-2 prior over a tokenizer's token grids (transformer, gated PixelCNN, or two-level).

    Attributes:
        model: the ``nn.Module`` (:mod:`~imagetok.prior.transformer`, :mod:`~imagetok.prior.pixelcnn`,
            :mod:`~imagetok.prior.vqvae2`).
        config: its :class:`~imagetok.prior.config.PriorConfig`.
        name: the folder or Hub id it was loaded from, or None.
    """

    def __init__(self, model: torch.nn.Module, config: PriorConfig, *, name: str | None = None):
        self.model = model.eval()
        self.config = config
        self.name = name

    # ----------------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, config: PriorConfig | dict, *, seed: int | None = None) -> "Prior":
        """A prior with random weights (``seed`` makes them reproducible)."""
        cfg = config if isinstance(config, PriorConfig) else PriorConfig.from_dict(config)
        if seed is None:
            return cls(build_prior_model(cfg), cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(build_prior_model(cfg), cfg)

    @classmethod
    def from_pretrained(cls, name: str | os.PathLike, *, device: str | torch.device = "cpu", revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None) -> "Prior":  # fmt: skip
        """Load a prior folder (``config.json`` + ``model.safetensors``) or a Hub repo id.

        Raises:
            ConfigError, WeightsError: files missing, malformed or not matching.
            HubError, UnknownModelError: see :func:`imagetok.hub.resolve`.
        """
        from .. import hub, registry, serialization

        ref = registry.parse_name(name)
        if ref.kind == "manifest":  # the manifest lists tokenizers only
            raise UnknownModelError(f"{name!r} names a tokenizer in the weights manifest, not a prior: pass a prior "
                                    "folder or the Hub repo id of one ('hf-hub:org/name[@revision]')")  # fmt: skip
        folder = hub.resolve(ref, revision=revision, cache_dir=cache_dir)
        loaded = serialization.load_folder(folder, parse_config=PriorConfig.from_dict, build=build_prior_model,
                                           to_dict=lambda c: c.to_dict())  # fmt: skip
        return cls(loaded.model.to(device), loaded.config, name=str(name))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``README.md`` into ``directory``.

        Written atomically by :func:`imagetok.serialization.save_folder` (a temporary folder first;
        config.json last), so a crash never leaves a half-written prior. Returns the directory path.
        """
        from ..serialization import save_folder

        state = {k: v.detach().float() for k, v in self.model.state_dict().items()}
        return save_folder(directory, self.config.to_dict(), state, card=self._card(),
                           metadata={"imagetok_prior_arch": self.config.arch})  # fmt: skip

    def _card(self) -> str:
        c = self.config
        n = sum(p.numel() for p in self.model.parameters())
        classes = ", ".join(c.classes) if c.classes else (f"{c.num_classes} ids" if c.num_classes else "none (unconditional)")
        return (
            f"---\nlibrary_name: imagetok\ntags: [imagetok, image-tokenizer-prior]\n---\n\n# imagetok prior ({c.arch})\n\n"
            f"A stage-2 prior over the tokens of tokenizer `{c.tokenizer}` (config hash `{c.tokenizer_hash}`): "
            f"grid {[list(g) for g in c.grid_shapes]}, codebooks {list(c.codebook_sizes)}, {n:,} parameters, "
            f"classes: {classes}.\n\n```python\nfrom imagetok import Prior\nprior = Prior.from_pretrained(\"DIR_OR_HUB_ID\")\n"
            "tokens = prior.sample(4)\nimages = prior.load_tokenizer().decode(tokens)\n```\n"
        )

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload this prior (config.json, model.safetensors, README.md); kwargs: token, branch, private,
        commit_message. Returns the commit URL."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="imagetok-prior-") as tmp:
            return _push_folder(self.save_pretrained(Path(tmp) / "prior"), repo_id, **kwargs)

    # --------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "Prior":
        self.model.to(device)
        return self

    @property
    def classes(self) -> tuple[str, ...]:
        return self.config.classes

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def grid_shapes(self) -> tuple[tuple[int, int], ...]:
        return self.config.grid_shapes

    def __repr__(self) -> str:
        c = self.config
        return f"Prior(arch={c.arch!r}, grid={[list(g) for g in c.grid_shapes]}, codebooks={list(c.codebook_sizes)}, classes={c.num_classes}, tokenizer={c.tokenizer!r})"

    # ----------------------------------------------------------------------------- checks
    def label_ids(self, label: Any, n: int) -> torch.Tensor | None:
        """A class name, id, or a list of ``n`` of them -> int64 ``[n]`` ids; None stays None.

        Raises:
            InputError: the prior is unconditional, the name is unknown (lists the known ones) or the id
                is out of range.
        """
        if label is None:
            return None
        if self.num_classes == 0:
            raise InputError("this prior is unconditional (trained without labels); pass label=None")
        if isinstance(label, (torch.Tensor, np.ndarray)):
            label = label.tolist()
        items = list(label) if isinstance(label, (list, tuple)) else [label] * n
        if len(items) != n:
            raise InputError(f"got {len(items)} labels for {n} samples")
        out = []
        for item in items:
            if isinstance(item, str):
                if item in self.classes:
                    out.append(self.classes.index(item))
                    continue
                if item.isdigit():
                    item = int(item)
                else:
                    known = list(self.classes) or f"ids 0..{self.num_classes - 1} (this prior has no class names)"
                    raise InputError(f"unknown class {item!r}; known classes: {known}")
            if isinstance(item, (bool, float)) or not isinstance(item, (int, np.integer)):
                raise InputError(f"a label must be a class name or an int id, got {item!r}")
            if not 0 <= int(item) < self.num_classes:
                raise InputError(f"class id {int(item)} is out of range [0, {self.num_classes}); known classes: {list(self.classes)}")
            out.append(int(item))
        return torch.tensor(out, dtype=torch.long)

    def check_tokens(self, tokens: Tokens) -> tuple[tuple[torch.Tensor, ...], bool]:
        """Validate tokens for this prior: one ``[B, h, w]`` int64 tensor per level, and is_batch.

        Raises:
            InputError: wrong type or level count, ids outside the codebook, or a grid other than the
                prior's (the message names the expected shape).
        """
        n_levels = len(self.config.codebook_sizes)
        parts = list(tokens) if isinstance(tokens, (tuple, list)) else [tokens]
        if len(parts) != n_levels:
            raise InputError(f"this {self.config.arch} prior takes {n_levels} token level(s)"
                             f"{' (top, bottom)' if n_levels == 2 else ''}, got {len(parts)}")  # fmt: skip
        out = []
        for t, k, shape in zip(parts, self.config.codebook_sizes, self.grid_shapes):
            if isinstance(t, np.ndarray):
                t = torch.from_numpy(t)
            if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise InputError(f"tokens must be integer tensors, got {getattr(t, 'dtype', type(t).__name__)}")
            if t.ndim not in (2, 3) or tuple(t.shape[-2:]) != shape:
                raise InputError(f"this prior models token grids of shape {list(shape)} ([B, {shape[0]}, {shape[1]}]); got {list(t.shape)}")
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
                raise InputError(f"token ids must be in [0, {k}) for this prior's codebook of size {k}; got min {int(t.min())}, max {int(t.max())}")
            out.append(t.long())
        if len({t.ndim for t in out}) > 1:
            raise InputError("all token levels must be single grids or all batches")
        is_batch = out[0].ndim == 3
        out = [t if is_batch else t[None] for t in out]
        if len({t.shape[0] for t in out}) > 1:
            raise InputError(f"token levels have different batch sizes {[t.shape[0] for t in out]}")
        return tuple(out), is_batch

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Refuse a tokenizer (a :class:`~imagetok.Tokenizer`, or a dataset's tokenizer info dict)
        other than the one this prior was trained for. A prior trained on bare tensors checks nothing.

        Raises:
            InputError: the tokenizer's config hash differs (the message names both tokenizers).
        """
        if not self.config.tokenizer_hash:
            return
        if isinstance(tokenizer, dict):
            name, h = tokenizer.get("name"), tokenizer.get("config_hash")
        else:
            name, h = getattr(tokenizer, "name", None), config_hash(tokenizer.config)
        if h != self.config.tokenizer_hash:
            raise InputError(
                f"these tokens come from tokenizer {name!r} (config hash {h}), but this prior was trained on tokens of "
                f"{self.config.tokenizer!r} (config hash {self.config.tokenizer_hash}); token ids of different "
                "tokenizers do not mean the same thing"
            )

    def load_tokenizer(self, **kwargs: Any) -> Any:
        """The tokenizer named in the config (``Tokenizer.from_pretrained(config.tokenizer)``), checked
        against the recorded config hash."""
        from ..tokenizer import Tokenizer

        if not self.config.tokenizer:
            raise InputError("this prior's config names no tokenizer; load it yourself with Tokenizer.from_pretrained")
        tok = Tokenizer.from_pretrained(self.config.tokenizer, **kwargs)
        self.check_tokenizer(tok)
        return tok

    # --------------------------------------------------------------------------- likelihood
    def _labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor:
        """Class ids, or the null class (unconditional / start token) where None."""
        if labels is None:
            return torch.full((n,), self.num_classes, dtype=torch.long, device=self.device)
        return labels.to(self.device)

    def logits(self, levels: Sequence[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Next-token logits of checked ``[B, h, w]`` levels: one float ``[B, h*w, K]`` per level."""
        return model_logits(self.model, self.config.arch, [t.to(self.device) for t in levels], labels)

    def _nll(self, levels: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        return model_nll(self.model, self.config.arch, [t.to(self.device) for t in levels], labels)

    def log_prob(self, tokens: Tokens, label: Any = None) -> torch.Tensor:
        """log p(tokens | label) in nats: float64 ``[B]`` for a batch, a 0-d tensor for one grid.

        Args:
            tokens: what ``Tokenizer.encode`` returns (``[h, w]`` / ``[B, h, w]``; a tuple for VQ-VAE-2).
            label: class name or id (or a list of B), or None: the unconditional (null-class) model.
        """
        levels, is_batch = self.check_tokens(tokens)
        labels = self._labels(self.label_ids(label, levels[0].shape[0]), levels[0].shape[0])
        with torch.inference_mode():
            lp = -self._nll(levels, labels).double().cpu()
        return lp if is_batch else lp[0]

    def bits_per_token(self, data: Any, *, batch_size: int = 64, use_labels: bool = True) -> float:
        """Mean negative log2-likelihood per token over a dataset.

        Args:
            data: a ``tokenize-dataset`` folder, a :class:`~imagetok.prior.data.TokenData`, or the
                tokens of a batch (``[N, h, w]`` / tuple).
            use_labels: condition on the dataset's labels when it has them and the prior is conditional.

        Raises:
            InputError: tokens of another tokenizer (by config hash), or of another grid or codebook.
        """
        from .data import TokenData, load_token_data

        if isinstance(data, (str, os.PathLike, TokenData)):
            data = load_token_data(data)
            if data.tokenizer and data.tokenizer.get("config_hash"):
                self.check_tokenizer(data.tokenizer)
            levels, _ = self.check_tokens(data.levels())
            labels = data.labels if use_labels and self.num_classes else None
            if labels is not None:
                if data.classes and self.classes and tuple(data.classes) != self.classes:
                    raise InputError(f"the data's classes {list(data.classes)} are not this prior's {list(self.classes)}")
                if len(labels) and int(labels.max()) >= self.num_classes:
                    raise InputError(f"label {int(labels.max())} is out of range for this prior's {self.num_classes} classes")
        else:
            levels, _ = self.check_tokens(data)
            labels = None
        n = levels[0].shape[0]
        total = 0.0
        with torch.inference_mode():
            for i in range(0, n, batch_size):
                lab = self._labels(None if labels is None else labels[i : i + batch_size], min(batch_size, n - i))
                total += float(self._nll([t[i : i + batch_size] for t in levels], lab).double().sum())
        return total / (n * sum(self.config.seq_lens)) / float(np.log(2))

    # ----------------------------------------------------------------------------- sampling
    def sample(
        self,
        n: int = 1,
        *,
        label: Any = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg: float | None = None,
        generator: torch.Generator | int | None = None,
        batch_size: int | None = None,
        accept: Callable[[Tokens], Any] | None = None,
        max_tries: int = 10,
        use_cache: bool = True,
    ) -> Tokens:
        """Draw ``n`` token grids: int64 ``[n, h, w]`` (a ``(top, bottom)`` tuple for VQ-VAE-2), i.e.
        what ``Tokenizer.encode`` returns for a batch, so ``tokenizer.decode(prior.sample(...))`` works.

        Args:
            label: class name or id (or a list of ``n``); None samples unconditionally (the null class
                of a conditional prior).
            temperature: logits are divided by it; 0 picks the most likely token.
            top_k: keep the k most likely tokens. top_p: keep the smallest set reaching this probability.
            cfg: classifier-free guidance scale (needs a label; 1 or None = off); logits become
                ``null + cfg * (cond - null)``.
            generator: an int seed (sample ``i`` then depends only on the seed and ``i``, not on the
                batch size) or a ``torch.Generator`` (drawn in order); None uses torch's global RNG.
            batch_size: samples per forward batch (default all ``n``).
            accept: rejection sampling: called on each sampled batch (tokens as returned here; decode
                inside to judge images), returns a bool per sample; only accepted samples are kept.
            max_tries: with ``accept``, how many batches to draw before giving up.
            use_cache: KV cache for transformers (False recomputes the whole prefix every step; same tokens).

        Raises:
            InputError: bad options, unknown class, or fewer than ``n`` accepted samples after ``max_tries``.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InputError(f"n must be a positive int, got {n!r}")
        if not (isinstance(temperature, (int, float)) and temperature >= 0):
            raise InputError(f"temperature must be >= 0, got {temperature!r}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise InputError(f"top_k must be a positive int, got {top_k!r}")
        if top_p is not None and not 0 < top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {top_p!r}")
        if cfg is not None and cfg != 1.0:
            if label is None:
                raise InputError("classifier-free guidance (cfg) needs a label to guide towards")
        else:
            cfg = None
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if max_tries < 1:
            raise InputError(f"max_tries must be >= 1, got {max_tries}")
        labels = self.label_ids(label, n)
        if accept is not None and labels is not None and len(set(labels.tolist())) > 1:
            raise InputError("rejection sampling takes one label for all samples; call sample() once per class")
        batch_size = batch_size or n
        kept: list[tuple[torch.Tensor, ...]] = []
        count, index, tries = 0, 0, 0
        while count < n:
            if accept is not None and tries >= max_tries:
                raise InputError(f"rejection sampling accepted {count} of {n} samples in {max_tries} batches; "
                                 "raise max_tries or loosen accept")  # fmt: skip
            b = min(batch_size, n - count)
            lab = None if labels is None else labels[count : count + b]
            levels = self._sample_batch(b, lab, self._uniforms(generator, index, b), temperature, top_k, top_p, cfg, use_cache)
            index, tries = index + b, tries + 1
            if accept is not None:
                mask = torch.as_tensor(np.asarray(accept(levels if len(levels) > 1 else levels[0]))).reshape(-1)
                if mask.shape[0] != b:
                    raise InputError(f"accept must return one bool per sample ({b}), got shape {tuple(mask.shape)}")
                levels = tuple(t[mask.bool()] for t in levels)
            kept.append(levels)
            count += levels[0].shape[0]
        out = tuple(torch.cat([k[i] for k in kept])[:n] for i in range(len(kept[0])))
        return out if len(out) > 1 else out[0]

    def _uniforms(self, generator: Any, start: int, b: int) -> torch.Tensor:
        L = sum(self.config.seq_lens)
        if isinstance(generator, torch.Generator):
            return torch.rand(b, L, generator=generator, dtype=torch.float64)
        if generator is None:
            return torch.rand(b, L, dtype=torch.float64)
        if isinstance(generator, bool) or not isinstance(generator, (int, np.integer)):
            raise InputError(f"generator must be an int seed or a torch.Generator, got {type(generator).__name__}")
        rows = []
        for i in range(start, start + b):
            g = torch.Generator().manual_seed(int(np.random.SeedSequence([int(generator), i]).generate_state(1, np.uint64)[0] >> 1))
            rows.append(torch.rand(L, generator=g, dtype=torch.float64))
        return torch.stack(rows)

    @torch.inference_mode()
    def _sample_batch(self, b: int, labels: torch.Tensor | None, u: torch.Tensor, temperature: float, top_k: int | None,
                      top_p: float | None, cfg: float | None, use_cache: bool) -> tuple[torch.Tensor, ...]:  # fmt: skip
        lab = self._labels(labels, b)
        if cfg is not None:
            lab = torch.cat([lab, self._labels(None, b)])
        opts = dict(temperature=float(temperature), top_k=top_k, top_p=top_p, cfg=cfg)
        m, shapes, lens = self.model, self.grid_shapes, self.config.seq_lens
        if self.config.arch == "transformer":
            seq = sampling.run(m.step, m.start(lab, None, use_cache), lens[0], u, **opts)
            return (seq.reshape(b, *shapes[0]).cpu(),)
        if self.config.arch == "pixelcnn":
            seq = sampling.run(m.step, m.start(lab), lens[0], u, **opts)
            return (seq.reshape(b, *shapes[0]).cpu(),)
        top = sampling.run(m.step, m.start(0, lab, use_cache=use_cache), lens[0], u[:, : lens[0]], **opts).reshape(b, *shapes[0])
        top_in = top if cfg is None else torch.cat([top, top])
        bottom = sampling.run(m.step, m.start(1, lab, top_in, use_cache), lens[1], u[:, lens[0] :], **opts).reshape(b, *shapes[1])
        return top.cpu(), bottom.cpu()
