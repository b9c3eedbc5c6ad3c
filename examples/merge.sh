#!/bin/bash
# Merge every shard run in SHARED into one run (built on local disk, then copied to RESULT) and
# write its report (with the human comparison when HUMAN is set).
set -euo pipefail

SHARED=${SHARED:?set SHARED (the folder of finished shard runs)}
RESULT=${RESULT:?set RESULT (where the merged run goes)}
LOCAL=${LOCAL:-${TMPDIR:-/tmp}/simlab-merge-$$}
rm -rf "$LOCAL"
python -m simlab.store merge "$LOCAL" "$SHARED"/*-shard*of*
python -m simlab.report --run "$LOCAL" ${HUMAN:+--human "$HUMAN"}
mkdir -p "$RESULT"
cp -r "$LOCAL"/. "$RESULT"/
echo "merged run: $RESULT (report: $RESULT/report.html)"
