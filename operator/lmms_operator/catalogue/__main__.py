"""``python -m lmms_operator.catalogue [--write]``: regenerate the catalogue."""

import sys

from . import main

sys.exit(main())
