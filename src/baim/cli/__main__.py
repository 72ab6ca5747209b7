"""``python -m baim.cli``: the same as the ``baim`` command."""

import sys

from . import main

sys.exit(main())
