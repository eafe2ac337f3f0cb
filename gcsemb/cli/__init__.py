"""The ``gcsemb`` command line: the same work as the notebooks, from a terminal.

One module per command (:mod:`~gcsemb.cli.listing` for ``list``, then ``check``, ``embed``,
``demo``, ``umap``, ``search``), each a :class:`~gcsemb.cli.common.Command` holding its help
texts, its arguments and its ``run(args)``. :func:`build_parser` assembles them; :func:`main` runs
one and turns any error into one line on stderr.

Run ``gcsemb --help`` or ``gcsemb COMMAND --help``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gcsemb.cli import check, demo, embed, index, listing, search, umap
from gcsemb.cli.common import ROLES_TEXT, Command, add_debug, command_options
from gcsemb.errors import GcsembError

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: tuple[Command, ...] = tuple(
    m.COMMAND for m in (demo, listing, check, embed, umap, index, search)
)

DESCRIPTION = "CLIP embeddings of the images in a Google Cloud Storage bucket, as parquet."

CREDENTIALS = """\
credentials (list, check, embed, umap, index, search):
  (no --token)          application default credentials (`gcloud auth
                        application-default login`, the key file named by
                        GOOGLE_APPLICATION_CREDENTIALS, Colab, or the VM's
                        service account on Vertex AI or Compute Engine)
  --token anon          no credentials, for public buckets
  --token key.json      a service-account (or other) JSON key file
  --token "$KEY_JSON"   the key's JSON text, e.g. a CI secret held in a variable
  --token metadata      the VM's service account, from the metadata server
  --token colab         sign in with Colab's authenticate_user() first
  --token adc           application default credentials only
  STORAGE_EMULATOR_HOST=127.0.0.1:4443 points gcsemb at a GCS emulator (such as
  fake-gcs-server) instead of Google; without credentials it goes anonymous."""

EXIT_STATUS = """\
exit status: 0 on success; 1 on an error, said in one line on stderr (--debug
  shows the traceback) and by `gcsemb check` when an access is missing; 2 for a
  wrong command line; 130 when interrupted."""


def top_epilog(commands: Sequence[Command]) -> str:
    """The epilog of ``gcsemb --help``: one example per command, credentials, access, exit."""
    examples = [f"  {c.examples[0][0]}" for c in commands]
    more = "  (gcsemb COMMAND --help: what it prints or writes, and more examples)"
    return "\n\n".join(
        ["\n".join(["examples:", *examples, more]), CREDENTIALS, ROLES_TEXT, EXIT_STATUS]
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="gcsemb",
        description=DESCRIPTION,
        epilog=top_epilog(COMMANDS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_debug(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = [command_options()]
    for command in COMMANDS:
        command.add_to(sub, parents)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gcsemb`` command: run one command, any error in one line."""
    args = build_parser().parse_args(argv)
    configure_logging(args.debug)
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `gcsemb list ... | head`
        return 0
    except KeyboardInterrupt:
        print("gcsemb: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"gcsemb: error: {error_line(e)}", file=sys.stderr)
        return 1


def configure_logging(debug: bool) -> None:
    """Warnings only, or everything with ``--debug``."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING)
    if not debug:
        # gcsfs logs every failed request with a traceback before raising; we print one line.
        logging.getLogger("gcsfs").setLevel(logging.CRITICAL)


def error_line(e: Exception) -> str:
    """An error as the one line ``gcsemb`` prints: gcsemb's own say what to do already."""
    if isinstance(e, GcsembError):
        return str(e)
    return f"{type(e).__name__}: {e} (run with --debug for the traceback)"
