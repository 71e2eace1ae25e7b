"""Deprecated: ``python -m storage_schema`` forwards to ``python -m probestore`` for one release.

The command line moved to :mod:`probestore.cli` (the contract package no longer owns
the CLI of every stage); this forwarder keeps old scripts working while telling them
where it went.
"""

import sys

print("python -m storage_schema is deprecated; use python -m probestore", file=sys.stderr)

from probestore.cli import main  # noqa: E402  (the notice comes first, even if the import fails)

sys.exit(main())
