"""The result cache: each side's results on unchanged cases reused across runs (docs/cache.md).

:mod:`~proctor.cache.keys` derives what an entry is keyed by and where it lives,
:mod:`~proctor.cache.store` reads and writes its immutable pieces, :mod:`~proctor.cache.task`
puts the lookup in front of a loaded task's evaluation, :mod:`~proctor.cache.setup` opens a
run's cache from its spec, and :mod:`~proctor.cache.clear` empties it (``proctor cache clear``).
"""

from proctor.cache.keys import SideKey, UnfingerprintableError
from proctor.cache.setup import open_cache_blobs, probe_writable, task_keys, with_cache
from proctor.cache.store import CacheStore, Entry
from proctor.cache.task import CachedTask, MemoRows

__all__ = [
    "CacheStore",
    "CachedTask",
    "Entry",
    "MemoRows",
    "SideKey",
    "UnfingerprintableError",
    "open_cache_blobs",
    "probe_writable",
    "task_keys",
    "with_cache",
]
