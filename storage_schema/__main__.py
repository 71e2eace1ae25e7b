import sys

from storage_schema.cli import main

sys.exit(main())
