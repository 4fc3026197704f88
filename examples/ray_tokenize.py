"""Recipe: tokenize images with Ray Data (``map_batches`` with a Tokenizer actor).

torchrun stays imagetok's engine for many processes and machines (``torchrun ... -m imagetok
tokenize-dataset``: atomic shards, resume, exactly one row per image). Use this recipe when your
pipeline already runs on a Ray cluster::

    pip install "imagetok[ray]"            # ray[data], pyarrow
    python examples/ray_tokenize.py "s3://bucket/images/**.jpg" s3://bucket/tokens --model my-model --actors 4
    python examples/ray_tokenize.py hf_dataset/data/ out/ --parquet --image-column image --key-column id

or from Python::

    import ray
    from ray_tokenize import TokenizerActor
    ds = ray.data.read_binary_files("s3://bucket/images/", include_paths=True)
    ds = ds.map_batches(TokenizerActor, fn_constructor_kwargs={"model": "my-model"}, batch_size=64,
                        batch_format="pyarrow", concurrency=4, num_gpus=1)   # num_gpus: per actor
    ds.write_parquet("s3://bucket/tokens")

Each actor loads the model once; each batch is decoded with imagetok's own preprocessing and
encoded with :class:`imagetok.data.encode.BatchEncoder` (on CUDA: pinned memory, non-blocking
copies), so the tokens equal ``Tokenizer.encode`` of the same image bytes. Output rows have the
columns of an imagetok token dataset (``key``, ``width``, ``height``, ``grid``, ``tokens``) plus
``error`` (null, or why the image was skipped: a bad image never fails the job).

What this recipe does **not** give you: imagetok's atomic shard commits, resume after a kill and
``dataset_info.json``; Ray Data retries failed tasks, and a retried write may leave extra files.
Deduplicate by ``key`` when you read the result, or use ``tokenize-dataset``.
"""

from __future__ import annotations

import argparse
from typing import Any, NamedTuple

import numpy as np


class _Decoded(NamedTuple):
    index: int
    pixels: np.ndarray | None


class TokenizerActor:
    """A Ray Data ``map_batches`` callable class: batch of image bytes -> batch of token rows.

    Args:
        model: a model name or folder for :meth:`imagetok.Tokenizer.from_pretrained` (None: bundled).
        size: resize + centre-crop side (default: the model's; 0 keeps each image's size).
        device: ``"cuda"`` / ``"cpu"`` (default: cuda when Ray gave this actor a GPU).
        fast: :attr:`imagetok.Tokenizer.fast` (bf16 network, float32 code search).
        image_column: the input column with the image (``bytes`` from ``read_binary_files``, or a
            ``{"bytes", "path"}`` struct / bytes column from ``read_parquet``).
        key_column: the input column used as key (``path`` from ``read_binary_files``).
    """

    def __init__(self, model: str | None = None, size: int | None = None, device: str | None = None, fast: bool = False,
                 image_column: str = "bytes", key_column: str = "path", threads: int | None = None):
        import torch

        from imagetok import Tokenizer
        from imagetok.data.encode import BatchEncoder

        if threads:
            torch.set_num_threads(threads)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tok = Tokenizer.from_pretrained(model, device=device, fast=fast)
        self.size = self.tok.default_size if size is None else (size or None)
        self.factor = max(self.tok.downsample_factors)
        self.encoder = BatchEncoder(self.tok)
        self.image_column, self.key_column = image_column, key_column
        k = max(self.tok.codebook_sizes)
        self.dtype = np.uint8 if k <= 256 else np.uint16 if k <= 65536 else np.uint32

    def _decode(self, value: Any, key: str) -> tuple[np.ndarray, int, int]:
        from imagetok import image as _image

        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        img, (w, h) = _image.read_image(value, name=key)
        arrays, _, _ = _image.to_rgb_arrays(img)
        return _image.fit(arrays[0], self.size, self.factor), w, h

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        images = batch.column(self.image_column).to_pylist()
        keys = [str(k) for k in batch.column(self.key_column).to_pylist()]
        items, sizes, errors = [], [], []
        for i, (value, key) in enumerate(zip(images, keys)):
            try:
                pixels, w, h = self._decode(value, key)
                items.append(_Decoded(i, pixels))
                sizes.append((w, h))
                errors.append(None)
            except Exception as e:  # one bad image is reported in its row, never fatal
                items.append(_Decoded(i, None))
                sizes.append((0, 0))
                errors.append(f"{type(e).__name__}: {e}")
        encoded: dict = {}
        for _, enc in self.encoder.submit(items) + self.encoder.flush():
            encoded.update(enc)
        grids = [encoded[i][0] if i in encoded else None for i in range(len(items))]
        tokens = [encoded[i][1].astype(self.dtype) if i in encoded else None for i in range(len(items))]
        return pa.table({
            "key": pa.array(keys, pa.string()),
            "width": pa.array([s[0] for s in sizes], pa.int32()),
            "height": pa.array([s[1] for s in sizes], pa.int32()),
            "grid": pa.array(grids, pa.list_(pa.int32())),
            "tokens": pa.array(tokens, pa.list_(pa.from_numpy_dtype(self.dtype))),
            "error": pa.array(errors, pa.string()),
        })


def tokenize_with_ray(src: str, out: str, *, model: str | None = None, parquet: bool = False, image_column: str | None = None,
                      key_column: str | None = None, batch_size: int = 64, actors: int = 1, gpus_per_actor: float = 0,
                      fast: bool = False, size: int | None = None) -> Any:
    """Read ``src`` (image files, or Parquet with ``parquet=True``), tokenize, write Parquet to ``out``."""
    import ray

    if parquet:
        if key_column is None:
            raise ValueError("Parquet sources need key_column (Ray Data gives rows no stable ids)")
        ds = ray.data.read_parquet(src)
        kw = {"image_column": image_column or "image", "key_column": key_column}
    else:
        ds = ray.data.read_binary_files(src, include_paths=True)
        kw = {"image_column": "bytes", "key_column": "path"}
    ds = ds.map_batches(TokenizerActor, fn_constructor_kwargs={"model": model, "fast": fast, "size": size, **kw},
                        batch_size=batch_size, batch_format="pyarrow", concurrency=actors, num_gpus=gpus_per_actor or None)
    ds.write_parquet(out)
    return ds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--model", default=None)
    ap.add_argument("--parquet", action="store_true", help="SRC is Parquet (e.g. a Hugging Face dataset's data/ folder)")
    ap.add_argument("--image-column", default=None)
    ap.add_argument("--key-column", default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--gpus-per-actor", type=float, default=0)
    ap.add_argument("--fast", action="store_true")
    args = ap.parse_args()
    tokenize_with_ray(args.src, args.out, model=args.model, parquet=args.parquet, image_column=args.image_column,
                      key_column=args.key_column, batch_size=args.batch_size, actors=args.actors,
                      gpus_per_actor=args.gpus_per_actor, fast=args.fast)


if __name__ == "__main__":
    main()
