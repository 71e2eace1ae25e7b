"""``python -m probestore``: the same as the ``probestore`` command."""

import sys

from probestore.cli import main

sys.exit(main())
