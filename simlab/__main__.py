"""``python -m simlab`` is the ``simlab`` command (with no command: ``run``)."""

import sys

from simlab.cli import main

sys.exit(main())
