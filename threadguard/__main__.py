"""python -m threadguard: the same as the threadguard command."""

import sys

from ._cli import main

sys.exit(main())
