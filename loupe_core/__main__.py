"""``python -m loupe_core ...`` is the ``loupe`` command."""
import sys

from loupe_core.cli import main

sys.exit(main())
