"""``gcsemb check``: which identity is in use, and may it list, read and write at URL?"""

from __future__ import annotations

import argparse

from gcsemb.cli.common import Command, add_credentials, printable, store_of
from gcsemb.errors import READ_ROLE, WRITE_ROLE

DESCRIPTION = f"""\
Say in plain words who gcsemb is on this machine (the identity the credentials
resolve to) and whether it may list, read and write under URL. Reading tries
the first image listed; writing puts a small object under URL and deletes it
at once.

prints: the identity, then one line per step (list, read, write): yes, no with
  the reason and the fix, or not tried.
access: reading a source needs {READ_ROLE}; a destination
  needs {WRITE_ROLE}."""


def configure(p: argparse.ArgumentParser) -> None:
    """The arguments of ``gcsemb check``."""
    p.add_argument("url", help="gs://bucket/prefix to test")
    add_credentials(p)
    p.add_argument("--no-write", action="store_true", help="do not test writing")


def run(args: argparse.Namespace) -> int:
    """Say which identity is in use and whether it may list, read and write at URL."""
    from gcsemb.embedding.check import check

    report = check(store_of(args, args.url), write=not args.no_write)
    lines = [f"identity: {report.identity}", *map(str, report.checks)]
    print("\n".join(map(printable, lines)))  # an object's name never forges a line
    return 0 if report.ok else 1


COMMAND = Command(
    name="check",
    summary="which identity is in use, and may it list, read and write at URL?",
    description=DESCRIPTION,
    examples=(
        ("gcsemb check gs://my-bucket/embeddings", "may I embed into this destination?"),
        ("gcsemb check gs://public-bucket/photos --token anon --no-write", "a public source"),
        ("gcsemb check gs://my-bucket/photos --token key.json", "what may this key do?"),
    ),
    exit_status="0 when every step works (listing, reading and, without --no-write, "
    "writing); 1 when one is denied or could not be tried (e.g. no image to read).",
    configure=configure,
    run=run,
)
