"""python -m threadguard: the same as the threadguard command."""

import sys

from .cli import main

sys.exit(main())
