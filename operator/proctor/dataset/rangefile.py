"""A read-only, seekable file over ranged GETs of one object version, for pyarrow and streams.

Reads go to the store as ``Range`` requests pinned to the object's ETag, so a file replaced
while a run reads it is detected (:class:`proctor.storage.ObjectChangedError`), never mixed.
"""

from __future__ import annotations

import io

from proctor.storage import Blobs


class RangeFile(io.RawIOBase):
    """Bytes of ``key`` (``size`` bytes, version ``etag``) read on demand."""

    def __init__(self, blobs: Blobs, key: str, size: int, etag: str | None) -> None:
        super().__init__()
        self.blobs = blobs
        self.key = key
        self.size = size
        self.etag = etag
        self.pos = 0
        self.requests = 0
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read_range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` in one request."""
        end = min(end, self.size)
        if end <= start:
            return b""
        data = self.blobs.get_range(self.key, start, end, self.etag)
        self.requests += 1
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self.size - self.pos)
        if want <= 0:
            return 0
        data = self.read_range(self.pos, self.pos + want)
        n = len(data)
        buffer[:n] = data
        self.pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self.pos + size)
        data = self.read_range(self.pos, end)
        self.pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)


def sequential(blobs: Blobs, key: str, size: int, etag: str | None) -> io.BufferedReader:
    """A buffered stream of the whole object, read in 8 MiB ranges (constant memory)."""
    return io.BufferedReader(RangeFile(blobs, key, size, etag), buffer_size=8 << 20)
