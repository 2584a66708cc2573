"""``python -m tledge.cli``: the ``tledge`` command."""

import sys

from tledge.cli import main

sys.exit(main())
