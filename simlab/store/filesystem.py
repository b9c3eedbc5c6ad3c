"""Which file system a store sits on: SQLite's write-ahead log is unsafe on network file systems
(NFS, Lustre, …), so a writer warns there and says to write to local disk and merge afterwards."""

from __future__ import annotations

import warnings
from pathlib import Path

__all__ = ["MOUNTS", "NETWORK_FILESYSTEMS", "NetworkFilesystemWarning", "filesystem_type", "warn_if_network"]

# File systems where SQLite's WAL (shared memory, byte-range locks) is unsafe: a shard's store
# must sit on local disk and be merged from there (``python -m simlab.store merge``).
NETWORK_FILESYSTEMS = frozenset({"nfs", "nfs4", "lustre", "cifs", "smb3", "smbfs", "gpfs", "beegfs", "ceph",
                                 "fuse.sshfs", "fuse.glusterfs", "glusterfs", "afs", "9p", "fuse.s3fs"})

MOUNTS = "/proc/mounts"


class NetworkFilesystemWarning(UserWarning):
    """A run store on a network file system (SQLite WAL can corrupt or deadlock there)."""


def filesystem_type(path: str | Path, mounts: str | Path | None = None) -> str | None:
    """The type of the file system holding ``path`` (the longest mount point above it), from
    ``mounts`` in /proc/mounts format; None where that cannot be read (not Linux)."""
    try:
        lines = Path(mounts or MOUNTS).read_text().splitlines()
    except OSError:
        return None
    target = Path(path).resolve()
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (target == point or point in target.parents) and (best is None or len(point.parts) > best[0]):
            best = (len(point.parts), fields[2])
    return best[1] if best else None


def warn_if_network(path: Path) -> None:
    """Warn (``NetworkFilesystemWarning``) when the store file ``path`` is on a network file system."""
    kind = filesystem_type(path.parent)
    if kind in NETWORK_FILESYSTEMS:
        warnings.warn(
            f"{path}: the run store is on a network file system ({kind}); SQLite's write-ahead log is not safe "
            "there. Write each run or shard to local disk (e.g. $TMPDIR on a compute node) and copy it, or merge "
            "shards with 'python -m simlab.store merge', afterwards (see examples/README.md)",
            NetworkFilesystemWarning, stacklevel=3)
