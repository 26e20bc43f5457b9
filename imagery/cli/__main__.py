"""`python -m imagery.cli`: the `berthwatch` command."""

import sys

from imagery.cli import main

sys.exit(main())
