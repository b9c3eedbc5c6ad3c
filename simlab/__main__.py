"""``python -m simlab`` is the ``simlab`` command (with no command: ``run``)."""

import sys

from simlab.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
