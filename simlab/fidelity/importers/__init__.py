"""Importers: public human datasets -> ``Tables`` in the record schema.

Each returns a normalised ``Tables``; write it with ``Tables.write`` (or
``simlab.fidelity.io.write_tables`` for an all-or-nothing write) to get the on-disk
form ``load_human`` reads.
"""

from simlab.fidelity.importers.dialogue_eval import import_dialogue_eval
from simlab.fidelity.importers.prism import import_prism

__all__ = ["import_dialogue_eval", "import_prism"]
