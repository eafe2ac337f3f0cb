"""The plain records storage code hands on: a listed object, and a folder entry with its version.

Example:
    >>> ObjectInfo("gs://b/cat.jpg", 1024).to_dict()["size"]
    1024
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"}
)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed image object: what later stages need without downloading it.

    Attributes:
        uri: Full URI, e.g. ``gs://bucket/photos/cat.jpg``.
        size: Bytes.
        md5: Base64 MD5 as GCS reports it (``None`` where the store gives none, e.g. composite
            objects or local files).
        crc32c: Base64 CRC32C as GCS reports it, or ``None``.
        generation: GCS object generation (changes on every overwrite), or ``None``.
        content_type: MIME type as stored.
        updated: Last modification time (UTC).
    """

    uri: str
    size: int
    md5: str | None = None
    crc32c: str | None = None
    generation: int | None = None
    content_type: str | None = None
    updated: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (``updated`` as ISO 8601)."""
        out = asdict(self)
        out["updated"] = self.updated.isoformat() if self.updated else None
        return out


OBJECT_FIELDS = tuple(f.name for f in fields(ObjectInfo))
"""The fields of :class:`ObjectInfo`, in order: CSV columns, Arrow columns, constructor order."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One object of a folder as a lease reads it: where, which version, written when.

    Attributes:
        path: The path inside the store's filesystem.
        generation: The version a conditional write or delete names (None where the store
            keeps none: then writes are unconditional).
        updated: When it was last written, in seconds since the epoch by the storage's clock.
    """

    path: str
    generation: int | None
    updated: float


def object_schema() -> Any:
    """The Arrow schema of :class:`ObjectInfo` records (for engines that move them as tables)."""
    import pyarrow as pa

    types = {
        "uri": pa.string(),
        "size": pa.int64(),
        "md5": pa.string(),
        "crc32c": pa.string(),
        "generation": pa.int64(),
        "content_type": pa.string(),
        "updated": pa.timestamp("us", tz="UTC"),
    }
    return pa.schema([pa.field(n, types[n], nullable=n != "uri") for n in OBJECT_FIELDS])


def parse_time(value: str | None) -> datetime | None:
    """A GCS JSON API time (RFC 3339, ``Z`` or an offset) as an aware datetime; None if empty.

    Example:
        >>> parse_time("2026-12-05T06:00:00.5Z").timestamp()
        1796450400.5
    """
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
