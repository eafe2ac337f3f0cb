"""What every ``gcsemb`` command shares: the Command record, the shared options, output helpers.

A command is one module of :mod:`gcsemb.cli` holding a :class:`Command`: its help texts, a
``configure(parser)`` that adds its arguments and a ``run(args)`` that does the work and returns
the exit status. :func:`gcsemb.cli.build_parser` only assembles them.
"""

from __future__ import annotations

import argparse
import io
import sys
import textwrap
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gcsemb.errors import READ_ROLE, WRITE_ROLE

if TYPE_CHECKING:
    from gcsemb.storage import Store

WIDTH = 79  # hand-wrapped help text fits an 80-column terminal
DEBUG_HELP = "show tracebacks and gcsfs logs"
TOKEN_HELP = (
    "credentials: a key file, '-' to read the key's JSON from stdin, 'anon', 'adc', "
    "'metadata' or 'colab' (default: application default credentials; see gcsemb --help)"
)
TOKEN_ON_COMMAND_LINE = (
    "gcsemb: warning: the key's JSON text was given on the command line, where every process "
    "listing shows it; pass a key file's path, or --token - to read the key from stdin."
)
ROLES_TEXT = f"""\
access: reading a source (list, check, embed) needs {READ_ROLE};
  writing a destination (embed; umap saves its projection there) needs
  {WRITE_ROLE}. `gcsemb check URL` says which identity is in use
  and what it may do there."""


@dataclass(frozen=True)
class Command:
    """One ``gcsemb`` command: its help texts, its arguments and what it does.

    Attributes:
        name: The command word (``gcsemb NAME``).
        summary: One line for the command list of ``gcsemb --help``.
        description: What it does and what it prints or writes (``gcsemb NAME --help``).
        examples: ``(command line, what it does)`` pairs; a long line goes on in
            the next line after a backslash. The first is also shown by ``gcsemb --help``.
        exit_status: When it exits 0 and when not.
        configure: Adds the command's arguments to its parser.
        run: Does the work; returns the exit status.
    """

    name: str
    summary: str
    description: str
    examples: tuple[tuple[str, str], ...]
    exit_status: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]

    @property
    def epilog(self) -> str:
        """The examples and the exit status, shown after the options."""
        lines = ["examples:"]
        for line, what in self.examples:
            lines += [f"  # {what}", *(f"  {part}" for part in line.splitlines())]
        status = textwrap.fill(f"exit status: {self.exit_status}", WIDTH, subsequent_indent="  ")
        return "\n".join([*lines, "", status])

    def add_to(self, commands: Any, parents: list[argparse.ArgumentParser]) -> None:
        """Add this command's parser to ``commands`` (the subparsers of ``gcsemb``)."""
        parser = commands.add_parser(
            self.name,
            parents=parents,
            help=self.summary,
            description=self.description,
            epilog=self.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.configure(parser)
        parser.set_defaults(func=self.run)


def add_field(group: Any, flag: str, owner: Any, *, name: str = "", **options: Any) -> None:
    """Add ``flag`` for the field ``name`` (default: the flag's) of the dataclass ``owner``.

    Its default and help are the field's (:func:`gcsemb.embedding.config.field_help`): stated once,
    in :mod:`gcsemb.embedding.config`. ``options`` go to ``add_argument`` (``default=None``: only a
    flag given is passed on, the config's default applies).
    """
    from gcsemb.embedding.config import field_default, field_help

    name = name or flag.lstrip("-").replace("-", "_")
    if options.get("action") != "store_true":
        options.setdefault("default", field_default(owner, name))
    group.add_argument(flag, help=field_help(owner, name), **options)


def add_debug(parser: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    """Add ``--debug``; ``inherited``: a command's copy, which keeps ``gcsemb --debug CMD``."""
    default = argparse.SUPPRESS if inherited else False
    parser.add_argument("--debug", action="store_true", default=default, help=DEBUG_HELP)


def command_options() -> argparse.ArgumentParser:
    """The options every command takes (``--debug``), as a parent parser."""
    parent = argparse.ArgumentParser(add_help=False)
    add_debug(parent, inherited=True)
    return parent


def add_credentials(parser: argparse.ArgumentParser) -> None:
    """``--token``, ``--project`` and ``--requester-pays``: what :func:`store_of` opens with."""
    group = parser.add_argument_group("credentials")
    group.add_argument("--token", type=token_value, help=TOKEN_HELP)
    group.add_argument(
        "--project", help="Google Cloud project (billing for requester-pays buckets)"
    )
    group.add_argument("--requester-pays", action="store_true", help="bill reads to --project")


def token_value(value: str) -> str:
    """``--token``: ``-`` reads the key's JSON from stdin, out of every process listing.

    Key text given on the command line still works, with a warning (never echoing it).

    Raises:
        argparse.ArgumentTypeError: ``-`` and nothing on stdin.
    """
    from gcsemb.storage.auth import json_text

    if value == "-":
        if sys.stdin.isatty():
            print("gcsemb: paste the key's JSON, then press Ctrl-D", file=sys.stderr)
        value = sys.stdin.read()
        if not value.strip():
            raise argparse.ArgumentTypeError("'-' reads the key from stdin, which was empty")
    elif json_text(value) is not None:
        print(TOKEN_ON_COMMAND_LINE, file=sys.stderr)
    return value


def store_of(args: argparse.Namespace, url: str) -> Store:
    """The handle for ``url`` with the access the options give.

    That is ``--token``, ``--project`` and ``--requester-pays``; the endpoint comes from
    ``STORAGE_EMULATOR_HOST``.
    """
    from gcsemb.storage import open_store

    return open_store(
        url, token=args.token, project=args.project, requester_pays=args.requester_pays
    )


_BIDI = {0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def printable(text: str) -> str:
    r"""``text`` safe for a terminal: control characters (and text-direction ones) escaped.

    Object names and a dataset's URIs are data: ``\x1b]0;...\x07`` must not retitle the
    terminal, nor a newline forge a line of output.

    Example:
        >>> printable("gs://b/a\x1b[2J.jpg")
        'gs://b/a\\x1b[2J.jpg'
    """
    return "".join(
        ch.encode("unicode_escape").decode()
        if unicodedata.category(ch) == "Cc" or ord(ch) in _BIDI
        else ch
        for ch in text
    )


def human_size(n: float) -> str:
    """Bytes as ``512 B``, ``1.5 MB``, ...; 1024-based."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def use_agg() -> None:
    """Draw without a display (matplotlib's Agg); without matplotlib, name the install."""
    from gcsemb.extras import require

    require("matplotlib", "viz", "Drawing", "pip install 'gcsemb[viz]' (or matplotlib)").use("Agg")


def save_figure(fig: Any, out: str, dpi: int, token: Any) -> tuple[int, int]:
    """Write a figure as PNG to a local path or a gs:// URL; return its pixel size."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = buf.getvalue()
    if "://" in out:
        from gcsemb.storage import open_store

        store = open_store(out, token=token)
        store.fs.pipe_file(store.path, data)
    else:
        with open(out, "wb") as f:
            f.write(data)
    return Image.open(io.BytesIO(data)).size
