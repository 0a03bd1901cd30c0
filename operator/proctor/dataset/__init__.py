"""Datasets in: a run's cases as the rows of JSONL, CSV or Parquet files (local or S3).

- :mod:`~proctor.dataset.location`: the store, the root and the files of ``cases.dataset.uri``,
  in a fixed order; formats by suffix; Hive partitions;
- :mod:`~proctor.dataset.manifest`: the files with sizes, ETags and row counts, built once at
  admission and stored with the run; its fingerprint; detecting a change;
- :mod:`~proctor.dataset.text` and :mod:`~proctor.dataset.parquet`: counting rows and reading a
  row range of one file; :mod:`~proctor.dataset.rangefile`: ranged GETs as a file;
- :mod:`~proctor.dataset.reader`: rows ``[start, end)`` by case index, for the workers;
- :mod:`~proctor.dataset.open`: all of it wired for a run (credentials, storage).

See docs/datasets.md.
"""

from proctor.dataset.location import DatasetError, Location, locate
from proctor.dataset.manifest import (
    FileEntry,
    Manifest,
    build_manifest,
    changed,
    load_manifest,
    store_manifest,
)
from proctor.dataset.reader import DatasetReader

__all__ = [
    "DatasetError",
    "DatasetReader",
    "FileEntry",
    "Location",
    "Manifest",
    "build_manifest",
    "changed",
    "load_manifest",
    "locate",
    "store_manifest",
]
