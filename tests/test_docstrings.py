"""Every example in gcsemb's docstrings runs and shows what it says (``make test`` keeps them true).

Examples that need a bucket, credentials or a GPU carry ``# doctest: +SKIP``; the rest run here,
module by module, with the same option pytest's ``--doctest-modules`` uses (``ELLIPSIS``).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gcsemb

MODULES = (
    ["gcsemb"]
    + sorted(  # not __main__: importing it runs the CLI
        m.name
        for m in pkgutil.walk_packages(gcsemb.__path__, "gcsemb.")
        if m.name[-8:] != "__main__"
    )
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name, capsys):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=False)
    failures = capsys.readouterr().out
    assert result.failed == 0, failures


def test_the_examples_are_many():
    finder = doctest.DocTestFinder()
    examples = sum(
        len(t.examples) for name in MODULES for t in finder.find(importlib.import_module(name))
    )
    assert examples >= 150  # about 180 today: a module's examples can't silently vanish
