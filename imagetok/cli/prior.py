"""``imagetok prior train|sample|eval``: stage-2 priors from the command line (see :mod:`imagetok.prior`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError

TOKEN_SUFFIXES = (".safetensors", ".json", ".npy")


def cmd_train(args: argparse.Namespace) -> int:
    from ..prior.trainer import train_prior

    base = {}
    if args.config:
        try:
            base = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{args.config}: cannot read the prior train config ({e})") from None
    given = {k: getattr(args, k) for k in ("arch", "steps", "width", "depth", "heads", "batch_size", "lr", "eval_data",
                                            "seed", "device", "label_dropout", "num_threads") if getattr(args, k) is not None}  # fmt: skip
    if args.unconditional:
        given["conditional"] = False
    out = train_prior({**base, "data": str(args.data), "out_dir": str(args.out), **given})
    print(out)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from ..prior import Prior
    from ._common import _check_output, _output_paths

    prior = Prior.from_pretrained(args.prior)
    out = Path(args.output)
    if args.decode:  # outputs are checked before any work
        tok = prior.load_tokenizer() if args.tokenizer is None else _tokenizer(prior, args.tokenizer)
        paths = _output_paths(str(out), args.n, [], [], args.overwrite)
    else:
        if out.suffix not in TOKEN_SUFFIXES:
            raise InputError(f"{out}: a token file must end in one of {TOKEN_SUFFIXES} (or pass --decode to write PNGs)")
        if not prior.config.tokenizer_config:
            raise InputError("this prior does not record its tokenizer's config, so no token file can name it; use --decode --tokenizer NAME")
        _check_output(out, [], args.overwrite)
    label = args.class_
    if label is not None and label.isdigit() and label not in prior.classes:
        label = int(label)
    tokens = prior.sample(args.n, label=label, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          cfg=args.cfg, generator=args.seed, batch_size=args.batch_size)  # fmt: skip
    if args.decode:
        for img, path in zip(tok.decode(tokens), paths):
            img.save(path)
        print(f"wrote {len(paths)} image(s) to {out}", file=sys.stderr)
        return 0
    from ..config import config_from_dict
    from ..tokenfile import save_tokens

    levels = tokens if isinstance(tokens, tuple) else (tokens,)
    save_tokens(out, levels, model=prior.config.tokenizer, config=config_from_dict(prior.config.tokenizer_config),
                overwrite=args.overwrite)
    print(f"wrote {args.n} token grid(s) {[list(t.shape[1:]) for t in levels]} to {out}", file=sys.stderr)
    return 0


def _tokenizer(prior, name: str):
    from ..tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(name)
    prior.check_tokenizer(tok)
    return tok


def cmd_eval(args: argparse.Namespace) -> int:
    from ..prior import Prior, load_token_data

    prior = Prior.from_pretrained(args.prior)
    data = load_token_data(args.data)
    bpt = prior.bits_per_token(data)
    if args.json:
        print(json.dumps({"bits_per_token": bpt, "rows": len(data), "tokens_per_row": sum(prior.config.seq_lens)}))
    else:
        print(f"bits_per_token {bpt:.4f}  ({len(data)} rows x {sum(prior.config.seq_lens)} tokens)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("prior", help="stage-2 priors: train on token datasets, sample, evaluate",
                       description="Train a prior (transformer, gated PixelCNN, or two-level for VQ-VAE-2) on a "
                       "tokenize-dataset folder, sample token grids (or images with --decode), print bits per token.")
    psub = p.add_subparsers(dest="prior_command", required=True)

    t = psub.add_parser("train", help="train a prior on a tokenize-dataset folder (re-running resumes)")
    t.add_argument("data", type=Path, metavar="DATA", help="tokenize-dataset output folder (with a 'label' column for classes)")
    t.add_argument("--out", required=True, type=Path, metavar="DIR", help="run folder; the prior is exported to DIR/prior")
    t.add_argument("--arch", choices=["transformer", "pixelcnn", "vqvae2"], default=None)
    t.add_argument("--config", type=Path, default=None, help="JSON with PriorTrainConfig keys (flags override it)")
    for name, typ in (("steps", int), ("width", int), ("depth", int), ("heads", int), ("batch-size", int), ("lr", float),
                      ("seed", int), ("label-dropout", float), ("num-threads", int)):  # fmt: skip
        t.add_argument(f"--{name}", type=typ, default=None)
    t.add_argument("--unconditional", action="store_true", help="ignore the dataset's labels")
    t.add_argument("--eval-data", default=None, help="held-out tokenize-dataset folder (bits per token in metrics.jsonl)")
    t.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    t.set_defaults(func=cmd_train)

    s = psub.add_parser("sample", help="sample token grids (or images with --decode)")
    s.add_argument("prior", metavar="DIR", help="prior folder or Hub id")
    s.add_argument("-n", type=int, default=1, help="number of samples")
    s.add_argument("--class", dest="class_", default=None, metavar="NAME|ID", help="class to sample (default: unconditional)")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (needs --class)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--decode", action="store_true", help="write PNGs with the tokenizer named in the prior's config")
    s.add_argument("--tokenizer", default=None, help="with --decode: load this tokenizer instead (its config hash must match)")
    s.add_argument("-o", "--output", required=True, help="token file (.safetensors/.json/.npy), or with --decode a folder (or .png for -n 1)")
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    s.set_defaults(func=cmd_sample)

    e = psub.add_parser("eval", help="bits per token of a prior on token data (refused if made by another tokenizer)")
    e.add_argument("prior", metavar="DIR")
    e.add_argument("data", type=Path, metavar="DATA", help="tokenize-dataset folder, or a token file (imagetok encode -o / prior sample -o)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)
