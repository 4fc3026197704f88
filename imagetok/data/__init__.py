"""Image datasets: sources (folders, lists, tar shards, tables, URLs) and token datasets."""
