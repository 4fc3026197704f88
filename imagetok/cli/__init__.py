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

from ..errors import ImagetokError, InputError
from ._common import IMAGE_OUTPUTS, _check_output, _output_paths, _size_arg, _unique_stems
from . import dataset, prior, usage


def _load(model: str | None, fast: bool = False):
    from ..tokenizer import Tokenizer

    return Tokenizer.from_pretrained(model, fast=fast)


def _fast_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fast", action="store_true", help="bf16 autocast + channels_last network, float32 code search (faster; tokens may differ slightly)")


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None, help="manifest name, hf-hub:org/repo, or model folder (default: bundled)")


def _levels(tokens) -> tuple:
    return tokens if isinstance(tokens, tuple) else (tokens,)


# Image files `imagetok encode FOLDER` picks up (hidden files and folders are skipped).


def _size(args: argparse.Namespace, tok):
    return tok.default_size if args.size is None else args.size


def _expand_images(paths: list[Path]) -> list[Path]:
    """Files as given; folders walked by :func:`imagetok.data.sources.list_image_files` (the one
    walker that ``usage``, ``tokenize-dataset`` and ``train`` use: sorted, hidden names skipped)."""
    from ..data.sources import list_image_files

    out = []
    for p in paths:
        if p.is_dir():
            out += list_image_files(p)
        elif p.exists():
            out.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    return out


def _progress(total: int, desc: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not show, file=sys.stderr, dynamic_ncols=True)


def cmd_encode(args: argparse.Namespace) -> int:
    from ..tokenfile import SUFFIXES, save_tokens

    images = _expand_images(args.images)
    names = [str(p) for p in images]
    per_image = None
    if args.output:  # check every output path before loading the model or reading an image
        out = Path(args.output)
        if out.suffix and not out.is_dir():  # one token file for all images
            if out.suffix not in SUFFIXES:
                raise InputError(f"{out}: unknown token file type {out.suffix!r}; use one of {SUFFIXES}, or a folder")
            _check_output(out, images, args.overwrite)
        else:  # a folder: one token file per image
            per_image = [out / f"{s}{args.format}" for s in _unique_stems(names, len(names))]
            out.mkdir(parents=True, exist_ok=True)
            for path in per_image:
                _check_output(path, images, args.overwrite)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    tok = _load(args.model, args.fast)
    size = _size(args, tok)
    prov = tok.provenance
    bs = 1 if (per_image and size == "native") else args.batch_size  # native sizes may differ: one by one
    chunks = []
    with _progress(len(images), "encode", show=not args.quiet and len(images) > bs) as bar:
        for start in range(0, len(images), bs):
            part = images[start : start + bs]
            levels = _levels(tok.encode([str(p) for p in part], size=size, batch_size=bs))
            if per_image:
                for i, path in enumerate(per_image[start : start + bs]):
                    save_tokens(path, tuple(t[i : i + 1] for t in levels), model=tok.name, config=tok.config,
                                images=[names[start + i]], weights_sha256=prov["weights_sha256"], overwrite=args.overwrite)
            else:
                chunks.append(levels)
            bar.update(len(part))
    if per_image:
        print(f"wrote {len(per_image)} token file(s) to {args.output}", file=sys.stderr)
        return 0
    try:
        levels = tuple(torch_cat(level) for level in zip(*chunks))
    except RuntimeError:
        raise InputError("images have different sizes after preprocessing (--size native); write one token file per "
                         "image with -o DIR, or pass --size N") from None
    if args.output:
        path = save_tokens(args.output, levels, model=tok.name, config=tok.config, images=names,
                           weights_sha256=prov["weights_sha256"], overwrite=args.overwrite)
        print(f"wrote {len(names)} token grid(s) {[list(t.shape[1:]) for t in levels]} to {path}", file=sys.stderr)
        return 0
    level_names = ["top", "bottom"] if len(levels) == 2 else [f"level{i}" for i in range(len(levels))]
    out = {"model": tok.name, "family": tok.config.family, "weights_sha256": prov["weights_sha256"], "images": []}
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


def torch_cat(tensors):
    import torch

    return torch.cat(list(tensors))


def _recorded_model_is_local(model: str) -> bool:
    """Whether a model name from a token file can be loaded without downloading anything."""
    from .. import registry

    try:
        ref = registry.parse_name(model)
    except ImagetokError:
        return False
    return ref.kind == "local" or (ref.kind == "manifest" and ref.entry.source.kind == "bundled")


