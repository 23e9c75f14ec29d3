#!/bin/bash
# ABBA at full size, the QD1 device-read row: A = this change (/var/tmp/strata-new), B = main before it (/var/tmp/strata-main)
cd /work/main
OUT=${OUT:-/var/tmp/pc/qd1}; mkdir -p $OUT
for r in A-1 B-1 B-2 A-2; do
  b=new; [ ${r%-*} = B ] && b=main
  target/release/strata-bench --repeats 3 --only fio-randread-4k-qd1 \
    --systems ext4,strata --strata /var/tmp/strata-$b --out $OUT/$r > $OUT/$r.log 2>&1
done
echo done > $OUT/done
