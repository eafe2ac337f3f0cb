"""Optional parts, imported where they are used, with the install line when they are missing.

Example:
    >>> require("json", "viz", "plots").__name__
    'json'
    >>> require("no_such_module_xyz", "viz", "Plots")
    Traceback (most recent call last):
    ...
    ImportError: Plots need no_such_module_xyz: pip install 'gcsemb[viz]'
"""

from __future__ import annotations

import importlib
from types import ModuleType


def require(
    module: str,
    extra: str | None,
    what: str,
    hint: str | None = None,
    package: str | None = None,
) -> ModuleType:
    """Import ``module`` (e.g. ``"ray.data"``), or say which gcsemb extra installs it.

    Args:
        module: The module to import.
        extra: The gcsemb extra that brings it (``viz``, ``notebook``, ``demo``, ``ray``).
        what: Who needs it, for the message (``"The Ray engine"``).
        hint: How to install it, when not through an extra.
        package: Its name for the message (default: the top-level module's).

    Raises:
        ImportError: Not installed (naming ``pip install 'gcsemb[extra]'``), or installed but
            failing to import (naming the underlying error, chained).
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        hint = hint or f"pip install 'gcsemb[{extra}]'"
        top = module.split(".")[0]
        name = package or top
        verb = "need" if what.endswith("s") else "needs"
        if e.name is not None and e.name.split(".")[0] != top:  # installed, but broken
            raise ImportError(
                f"{what} {verb} {name}, which is installed but fails to import ({e}); "
                f"reinstalling may help: {hint}"
            ) from e
        raise ImportError(f"{what} {verb} {name}: {hint}") from e
