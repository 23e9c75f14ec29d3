#!/bin/bash
# ABBA on /dev/fuse: A = request poll 50 (default), B = 0
cd /work/main
OUT=${OUT:-/var/tmp/abd}
for r in A-1 B-1 B-2 A-2; do
  case $r in A*) p=50;; B*) p=0;; esac
  STRATA_REQUEST_POLL_US=$p target/release/strata-bench --quick --repeats 2 --only buf-randread-4k-hot,buf-seqread-4k-hot,buf-smallfiles,meta-,tar-,fio-randread-4k-qd1 --systems ext4,strata-dev --strata ${STRATA_BIN:-/work/main/target/release/strata} --out $OUT/$r > $OUT/$r.log 2>&1
done
echo done > $OUT/done
