"""``python -m proctor.mgadapter``: see :mod:`proctor.mgadapter.cli`."""

import sys

from proctor.mgadapter.cli import main

sys.exit(main())
