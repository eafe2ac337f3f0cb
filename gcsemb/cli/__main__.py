"""``python -m gcsemb.cli``: the ``gcsemb`` command."""

import sys

from gcsemb.cli import main

sys.exit(main())
