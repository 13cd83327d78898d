"""`python -m control ...` is `station-control ...`."""

import sys

from control.cli import main

sys.exit(main())
