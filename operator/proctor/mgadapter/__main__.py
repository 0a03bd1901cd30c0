"""``python -m proctor.mgadapter``: see :mod:`proctor.integrations.metamorphic_guard.cli`."""

import sys

from proctor.integrations.metamorphic_guard.cli import main

sys.exit(main())
