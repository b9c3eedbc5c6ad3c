#!/bin/bash
# Run shard SHARD_INDEX of SHARD_COUNT of a study on this machine, with the run store on local
# disk (SQLite's write-ahead log must not sit on NFS/Lustre), then copy the finished shard run to
# SHARED. A rerun of the same shard (a requeued task, a retried pod) resumes from that copy.
# Used by slurm/prismx-array.sbatch and kubernetes/prismx-indexed-job.yaml.
set -uo pipefail

I=${SHARD_INDEX:?set SHARD_INDEX (this shard, from 0)}
N=${SHARD_COUNT:?set SHARD_COUNT (how many shards)}
CONFIG=${CONFIG:-configs/vllm.toml}      # its base_url: a vLLM router or proxy (see examples/README.md)
SHARED=${SHARED:?set SHARED (where finished shard runs are collected)}
LOCAL=${LOCAL:-${TMPDIR:-/tmp}/simlab-shard-$I}
mkdir -p "$LOCAL" "$SHARED"

for previous in "$SHARED"/*-shard"${I}"of"${N}"; do
    [ -d "$previous" ] && cp -r "$previous" "$LOCAL"/
done

python -m simlab.run --config "$CONFIG" --shard "$I/$N" --out "$LOCAL" --no-report --quiet
status=$?                                # 1: some sessions failed (recorded, with reasons)
cp -r "$LOCAL"/*-shard"${I}"of"${N}" "$SHARED"/ || exit 2
exit $status
