"""``python -m simlab`` is ``python -m simlab.run``."""

import sys

from simlab.run import main

sys.exit(main())
