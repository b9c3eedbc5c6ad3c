"""``python -m simlab.store``: the store's command line (``simlab.store.cli``)."""

import sys

from simlab.store.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
