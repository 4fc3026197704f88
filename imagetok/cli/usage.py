"""``imagetok usage``: codebook usage over images or token files, tables, comparisons and plots.

The statistics themselves are :mod:`imagetok.usage` (pure); this module reads inputs, formats and
draws them, and owns the exit codes (0 ok, 1 error or some inputs skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, InputError, MissingDependencyError
from ..usage import DEFAULT_MAX_POSITION_CELLS, BitUsage, DatasetUsage, LevelUsage, UsageAccumulator, UsageReport
from ._common import _size_arg

PLOT_HINT = "pip install 'imagetok[plot]'  (or: pip install matplotlib)"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("usage", help="codebook usage report over images or token files",
                       description="Exact codebook usage over image folders/files/list files/.tar shards, or token "
                       "files from `imagetok encode -o` (which need no --model). Exit status 1 if any input was skipped.")
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="image folders/files, list files, .tar shards, or token files")
    p.add_argument("--model", "-m", default=None, help="manifest name, hf-hub:org/repo, or model folder (default: bundled)")
    p.add_argument("--json", metavar="FILE", help="write the JSON report (- for stdout; the table goes to stderr)")
    p.add_argument("--plot", metavar="FILE.png", help="write usage plots as PNG (needs matplotlib)")
    p.add_argument("--compare", nargs="+", metavar="REPORT.json", help="compare saved --json reports in one table")
    p.add_argument("--remap", metavar="FILE.json", help="write a renumbering that drops unused codes")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--size", type=_size_arg, default=None, help="resize+crop side (default: the model's; 'native' (or 0) keeps each image's size)")
    p.add_argument("--top", type=int, default=10, help="most frequent codes to list in the JSON (default 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_usage)


def _load(model: str | None) -> Any:
    from ..tokenizer import Tokenizer

    return Tokenizer.from_pretrained(model)


def cmd_usage(args: argparse.Namespace) -> int:
    """Codebook usage over image folders/files or token files; or compare saved reports."""
    from ..tokenfile import SUFFIXES

    if args.compare:
        if args.paths:
            raise InputError("pass either PATH... to measure or --compare REPORT.json..., not both")
        labels = [Path(p).stem for p in args.compare]
        labels = labels if len(set(labels)) == len(labels) else [str(p) for p in args.compare]
        print(compare_usage([DatasetUsage.load(p) for p in args.compare], labels), end="")
        return 0
    if not args.paths:
        raise InputError("give image folders or files, token files (.safetensors/.json/.npy), or --compare")
    if args.plot:
        require_matplotlib()  # fail before a long run, not after it
    progress = not args.no_progress and sys.stderr.isatty()
    is_tokens = [p.suffix.lower() in SUFFIXES and p.is_file() for p in args.paths]
    if all(is_tokens):
        tok = _load(args.model) if args.model else None  # token files name their model
        result = usage_from_token_files(args.paths, tokenizer=tok, progress=progress, top=args.top)
    elif any(is_tokens):
        raise InputError("pass either token files (.safetensors/.json/.npy) or images/folders, not both")
    else:
        tok = _load(args.model)
        size = None if args.size == "native" else (args.size or tok.default_size)
        result = tok.codebook_usage([str(p) for p in args.paths], size=size, batch_size=args.batch_size,
                                    progress=progress, top=args.top)
    table = usage_table(result)
    if tok is not None and tok.config.family in ("magvit2", "cosmos", "showo"):  # LFQ bits / FSQ levels
        from ..usage import quantizer_usage_from_report

        table += format_quantizer_usage(quantizer_usage_from_report(tok.config, result))
    if args.json == "-":
        print(json.dumps(result.to_dict()))
        print(table, end="", file=sys.stderr)
    else:
        print(table, end="")
        if args.json:
            print(f"wrote {result.save(args.json)}", file=sys.stderr)
    if args.plot:
        print(f"wrote {plot_usage(result, args.plot)}", file=sys.stderr)
    if args.remap:
        from ..llm import save_remap

        print(f"wrote {save_remap(result, args.remap)}", file=sys.stderr)
    if result.skipped_count:
        print(f"imagetok usage: {result.skipped_count} input(s) could not be read and were skipped "
              f"(listed in the JSON report); first: {result.skipped[0][1]}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------ token files
def usage_from_token_files(
    paths: Sequence[str | os.PathLike],
    *,
    tokenizer: Any = None,
    progress: bool = False,
    top: int = 10,
    max_position_cells: int = DEFAULT_MAX_POSITION_CELLS,
) -> DatasetUsage:
    """Codebook usage over token files written by ``imagetok encode -o`` (no model needed).

    The codebook sizes come from the files' stored config. Every file must come from the same
    model: the same ``config_hash`` and, where the files record it, the same ``weights_sha256``
    (and those of ``tokenizer`` when one is given); ``.npy`` files carry no model information and
    need ``tokenizer``. Unreadable files are skipped, counted and listed.

    Raises:
        InputError: files from different models (config or weights) or codebook sizes, ``.npy``
            without a tokenizer, ids outside the codebook, or nothing readable.
    """
    from tqdm.auto import tqdm

    from ..config import config_from_dict
    from ..tokenfile import load_tokens

    ref: dict[str, Any] | None = None  # {"hash", "weights", "sizes", "model", "family", "source"}
    if tokenizer is not None:
        prov = tokenizer.provenance
        ref = {"hash": prov["config_hash"], "weights": prov.get("weights_sha256"), "sizes": tuple(tokenizer.codebook_sizes),
               "model": tokenizer.name, "family": tokenizer.config.family, "source": f"the model {tokenizer.name!r}"}
    acc: UsageAccumulator | None = None
    skipped: list[tuple[str, Exception]] = []
    for path in tqdm(paths, desc="usage", unit="file", disable=not progress, dynamic_ncols=True):
        try:
            levels, meta = load_tokens(path)
        except InputError as e:
            skipped.append((str(path), e))
            continue
        if not meta:  # .npy
            if tokenizer is None:
                raise InputError(f"{path}: a .npy token file carries no model information; pass --model (tokenizer=) "
                                 "so its ids can be checked against the codebook")
            sizes = ref["sizes"]
        else:
            try:
                cfg = config_from_dict(meta.get("config"))
            except ConfigError as e:
                raise InputError(f"{path}: token file has an unreadable model config ({e})") from None
            sizes, model, weights = cfg.codebook_sizes, meta.get("model"), meta.get("weights_sha256")
            chash = meta.get("config_hash")
            if ref is None:
                ref = {"hash": chash, "weights": weights, "sizes": sizes, "model": model, "family": cfg.family,
                       "source": f"{path} (model {model!r})"}
            elif chash != ref["hash"] or sizes != ref["sizes"]:
                raise InputError(
                    f"{path} comes from model {model!r} (config hash {chash}, codebook sizes {list(sizes)}), "
                    f"but {ref['source']} has config hash {ref['hash']}, codebook sizes {list(ref['sizes'])}: "
                    "token ids of different models mean different things and cannot be counted together"
                )
            elif weights and ref["weights"] and weights != ref["weights"]:
                raise InputError(
                    f"{path} was made by weights with sha256 {weights}, but {ref['source']} has weights "
                    f"{ref['weights']}: same architecture, different weights, so the ids mean different things "
                    "and cannot be counted together"
                )
            elif weights and not ref["weights"]:
                ref["weights"] = weights
        if len(levels) != len(sizes):
            raise InputError(f"{path}: has {len(levels)} token level(s), but the model has {len(sizes)}")
        if acc is None:
            acc = UsageAccumulator(sizes, max_position_cells=max_position_cells)
        try:
            acc.update(levels)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
    if acc is None:
        if not paths:
            raise InputError("no token files given")
        raise InputError(f"none of the {len(paths)} token file(s) could be read; first: {skipped[0][1]}")
    for p, e in skipped:
        acc.skip(p, e)
    return acc.result(top=top, model=ref["model"], config_hash=ref["hash"], family=ref["family"], source="tokens")


# --------------------------------------------------------------------------- tables, compare
def usage_table(usage: DatasetUsage) -> str:
    """A readable plain-text table of a :class:`DatasetUsage`, one column per level."""
    head = [
        f"model: {usage.model or 'unknown'}"
        + (f"  ({usage.family}, config {usage.config_hash})" if usage.config_hash else ""),
        f"images: {usage.images:,}  skipped (unreadable): {usage.skipped_count:,}",
    ]
    cols = [(lv.name or "codes", lv) for lv in usage.levels]
    return "\n".join(head) + "\n\n" + format_table(cols) + _dead_lines(cols)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _diff(num, fmt):
    """A difference-column function ``(a, b) -> text`` from a number getter and a format."""

    def diff(a: UsageReport, b: UsageReport) -> str:
        x, y = num(a), num(b)
        return "" if x is None or y is None else fmt.format(y - x)

    return diff


def _pos_mean(r: UsageReport) -> float | None:
    return r.position_stats["mean"] if r.position_stats else None


_PP = "{:+.1f} pp"  # percentage points

# (label, text of one report, difference column (second minus first) or None)
_ROWS: list[tuple[str, Any, Any]] = [
    ("codebook size", lambda r: f"{r.codebook_size:,}", _diff(lambda r: r.codebook_size, "{:+,}")),
    ("images", lambda r: f"{r.grids:,}", None),
    ("tokens", lambda r: f"{r.tokens:,}", None),
    ("codes used", lambda r: f"{r.codes_used:,} ({_pct(r.used_fraction)})", _diff(lambda r: r.codes_used, "{:+,}")),
    ("dead codes", lambda r: f"{r.dead_count:,}", _diff(lambda r: r.dead_count, "{:+,}")),
    ("perplexity", lambda r: f"{r.perplexity:,.1f}", _diff(lambda r: r.perplexity, "{:+,.1f}")),
    (
        "entropy (bits)",
        lambda r: f"{r.entropy_bits:.3f} / {r.max_entropy_bits:.3f}",
        _diff(lambda r: r.entropy_bits, "{:+.3f}"),
    ),
    ("normalized entropy", lambda r: _pct(r.normalized_entropy), _diff(lambda r: 100 * r.normalized_entropy, _PP)),
    ("top 1% codes' share", lambda r: _pct(r.top1pct_share), _diff(lambda r: 100 * r.top1pct_share, _PP)),
    ("top 10% codes' share", lambda r: _pct(r.top10pct_share), _diff(lambda r: 100 * r.top10pct_share, _PP)),
    ("gini", lambda r: f"{r.gini:.3f}", _diff(lambda r: r.gini, "{:+.3f}")),
    (
        "distinct codes/position",
        lambda r: "min {min:,} mean {mean:,.1f} max {max:,}".format(**r.position_stats) if r.position_stats else "n/a",
        _diff(_pos_mean, "mean {:+,.1f}"),
    ),
    ("most frequent (share)", lambda r: ", ".join(f"{c} ({_pct(n / r.tokens)})" for c, n in r.top_codes[:3]), None),
]


def format_table(columns: Sequence[tuple[str, UsageReport]], *, difference: bool = False) -> str:
    """Plain-text table: one row per statistic, one column per ``(header, report)``.

    With ``difference`` and exactly two columns, a third column shows second minus first
    (shares in percentage points).
    """
    headers = [h for h, _ in columns]
    rows = [[label] + [text(r) for _, r in columns] for label, text, _ in _ROWS]
    if difference and len(columns) == 2:
        headers.append("difference")
        for row, (_, _, diff) in zip(rows, _ROWS):
            row.append(diff(columns[0][1], columns[1][1]) if diff else "")
    table = [[""] + headers] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for i, r in enumerate(table):
        lines.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip())
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines) + "\n"


def _dead_lines(cols: Sequence[tuple[str, UsageReport]], shown: int = 20) -> str:
    out = []
    for header, r in cols:
        if r.dead_codes:
            more = f", ... ({r.dead_count - shown:,} more)" if r.dead_count > shown else ""
            out.append(f"dead code ids ({header}): {', '.join(map(str, r.dead_codes[:shown]))}{more}")
        if r.position_note:
            out.append(f"per-position usage ({header}): {r.position_note}")
    return ("\n" + "\n".join(out) + "\n") if out else ""


def compare_usage(
    reports: Sequence[DatasetUsage | UsageReport], labels: Sequence[str] | None = None
) -> str:
    """One table comparing several reports (two models on one dataset, one model on two datasets).

    Args:
        reports: :class:`DatasetUsage` (each level becomes a column) or :class:`UsageReport`.
        labels: a name per report (default ``A``, ``B``, ...).

    Returns:
        The table as text; with exactly two columns it adds a difference column.
    """
    if not reports:
        raise InputError("nothing to compare: pass at least one report")
    labels = list(labels) if labels is not None else [chr(ord("A") + i) for i in range(len(reports))]
    if len(labels) != len(reports):
        raise InputError(f"got {len(labels)} labels for {len(reports)} reports")
    cols, head = [], []
    for label, rep in zip(labels, reports):
        if isinstance(rep, DatasetUsage):
            head.append(f"{label}: model {rep.model or 'unknown'} (config {rep.config_hash}), "
                        f"{rep.images:,} images, {rep.skipped_count:,} skipped")
            levels = rep.levels
        else:
            levels = (rep,)
        for lv in levels:
            cols.append((f"{label}:{lv.name}" if lv.name else label, lv))
    return ("\n".join(head) + "\n\n" if head else "") + format_table(cols, difference=True)


# ------------------------------------------------------------------------------------ plots
def plot_usage(usage: DatasetUsage | UsageReport, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Write a PNG per level row: rank-frequency curve (log-log), sorted histogram, per-position map.

    Needs matplotlib (``pip install 'imagetok[plot]'``); does not touch pyplot's global state.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    levels = usage.levels if isinstance(usage, DatasetUsage) else (usage,)
    fig = Figure(figsize=(15, 4.2 * len(levels)), layout="constrained")
    axes = fig.subplots(len(levels), 3, squeeze=False)
    for row, r in zip(axes, levels):
        title = (r.name + ": ") if r.name else ""
        counts = np.sort(np.asarray(r.counts, dtype=np.int64))[::-1]
        used = counts[counts > 0]
        ax = row[0]
        ax.loglog(np.arange(1, len(used) + 1), used / r.tokens, lw=1.5, marker="o" if len(used) < 30 else None)
        ax.axhline(1 / r.codebook_size, color="gray", ls="--", lw=1, label="uniform 1/K")
        ax.set(xlabel="rank", ylabel="token share", title=f"{title}rank-frequency (log-log)")
        ax.legend(loc="lower left")
        ax = row[1]
        ranks = np.arange(len(counts))
        ax.fill_between(ranks, counts, step="post", lw=0)
        if r.dead_count:
            ax.axvline(r.codes_used, color="red", lw=1, label=f"{r.dead_count:,} dead codes →")
            ax.legend(loc="upper right")
        ax.set(xlabel="codes, most used first", ylabel="count", xlim=(0, len(counts)),
               title=f"{title}{r.codes_used:,}/{r.codebook_size:,} used, perplexity {r.perplexity:,.1f}")
        ax = row[2]
        if r.position_distinct is not None:
            im = ax.imshow(np.asarray(r.position_distinct), cmap="viridis", interpolation="nearest")
            fig.colorbar(im, ax=ax, label="distinct codes")
            ax.set(title=f"{title}distinct codes per position", xlabel="column", ylabel="row")
        else:
            ax.axis("off")
            ax.text(0.5, 0.5, f"per-position usage\n{r.position_note}", ha="center", va="center", wrap=True)
    p = Path(path)
    fig.savefig(p, dpi=dpi, format="png")
    return p


def require_matplotlib() -> None:
    """Raise MissingDependencyError (with the install command) when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError(f"plotting needs matplotlib, which is not installed: {PLOT_HINT}") from None


def format_quantizer_usage(r: "BitUsage | LevelUsage") -> str:
    """A short text table of :class:`BitUsage` (one row per bit) or :class:`LevelUsage` (per channel)."""
    if isinstance(r, BitUsage):
        lines = [f"LFQ bits ({r.tokens} tokens): min balance {r.min_balance:.3f}, mean {r.mean_balance:.3f}, "
                 f"sum of bit entropies {r.sum_entropy_bits:.2f} of {r.bits} bits, dead bits {list(r.dead)}",
                 "bit  ones   balance  entropy"]  # fmt: skip
        lines += [f"{k:>3}  {o:.3f}  {b:.3f}    {e:.3f}" for k, (o, b, e) in enumerate(zip(r.ones, r.balance, r.entropy_bits))]
    else:
        lines = [f"FSQ levels ({r.tokens} tokens)", "channel  levels  used  usage  entropy/max"]
        lines += [f"{i:>7}  {L:>6}  {u:>4}  {f:.3f}  {e:.2f}/{m:.2f}"
                  for i, (L, u, f, e, m) in enumerate(zip(r.levels, r.used, r.usage, r.entropy_bits, r.max_entropy_bits))]  # fmt: skip
    return "\n".join(lines) + "\n"
