"""``python -m scorer``: the same as the ``scorer`` command."""

from __future__ import annotations

import sys

from scorer.cli import main

sys.exit(main())
