"""The ``imagetok`` command line. Each subcommand is a few lines over the public API.

Errors print one line on stderr and exit with status 1; set ``IMAGETOK_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

from .errors import ImagetokError, InputError


def _load(model: str | None):
    from .tokenizer import Tokenizer

    return Tokenizer.from_pretrained(model)


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None, help="manifest name, hf-hub:org/repo, or model folder (default: bundled)")


def _levels(tokens) -> tuple:
    return tokens if isinstance(tokens, tuple) else (tokens,)


def cmd_encode(args: argparse.Namespace) -> int:
    from .tokenfile import save_tokens

    tok = _load(args.model)
    size = None if args.size == 0 else (args.size or tok.default_size)
    levels = _levels(tok.encode([str(p) for p in args.images], size=size))
    names = [str(p) for p in args.images]
    if args.output:
        path = save_tokens(args.output, levels, model=tok.name, config=tok.config, images=names)
        print(f"wrote {len(names)} token grid(s) {[list(t.shape[1:]) for t in levels]} to {path}", file=sys.stderr)
        return 0
    level_names = ["top", "bottom"] if len(levels) == 2 else [f"level{i}" for i in range(len(levels))]
    out = {"model": tok.name, "family": tok.config.family, "images": []}
    for i, name in enumerate(names):
        if len(levels) == 1:
            entry = {"image": name, "shape": list(levels[0].shape[1:]), "tokens": levels[0][i].tolist()}
        else:
            entry = {
                "image": name,
                "shape": {n: list(t.shape[1:]) for n, t in zip(level_names, levels)},
                "tokens": {n: t[i].tolist() for n, t in zip(level_names, levels)},
            }
        out["images"].append(entry)
    print(json.dumps(out))
    return 0


def _output_paths(output: str, count: int, images: list) -> list[Path]:
    out = Path(output)
    if count == 1 and out.suffix:
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    stems = [Path(p).stem if p else f"{i:05d}" for i, p in enumerate(images or [None] * count)]
    if len(set(stems)) != len(stems):
        stems = [f"{i:05d}_{s}" for i, s in enumerate(stems)]
    return [out / f"{s}.png" for s in stems]


def cmd_decode(args: argparse.Namespace) -> int:
    from .tokenfile import load_tokens

    levels, meta = load_tokens(args.tokens)
    model = args.model or meta.get("model")
    tok = _load(model)
    if meta.get("config_hash") and meta["config_hash"] != _hash(tok):
        raise InputError(
            f"{args.tokens} was written by a model with config hash {meta['config_hash']}, "
            f"but {tok.name} has {_hash(tok)}: its token ids mean something else"
        )
    images = tok.decode(levels if len(levels) > 1 else levels[0], output="pil")
    paths = _output_paths(args.output, len(images), meta.get("images"))
    for img, path in zip(images, paths):
        img.save(path)
    print(f"wrote {len(paths)} image(s): {', '.join(map(str, paths))}", file=sys.stderr)
    return 0


def _hash(tok) -> str:
    from .config import config_hash

    return config_hash(tok.config)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .metrics import psnr, ssim

    tok = _load(args.model)
    size = None if args.size == 0 else (args.size or tok.default_size)
    x, _ = tok.preprocess(str(args.image), size=size)
    y = tok.decode_pixels(tok.encode_pixels(x))
    from .image import from_tensor

    from_tensor(y, "pil")[0].save(args.output)
    res = {"image": str(args.image), "output": str(args.output), "psnr": round(float(psnr(x, y)[0]), 3), "ssim": round(float(ssim(x, y)[0]), 4)}
    print(json.dumps(res))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .config import config_hash, config_to_dict

    tok = _load(args.model)
    info = {
        "model": tok.name,
        "family": tok.config.family,
        "parameters": sum(p.numel() for p in tok.model.parameters()),
        "codebook_sizes": list(tok.codebook_sizes),
        "downsample_factors": list(tok.downsample_factors),
        "default_size": tok.default_size,
        "token_grids": [list(g) for g in tok.grid_shapes()],
        "config_hash": config_hash(tok.config),
        "config": config_to_dict(tok.config),
    }
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagetok", description="Images to discrete tokens and back.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("encode", help="encode images to token grids")
    p.add_argument("images", nargs="+", type=Path)
    _model_arg(p)
    p.add_argument("-o", "--output", help="write tokens to .safetensors/.json/.npy instead of printing JSON")
    p.add_argument("--size", type=int, default=None, help="resize+crop side (default: the model's; 0 = keep image size)")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode a token file to image(s)")
    p.add_argument("tokens", type=Path)
    p.add_argument("-o", "--output", required=True, help="output image (or folder for several)")
    _model_arg(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("reconstruct", help="encode+decode an image and print PSNR/SSIM")
    p.add_argument("image", type=Path)
    p.add_argument("-o", "--output", required=True)
    _model_arg(p)
    p.add_argument("--size", type=int, default=None, help="resize+crop side (default: the model's; 0 = keep image size)")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("info", help="describe a model")
    _model_arg(p)
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 error, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ImagetokError, OSError) as e:
        if os.environ.get("IMAGETOK_DEBUG") == "1":
            traceback.print_exc()
        print(f"imagetok {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"imagetok {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not a user error: still one line unless debugging
        if os.environ.get("IMAGETOK_DEBUG") == "1":
            raise
        print(f"imagetok {args.command}: internal error: {type(e).__name__}: {e} (IMAGETOK_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
