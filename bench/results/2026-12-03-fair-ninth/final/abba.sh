#!/bin/bash
# A = this session's scheduler + 64 entries (strata-e64), B = main d93f5b1 (strata-d93)
cd /work/main
for r in A-1 B-1 B-2 A-2; do
  case $r in A*) BIN=/var/tmp/strata-e64;; B*) BIN=/var/tmp/strata-d93;; esac
  /var/tmp/fair-bench-new2 --strata $BIN --repeats 1 --runtime 10 --image-size 6G --fuse-transport io-uring --dir /var/tmp/fb9 --out /var/tmp/fb12-out/$r > /var/tmp/fb12-out/$r.log 2>&1
done
echo ALLDONE > /var/tmp/fb12-out/done