def cmd_decode(args: argparse.Namespace) -> int:
    from ..tokenfile import load_tokens

    levels, meta = load_tokens(args.tokens)
    model = args.model or meta.get("model")
    if not model:  # never guess: another model's decoder would turn the ids into a wrong image
        raise InputError(f"{args.tokens} does not name the model that encoded it (.npy has no metadata); pass --model")
    if not args.model and not args.fetch and not _recorded_model_is_local(model):
        raise InputError(
            f"{args.tokens} names the model {model!r}, which is not on this machine; pass --model {model} "
            "(or --fetch) to download it"
        )
    paths = _output_paths(args.output, levels[0].shape[0], meta.get("images"), [args.tokens], args.overwrite)
    tok = _load(model)
    if meta.get("config_hash") and meta["config_hash"] != _hash(tok):
        raise InputError(
            f"{args.tokens} was written by a model with config hash {meta['config_hash']}, "
            f"but {tok.name} has {_hash(tok)}: its token ids mean something else"
        )
    recorded = meta.get("weights_sha256")
    if recorded and recorded != tok.provenance["weights_sha256"] and not args.force:
        raise InputError(
            f"{args.tokens} was made by weights with sha256 {recorded}, but {tok.name} has "
            f"{tok.provenance['weights_sha256']}: same architecture, other weights; pass --force to decode anyway"
        )
    images = tok.decode(levels if len(levels) > 1 else levels[0], output="pil")
    for img, path in zip(images, paths):
        _save_image(img, path)
    print(f"wrote {len(paths)} image(s): {', '.join(map(str, paths))}", file=sys.stderr)
    return 0


def _save_image(img, path) -> None:
    try:
        img.save(path)
    except (ValueError, KeyError) as e:  # PIL: unknown extension or unsupported mode for the format
        raise InputError(f"{path}: cannot write an image file there ({e}); use e.g. .png or .jpg") from None


def _hash(tok) -> str:
    from ..config import config_hash

    return config_hash(tok.config)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from ..metrics import psnr, ssim

    out = Path(args.output)
    if out.suffix.lower() not in IMAGE_OUTPUTS:
        raise InputError(f"{out}: cannot write an image file there; use one of {', '.join(IMAGE_OUTPUTS)}")
    _check_output(out, [args.image], args.overwrite)
    tok = _load(args.model, args.fast)
    x, _ = tok.preprocess(str(args.image), size=_size(args, tok))
    y = tok.decode_pixels(tok.encode_pixels(x))
    from ..image import from_tensor

    _save_image(from_tensor(y, "pil")[0], out)
    res = {"image": str(args.image), "output": str(out), "psnr": round(float(psnr(x, y)[0]), 3), "ssim": round(float(ssim(x, y)[0]), 4)}
    print(json.dumps(res))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..config import config_hash, config_to_dict

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


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert an original checkpoint (taming, diffusers, LlamaGen, rosinality) to an imagetok folder."""
    from ..convert import convert

    conv = convert(args.src, from_format=args.from_format, config=args.config, out=args.out,
                   use_ema=args.ema, trust_pickle=args.trust_pickle)
    c = conv.config
    print(f"wrote {args.out}: {c.family}, codebook(s) {list(c.codebook_sizes)}, factor(s) {list(c.downsample_factors)}, "
          f"resolution {c.resolution}", file=sys.stderr)
    return 0


def _convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert an original checkpoint to an imagetok model folder",
                       description="Convert a taming/LDM .ckpt, diffusers VQModel folder, LlamaGen .pt or rosinality "
                       "VQ-VAE-2 .pt into an imagetok folder (config.json, model.safetensors, README.md). Files are "
                       "read without unpickling code; the model card lists what was assumed.")
    p.add_argument("src", type=Path, help="checkpoint file, or a diffusers / transformers / Janus / Chameleon folder")
    p.add_argument("--from", dest="from_format", required=True, choices=["taming", "diffusers", "llamagen", "rosinality", "open-magvit2",
                                                                         "ibq", "cosmos", "showo", "transformers", "janus", "chameleon"])
    p.add_argument("--config", type=Path, default=None,
                   help="the original's config (.json/.yaml): taming model.yaml, diffusers config.json, "
                   "LlamaGen ModelArgs, rosinality kwargs (default: read from tensor shapes)")
    p.add_argument("--out", type=Path, required=True, help="output model folder")
    p.add_argument("--ema", action="store_true", help="use the EMA weights (taming model_ema.*, LlamaGen 'ema')")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load checkpoints that need pickle globals beyond the allow-list (runs code from the file)")
    p.set_defaults(func=cmd_convert)


def cmd_list(args: argparse.Namespace) -> int:
    """Print the published tokenizers of the weights manifest."""
    from .. import registry

    names = registry.list_pretrained(args.filter)
    if not names:
        close = registry.closest_names(args.filter or "")
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise InputError(f"no pretrained model matches {args.filter!r} (globs like 'vqgan-f16-*' work){hint}")
    entries = [registry.get_entry(n) for n in names]
    if args.json:
        print(json.dumps([registry.entry_to_dict(e) for e in entries], indent=2))
    elif args.markdown:
        print(registry.markdown_table(entries), end="")
    else:
        rows = [("name", "tokens @ px", "vocab", "params", "weights", "licence (weights)")]
        for e in entries:
            rows.append((
                e.name,
                " + ".join(f"{h}x{w}" for h, w in e.tokens.grids) + f" @ {e.preprocess.size}",
                " + ".join(map(str, e.tokens.vocab_sizes)),
                f"{e.num_params / 1e6:.1f}M",
                {"hub": e.source.repo_id, "url": "manual download"}.get(e.source.kind, e.source.kind),
                (e.license.weights or "?") + (f" ({e.license.markers()})" if e.license.markers() else ""),
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Upload a saved model folder to the Hugging Face Hub."""
    from .. import hub

    url = hub.push_folder(
        args.folder, args.repo_id, branch=args.branch, private=args.private or None,
        create_pr=args.create_pr, commit_message=args.message, token=args.token,
    )
    print(url)
    return 0


