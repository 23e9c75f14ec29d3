#!/bin/bash
# ABBA at full size, the QD32 rows only: A = COMMIT_EVERY (/var/tmp/strata-A), B = main
# before it (/var/tmp/strata-B).
cd /work/main
for r in A-1 B-1 B-2 A-2; do
  target/release/strata-bench --repeats 3 --only fio-randread-4k-qd32 \
    --systems ext4,strata --strata /var/tmp/strata-${r%-*} --out ${OUT:-/var/tmp/ce/qd32}/$r > ${OUT:-/var/tmp/ce/qd32}/$r.log 2>&1
done
echo done > ${OUT:-/var/tmp/ce/qd32}/done
