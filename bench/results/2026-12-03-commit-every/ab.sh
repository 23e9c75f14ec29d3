#!/bin/bash
# ABBA: A = COMMIT_EVERY (replies and device reads handed on every 4 items of a batch),
# B = main before it (ab2c351). Binaries: /var/tmp/strata-A (new), /var/tmp/strata-B (old).
cd /work/main
for r in A-1 B-1 B-2 A-2; do
  target/release/strata-bench --quick --repeats 2 \
    --only fio-randread,fio-seqread,meta-,tar-,buf-randread-4k-hot-inherited,buf-smallfiles \
    --systems ext4,strata --strata /var/tmp/strata-${r%-*} --out ${OUT:-/var/tmp/ce}/$r > ${OUT:-/var/tmp/ce}/$r.log 2>&1
done
echo done > ${OUT:-/var/tmp/ce}/done