def _hub_parsers(sub) -> None:
    p = sub.add_parser("list", help="list the pretrained tokenizers in the weights manifest")
    p.add_argument("--filter", "-f", default=None, help="glob on the name, e.g. 'vqgan-f16-*'")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="full manifest entries as JSON")
    fmt.add_argument("--markdown", action="store_true", help="a Markdown table (as in the README)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("push", help="upload a model folder (config.json + model.safetensors) to the Hub",
                       description="Validate a saved model folder and upload config.json, model.safetensors and "
                       "README.md (generated if missing) to a Hugging Face Hub model repo.")
    p.add_argument("folder", type=Path, metavar="DIR")
    p.add_argument("repo_id", metavar="REPO_ID", help="org/name; created if missing")
    p.add_argument("--branch", default=None, help="commit to this branch (created from main if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    p.add_argument("--message", "-m", default=None, help="commit message")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login)")
    p.set_defaults(func=cmd_push)


def cmd_train(args: argparse.Namespace) -> int:
    """Train or fine-tune from a JSON train config (imagetok.train); resumes from out_dir's checkpoint."""
    import logging

    from ..train import train

    logging.basicConfig(level=logging.INFO, format="imagetok train: %(message)s")
    overrides = {k: v for k, v in (("steps", args.steps), ("out_dir", args.out_dir)) if v is not None}
    out = train(args.config, **overrides)
    if int(os.environ.get("RANK", "0")) == 0:
        print(out)
    return 0


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune a tokenizer on a folder of images",
                       description="Train (model: {...}) or fine-tune (init_from: NAME) from a JSON train config; "
                       "re-running resumes from out_dir/checkpoint.pt. Ctrl-C saves a checkpoint. Several processes: "
                       "torchrun --nproc-per-node N -m imagetok train --config train.json. Prints the exported model folder.")
    p.add_argument("--config", "-c", required=True, type=Path, help="train config JSON (see examples/train_example.json)")
    p.add_argument("--steps", type=int, default=None, help="override the config's steps")
    p.add_argument("--out-dir", default=None, help="override the config's out_dir")
    p.set_defaults(func=cmd_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagetok", description="Images to discrete tokens and back.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("encode", help="encode images (files or folders) to token grids")
    p.add_argument("images", nargs="+", type=Path, help="image files and/or folders (walked recursively)")
    _model_arg(p)
    p.add_argument("-o", "--output", help="a .safetensors/.json/.npy file for all images, or a folder for one token "
                   "file per image (default: print JSON)")
    p.add_argument("--format", default=".safetensors", choices=[".safetensors", ".json", ".npy"],
                   help="token file type with -o FOLDER (default .safetensors)")
    p.add_argument("--size", type=_size_arg, default=None, help="resize+crop side (default: the model's; 'native' keeps each image's size)")
    p.add_argument("--batch-size", type=int, default=16, help="images read and encoded at a time (default 16); tokens do not depend on it")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _fast_arg(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode a token file to image(s)")
    p.add_argument("tokens", type=Path)
    p.add_argument("-o", "--output", required=True, help="output image (or folder for several)")
    p.add_argument("--model", "-m", default=None,
                   help="model to decode with (default: the one recorded in the token file, if it is on this machine)")
    p.add_argument("--fetch", action="store_true", help="download the model recorded in the token file if needed")
    p.add_argument("--force", action="store_true", help="decode even if the model's weights differ from the recorded ones")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("reconstruct", help="encode+decode an image and print PSNR/SSIM")
    p.add_argument("image", type=Path)
    p.add_argument("-o", "--output", required=True)
    _model_arg(p)
    p.add_argument("--size", type=_size_arg, default=None, help="resize+crop side (default: the model's; 'native' keeps the image size)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    _fast_arg(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("info", help="describe a model")
    _model_arg(p)
    p.set_defaults(func=cmd_info)
    usage.add_parser(sub)
    _convert_parser(sub)
    _hub_parsers(sub)
    dataset.add_parser(sub)
    _train_parser(sub)
    prior.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 error, 2 usage error; --help returns 0)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed the usage error (or --help) already
        return e.code if isinstance(e.code, int) else 2
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
