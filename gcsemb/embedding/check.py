"""``gcsemb check URL``: which identity is in use, and may it list, read and write there?

Example:
    >>> from gcsemb.embedding.check import check
    >>> print(check("gs://my-bucket/photos"))  # doctest: +SKIP
    identity: service account embedder@proj.iam.gserviceaccount.com
    list  gs://my-bucket/photos: yes (12 images seen)
    read  gs://my-bucket/photos/a.jpg: yes
    write gs://my-bucket/photos: no: ... It needs roles/storage.objectUser on the destination ...
"""

from __future__ import annotations

import html
import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

from gcsemb.errors import GcsembError
from gcsemb.storage import Store, explain, list_images, open_store

PROBE = "_gcsemb-write-check"


@dataclass
class Check:
    """One question (list, read or write) and its answer in plain words."""

    action: str
    target: str
    ok: bool | None  # None: not tried (an earlier step failed)
    detail: str

    def __str__(self) -> str:
        answer = {True: "yes", False: "no", None: "not tried"}[self.ok]
        return (
            f"{self.action:<5} {self.target}: {answer}{': ' + self.detail if self.detail else ''}"
        )


@dataclass
class CheckReport:
    """The identity in use and the answers; ``ok`` when every step passed."""

    url: str
    identity: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether listing, reading and writing all work."""
        return all(c.ok for c in self.checks)

    def __str__(self) -> str:
        return "\n".join([f"identity: {self.identity}", *map(str, self.checks)])

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{'✅' if c.ok else '⬜' if c.ok is None else '❌'}</td><td>{c.action}</td>"
            f"<td>{html.escape(c.target)}</td><td>{html.escape(c.detail)}</td></tr>"
            for c in self.checks
        )
        return f"<p>identity: {html.escape(self.identity)}</p><table>{rows}</table>"


def write_probe(store: Store) -> str | None:
    """Write a small object under ``store`` and delete it again.

    Only writing must work: an identity that may create objects but not delete them (e.g.
    ``roles/storage.objectCreator``) passes, and the probe stays behind, named in the answer.

    Returns:
        None, or a note that the probe could not be deleted.

    Raises:
        Exception: What the store raised when writing.
    """
    probe = f"{store.path.rstrip('/')}/{PROBE}-{uuid.uuid4().hex[:8]}"
    store.write(probe, b"gcsemb checks that it may write here; safe to delete")
    try:
        store.delete(probe)
    except Exception as e:
        reason = str(explain(e, store.uri(probe), store, "delete"))
        return f"wrote {store.uri(probe)} but could not delete it ({reason[:160]}); safe to delete"
    return None


def check(
    url: str | Store,
    *,
    token: Any = None,
    write: bool = True,
) -> CheckReport:
    """Answer: who am I here, and may I list, read and (optionally) write under ``url``?

    Args:
        url: A ``gs://`` prefix (or any fsspec URL), or a :class:`~gcsemb.storage.Store`.
        token: Credentials (see :mod:`gcsemb.storage.auth`).
        write: Also try writing (a small object, deleted at once).

    Returns:
        The report; ``str(report)`` is what ``gcsemb check`` prints.
    """
    store = open_store(url, token=token)
    report = CheckReport(store.url, store.identity.description)
    first = None
    try:
        seen = list(itertools.islice(list_images(store), 50))
        first = seen[0] if seen else None
        more = "50+" if len(seen) == 50 else str(len(seen))
        report.checks.append(Check("list", store.url, True, f"{more} images seen"))
    except GcsembError as e:
        report.checks.append(Check("list", store.url, False, str(e)))
    if first is None:
        report.checks.append(Check("read", store.url, None, "no image to read"))
    else:
        (data,) = store.read_many([store.fs._strip_protocol(first.uri)], [first.size])
        if isinstance(data, BaseException):
            detail = str(explain(data, first.uri, store))
            report.checks.append(Check("read", first.uri, False, detail))
        else:
            report.checks.append(Check("read", first.uri, True, ""))
    if write:
        try:
            note = write_probe(store)
            report.checks.append(Check("write", store.url, True, note or ""))
        except Exception as e:
            detail = str(explain(e, store.url, store, "write"))
            report.checks.append(Check("write", store.url, False, detail))
    return report
