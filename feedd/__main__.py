"""`python -m feedd`: the same entry point as the `feedd` console script."""

import sys

from feedd.cli import main

sys.exit(main())
