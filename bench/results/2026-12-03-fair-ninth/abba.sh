#!/bin/bash
# The loop behind sched/, entries64/ and final/: strata-fair-bench with build A and build B
# taking turns, one 10 s run per scenario each.
#   abba.sh BENCH A_BIN B_BIN OUT RUN...      e.g. RUN = A-1 B-1 B-2 A-2 A-3 B-3
# sched/:     A = 2b64b69's scheduler alone (32 ring entries), B = main d93f5b1, six runs;
#             BENCH without the same-CPU row (its host rows are f and g there)
# entries64/: A = the same + 64 ring entries (b00455e), B = d93f5b1, six runs
# final/:     A = b00455e, B = d93f5b1, A-1 B-1 B-2 A-2, BENCH = 31b9471's
set -eu
BENCH=$1 A=$2 B=$3 OUT=$4
shift 4
for r in "$@"; do
  case $r in A*) BIN=$A ;; *) BIN=$B ;; esac
  "$BENCH" --strata "$BIN" --repeats 1 --runtime 10 --image-size 6G --fuse-transport io-uring \
    --dir /var/tmp/fb9 --out "$OUT/$r" > "$OUT/$r.log" 2>&1
done
