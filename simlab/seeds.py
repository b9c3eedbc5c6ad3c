"""Seeds derived from the run seed and a unit's ids: the same unit gets the same seed in any
process, run or resume, so a run is reproducible and a resumed run redoes nothing differently."""

from __future__ import annotations

import hashlib


def derive_seed(run_seed: int, *parts: object) -> int:
    """A 63-bit seed from the run seed and a unit's ids (stable across processes and runs)."""
    text = "|".join([str(run_seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1
