"""``imagetok tokenize-dataset``: argument parsing and exit codes over :mod:`imagetok.data`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ._common import _size_arg

EXIT_SOME_FAILED = 3  # the dataset is complete but some images failed (listed in errors.jsonl)
MAX_MEMBER_MB = 256  # imagetok.data.sources.MAX_TAR_MEMBER_BYTES / 2**20 (not imported: no work at parser time)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("tokenize-dataset", help="tokenize an image folder/list/.tar shards into Parquet shards",
                       description="Tokenize every image of SRC into Parquet shards for LLM training (resumable; "
                       "torchrun --nproc-per-node N -m imagetok tokenize-dataset ... splits the work). Exit status: "
                       "0 all images tokenized, 3 complete but some images failed (see errors.jsonl), 1 error.")
    p.add_argument("src", nargs="?", help="folder, text file listing image paths, .tar shard or pattern (shards/{0000..0099}.tar), "
                   "Parquet file/folder or Hugging Face dataset (hf://datasets/org/name); local or any fsspec URL (s3://, gs://, hf://, https://)")
    p.add_argument("--out", "-o", required=True, help="output folder, local or object-store URL (s3://, gs://, hf://...); a rerun into it resumes")
    p.add_argument("--model", "-m", default=None, help="model name or folder (default: bundled)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--workers", type=int, default=None, help="image loading processes (default: one per spare core, 0 = in-process)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per Parquet shard (default 1000)")
    p.add_argument("--size", type=_size_arg, default=None, help="resize+crop side (default: the model's; 'native' (or 0) keeps each image's size)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda:LOCAL_RANK if available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="network dtype (codebook search stays float32)")
    p.add_argument("--draft", action="store_true", help="decode large JPEGs at reduced size (faster; tokens then differ slightly from encode())")
    p.add_argument("--rank", type=int, default=None, help="this job's part when splitting by hand (with --world-size)")
    p.add_argument("--world-size", type=int, default=None, help="number of parts when splitting by hand")
    p.add_argument("--merge-only", action="store_true", help="only (re)write dataset_info.json and errors.jsonl from finished shards")
    p.add_argument("--memmap", action="store_true", help="also export memmap/tokens.bin + offsets.npy (LLM ids)")
    p.add_argument("--llm-offset", type=int, default=0, help="LLM id of image code 0 for --memmap (default 0)")
    p.add_argument("--boi", action="store_true", help="--memmap: add a begin-of-image id")
    p.add_argument("--eoi", action="store_true", help="--memmap: add an end-of-image id")
    p.add_argument("--eor", action="store_true", help="--memmap: add an end-of-row id after each row")
    p.add_argument("--layout", default=None, metavar="NAME",
                   help="write the memmap (implies --memmap) in a named LLM's id layout: chameleon, lumina-mgpt, emu3, "
                   "janus, show-o, liquid (imagetok.llm.get_layout)")
    p.add_argument("--hf-tokenizer", default=None, metavar="DIR",
                   help="with --layout: the LLM's transformers text tokenizer folder (every layout but janus needs it)")
    p.add_argument("--labels", default=None, metavar="folder|FILE",
                   help="add an int64 label column: 'folder' = class subfolders SRC/<class>/<image> (class names in "
                   "dataset_info.json 'classes'), or a .csv (path,label) / .json {path: label} file")
    p.add_argument("--max-member-mb", type=float, default=None,
                   help=f"tar members larger than this fail (listed in errors.jsonl) (default {MAX_MEMBER_MB:g})")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--micro-batch", type=int, default=None, metavar="N",
                   help="images per network call (default 1; tokens never depend on it or on --batch-size); raise it on a GPU")
    p.add_argument("--fast", action="store_true", help="bfloat16 network, float32 code search (tokens do not depend on the batch; may differ from the exact path)")
    p.add_argument("--image-column", default=None, help="table sources: the image column (bytes, {bytes, path} struct or path; default: detected)")
    p.add_argument("--key-column", default=None, help="table sources: a unique id column used as key (default: file#row)")
    p.add_argument("--label-column", default=None, help="table sources: a label column carried into the dataset")
    p.add_argument("--split", default=None, help="table sources: the split to read when a dataset holds several (train, test...)")
    p.set_defaults(func=cmd_tokenize_dataset)


def cmd_tokenize_dataset(args: argparse.Namespace) -> int:
    """Exit status: 0 all images tokenized, 3 dataset complete but some images failed, 1 not complete."""
    from ..data import token_dataset as td
    from ..errors import InputError

    td.require_pyarrow()
    out = args.out
    layout = _layout(args)  # checked before any work
    args.memmap = args.memmap or layout is not None
    if args.memmap and "://" in out and not out.startswith("file://"):
        raise InputError(f"--memmap writes a local memmap next to the dataset, and {out} is a URL: "
                         "use a local --out, or TokenDataset(url).to_memmap(local_dir)")
    if args.merge_only:
        info = td.merge_dataset(out)
        if info is None:
            print(f"imagetok tokenize-dataset: {out}: shards still missing; dataset_info.json not written", file=sys.stderr)
            return 1
        summary: dict[str, Any] = {"complete": True, "rows": info["counts"]["rows"], "failed": info["counts"]["failed"],
                                   "images": info["counts"]["images"], "info": _join(out, td.INFO_NAME)}
        is_main = True
    else:
        if not args.src:
            raise InputError("SRC is required (unless --merge-only)")
        import torch

        kw: dict[str, Any] = {}
        if args.size is not None:
            kw["size"] = None if args.size == "native" else args.size
        if args.dtype:
            kw["dtype"] = getattr(torch, args.dtype)
        if args.labels is not None:
            kw["labels"] = args.labels
        if args.max_member_mb is not None:
            if not args.max_member_mb > 0:
                raise InputError(f"--max-member-mb must be > 0, got {args.max_member_mb}")
            kw["max_member_bytes"] = int(args.max_member_mb * 2**20)
        summary = td.tokenize_dataset(
            args.src, out, model=args.model, batch_size=args.batch_size, workers=args.workers,
            shard_size=args.shard_size, draft=args.draft, device=args.device, rank=args.rank,
            world_size=args.world_size, progress=not args.quiet, fast=args.fast, image_column=args.image_column,
            key_column=args.key_column, label_column=args.label_column, split=args.split,
            micro_batch=args.micro_batch, **kw,
        )
        is_main = summary["complete"] is not None
    if summary.get("complete") and args.memmap and summary.get("rank", 0) == 0:
        ds = td.TokenDataset(out)
        if layout is not None:
            mm = td.export_memmap(ds, layout=layout)
        else:
            mm = td.export_memmap(ds, bridge=ds.bridge(offset=args.llm_offset, boi=args.boi, eoi=args.eoi, eor=args.eor))
        summary["memmap"] = {"dir": _join(out, "memmap"), **{k: mm[k] for k in ("dtype", "num_sequences", "num_tokens")}}
    if not is_main:  # a torchrun rank > 0: rank 0 reports the merged dataset
        print(f"rank {summary['rank']}: {summary['processed']} images, {summary['failed_now']} failed", file=sys.stderr)
        return 0
    if summary.get("complete"):
        failed = summary["failed"]
        msg = f"{summary['rows']} of {summary['images']} images tokenized into {_join(out, td.DATA_DIR)}"
        msg += f"; {failed} failed (listed in {_join(out, td.ERRORS_NAME)})" if failed else ""
        print(f"imagetok tokenize-dataset: {msg}", file=sys.stderr)
        print(json.dumps(summary))
        return EXIT_SOME_FAILED if failed else 0
    print(json.dumps(summary))
    print(
        f"imagetok tokenize-dataset: this part is done ({summary.get('processed')} images, {summary.get('failed_now')} failed); "
        "other parts are unfinished: rerun with --merge-only when all are done",
        file=sys.stderr,
    )
    return EXIT_SOME_FAILED if summary.get("failed_now") else 0


def _join(out: str, name: str) -> str:
    """``out/name`` for a folder or a URL (pathlib would fold ``s3://`` into ``s3:/``)."""
    return f"{out.rstrip('/')}/{name}" if "://" in out else str(Path(out) / name)


def _layout(args: argparse.Namespace) -> Any:
    """The ``--layout`` object (None without one), with the ``--hf-tokenizer`` it needs."""
    from ..errors import InputError

    if args.layout is None:
        if args.hf_tokenizer:
            raise InputError("--hf-tokenizer is used only with --layout")
        return None
    if args.llm_offset or args.boi or args.eoi or args.eor:
        raise InputError("--layout fixes the ids itself: drop --llm-offset/--boi/--eoi/--eor")
    from ..llm import get_layout

    hf = None
    if args.hf_tokenizer:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise InputError("--hf-tokenizer needs transformers: pip install transformers") from None
        try:
            hf = AutoTokenizer.from_pretrained(args.hf_tokenizer, local_files_only=True)
        except (OSError, ValueError) as e:
            raise InputError(f"--hf-tokenizer {args.hf_tokenizer}: cannot load a transformers tokenizer there ({e})") from None
    return get_layout(args.layout, hf)

