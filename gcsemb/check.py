"""``gcsemb check URL``: which identity is in use, and may it list, read and write there?

Example:
    >>> from gcsemb.check import check
    >>> print(check("gs://my-bucket/photos"))  # doctest: +SKIP
    identity: service account embedder@proj.iam.gserviceaccount.com
    list  gs://my-bucket/photos: yes (12 images seen)
    read  gs://my-bucket/photos/a.jpg: yes
    write gs://my-bucket/photos: no: ... Grant it roles/storage.objectCreator ...
"""

from __future__ import annotations

import html
import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

from gcsemb.errors import GcsembError
from gcsemb.storage import explain, filesystem, identity_of, list_images

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


def write_probe(fs: Any, path: str) -> None:
    """Write and delete a small object under ``path``; raises what the store raised."""
    probe = f"{path.rstrip('/')}/{PROBE}-{uuid.uuid4().hex[:8]}"
    fs.pipe_file(probe, b"gcsemb checks that it may write here; safe to delete")
    fs.rm_file(probe)


def check(url: str, token: Any = None, *, write: bool = True, **options: Any) -> CheckReport:
    """Answer: who am I here, and may I list, read and (optionally) write under ``url``?

    Args:
        url: A ``gs://`` prefix (or any fsspec URL).
        token: Credentials (see :mod:`gcsemb.auth`).
        write: Also try writing (a small object, deleted at once).
        **options: ``project``, ``requester_pays`` and filesystem options.

    Returns:
        The report; ``str(report)`` is what ``gcsemb check`` prints.
    """
    fs, path = filesystem(url, token, **options)
    report = CheckReport(url, identity_of(fs))
    first = None
    try:
        seen = list(itertools.islice(list_images(url, token, **options), 50))
        first = seen[0] if seen else None
        more = "50+" if len(seen) == 50 else str(len(seen))
        report.checks.append(Check("list", url, True, f"{more} images seen"))
    except GcsembError as e:
        report.checks.append(Check("list", url, False, str(e)))
    if first is None:
        report.checks.append(Check("read", url, None, "no image to read"))
    else:
        try:
            with fs.open(fs._strip_protocol(first.uri), "rb") as f:
                f.read(1024)
            report.checks.append(Check("read", first.uri, True, ""))
        except Exception as e:
            report.checks.append(Check("read", first.uri, False, str(explain(e, first.uri, fs))))
    if write:
        try:
            write_probe(fs, path)
            report.checks.append(Check("write", url, True, ""))
        except Exception as e:
            report.checks.append(Check("write", url, False, str(explain(e, url, fs, "write"))))
    return report
