"""pytest settings for the notebooks, which nbval runs cell by cell (options in pyproject.toml).

Each code cell is one test item; its fresh output must equal the output stored in the notebook,
after nbval.ini's sanitizers rewrote what legitimately varies (ports, timestamps, timings).
Cells whose output cannot be stable say so with ``# NBVAL_IGNORE_OUTPUT``.

To refresh the stored outputs after a change: ``make notebooks``, then commit the notebooks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Find nbval.ini (named relative to the repository root) from any working directory."""
    sanitize = getattr(config.option, "nbval_sanitize_with", None)
    if sanitize and not Path(sanitize).is_file() and (ROOT / sanitize).is_file():
        config.option.nbval_sanitize_with = str(ROOT / sanitize)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark notebook cells ``notebook`` and ``slow``: ``pytest -m "not slow"`` skips them.

    Each notebook starts a kernel, an emulator and a model, so they count as slow tests.
    """
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebook)
            item.add_marker(pytest.mark.slow)
