"""`python -m erase ...` (and `accelerate launch -m erase ...`): the `erase` command."""

import sys

from erase.cli.main import main

sys.exit(main())
