"""Model cards: the README.md written beside ``config.json`` and ``model.safetensors``."""

from __future__ import annotations

import json
import re
from typing import Any

from .config import Config, config_hash, config_to_dict


def model_card(
    name: str,
    config: Config,
    *,
    license: str | None = None,
    tags: list[str] | None = None,
    datasets: list[str] | None = None,
    description: str | None = None,
    metrics: dict[str, Any] | list[dict[str, Any]] | None = None,
    source: str | None = None,
    citation: str | None = None,
) -> str:
    """A Hugging Face model card: YAML front matter (``library_name: imagetok``) and a usage section.

    Args:
        name: the model's name (manifest name, hub repo id or folder name).
        config: its architecture config.
        license, tags, datasets: front-matter fields (licence as an SPDX id or "other").
        description: free text placed under the title.
        metrics: ``{"protocol": str, <metric>: value, ...}``, or a list of
            ``{"dataset", "resolution", "protocol", "source", "values": {<metric>: value}}`` (the
            weights-manifest form); rendered as tables, codebook usage as a percentage.
        source: where the weights came from (a converted checkpoint, a training recipe).
        citation: how to cite the weights (placed in a Citation section).
    """
    front = ["---", "library_name: imagetok"]
    if license:
        front.append(f"license: {_yaml(license)}")
        if license == "other":
            front.append("license_name: unknown")
    all_tags = ["imagetok", "image-tokenizer", config.family, *(tags or [])]
    front.append("tags:")
    front += [f"- {_yaml(t)}" for t in dict.fromkeys(all_tags)]
    if datasets:
        front.append("datasets:")
        front += [f"- {_yaml(d)}" for d in datasets]
    front.append("---")
    grids = " + ".join(
        f"{config.resolution // f}x{config.resolution // f} ({k} codes)"
        for f, k in zip(config.downsample_factors, config.codebook_sizes)
    )
    body = [
        f"# {name}",
        "",
        description or f"A {config.family} image tokenizer for [imagetok](https://pypi.org/project/imagetok/).",
        "",
        f"- Tokens at {config.resolution}x{config.resolution}: {grids}",
        f"- Input range: {list(config.input_range)}; config hash `{config_hash(config)}`",
    ]
    if source:
        body.append(f"- Source: {source}")
    if metrics:
        body += ["", "## Metrics", ""] + _metrics_section(metrics)
    body += [
        "",
        "## Usage",
        "",
        "```python",
        "from imagetok import Tokenizer",
        f'tok = Tokenizer.from_pretrained("{name}")',
        'ids = tok.encode("photo.jpg")   # integer token grid',
        "img = tok.decode(ids)           # PIL image",
        "```",
        "",
        *(["## Citation", "", citation, ""] if citation else []),
        "## Config",
        "",
        "```json",
        json.dumps(config_to_dict(config), indent=2),
        "```",
        "",
    ]
    return "\n".join(front + [""] + body)


def _yaml(text: str) -> str:
    """A YAML scalar: plain when safe, else JSON-quoted (JSON strings are valid YAML)."""
    return text if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/+-]*", text) else json.dumps(text)


def _fmt(key: str, value: Any) -> str:
    if key == "codebook_usage" and isinstance(value, (int, float)):
        return f"{100 * value:.1f} %"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _metrics_section(metrics: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
    if isinstance(metrics, dict):  # one protocol, flat {"protocol": ..., metric: value}
        values = {k: v for k, v in metrics.items() if k != "protocol"}
        metrics = [{"protocol": metrics.get("protocol"), "values": values}]
    lines: list[str] = []
    for m in metrics:
        head = ", ".join(
            str(x) for x in (m.get("dataset"), f"{m['resolution']}px" if m.get("resolution") else None) if x
        )
        if head:
            lines += [f"**{head}**", ""]
        if m.get("protocol"):
            lines.append(f"Protocol: {m['protocol']}" + (f" (source: {m['source']})" if m.get("source") else ""))
            lines.append("")
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(k, v)} |" for k, v in m.get("values", {}).items()]
        lines.append("")
    return lines[:-1]
