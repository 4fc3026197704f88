"""Model cards: the README.md written beside ``config.json`` and ``model.safetensors``."""

from __future__ import annotations

import json
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
    metrics: dict[str, Any] | None = None,
    source: str | None = None,
) -> str:
    """A Hugging Face model card: YAML front matter (``library_name: imagetok``) and a usage section.

    Args:
        name: the model's name (manifest name, hub repo id or folder name).
        config: its architecture config.
        license, tags, datasets: front-matter fields (licence as an SPDX id or "other").
        description: free text placed under the title.
        metrics: ``{"protocol": str, <metric>: value, ...}``; rendered as a table.
        source: where the weights came from (a converted checkpoint, a training recipe).
    """
    front = ["---", "library_name: imagetok"]
    if license:
        front.append(f"license: {license}")
    all_tags = ["imagetok", "image-tokenizer", config.family, *(tags or [])]
    front.append("tags:")
    front += [f"- {t}" for t in dict.fromkeys(all_tags)]
    if datasets:
        front.append("datasets:")
        front += [f"- {d}" for d in datasets]
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
        body += ["", "## Metrics", ""]
        protocol = metrics.get("protocol")
        if protocol:
            body += [f"Protocol: {protocol}", ""]
        body += ["| metric | value |", "|---|---|"]
        body += [f"| {k} | {v} |" for k, v in metrics.items() if k != "protocol"]
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
        "## Config",
        "",
        "```json",
        json.dumps(config_to_dict(config), indent=2),
        "```",
        "",
    ]
    return "\n".join(front + [""] + body)
