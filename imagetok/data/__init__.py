"""Image sources and token datasets.

- :mod:`imagetok.data.sources`: the one walker of image sources (folders, list files, ``.tar``
  shards, brace patterns) with one set of image extensions; used by ``tokenize-dataset``, ``usage``
  and ``train``. Needs only numpy.
- :mod:`imagetok.data.token_dataset`: the resumable, sharded Parquet writer, merge and reader
  (needs pyarrow: ``pip install 'imagetok[datasets]'``).

Importing this package imports neither torch-heavy code nor pyarrow; the names below load lazily.
"""

from __future__ import annotations

from typing import Any

from .sources import IMAGE_EXTENSIONS, MAX_TAR_MEMBER_BYTES, WorkList, list_source, list_sources

_TOKEN_DATASET = ("tokenize_dataset", "merge_dataset", "TokenDataset", "TokenRecord", "TokenBatch", "export_memmap",
                  "tokens_from_row")
__all__ = ["IMAGE_EXTENSIONS", "MAX_TAR_MEMBER_BYTES", "WorkList", "list_source", "list_sources", *_TOKEN_DATASET]


def __getattr__(name: str) -> Any:
    if name in _TOKEN_DATASET:
        from . import token_dataset

        return getattr(token_dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
