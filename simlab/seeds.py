"""Seeds derived from the run seed and a unit's ids: the same unit gets the same seed in any
process, run or resume, so a run is reproducible and a resumed run redoes nothing differently."""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed", "sampling_seed"]


def derive_seed(run_seed: int, *parts: object) -> int:
    """A 63-bit seed from the run seed and a unit's ids (stable across processes and runs)."""
    text = "|".join([str(run_seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


SAMPLING_SEED_MODULUS = 2**31
"""Servers take a sampling seed as a signed 32-bit integer (llama.cpp, vLLM, hosted APIs)."""


def sampling_seed(seed: int) -> int:
    """A derived seed as a server's sampling seed (``SAMPLING_SEED_MODULUS``)."""
    return int(seed) % SAMPLING_SEED_MODULUS
