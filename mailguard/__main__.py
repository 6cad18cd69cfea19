"""``python -m mailguard``: the same command as ``mailguard`` (see :mod:`mailguard.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
