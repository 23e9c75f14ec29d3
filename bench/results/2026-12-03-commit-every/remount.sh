#!/bin/bash
# usage: remount.sh POLL_US
cd /var/tmp/p
umount mnt 2>/dev/null; sleep 1
pkill -f "a.sock mount" ; sleep 0.5
STRATA_REQUEST_POLL_US=$1 nohup ${STRATA_BIN:-/work/main/target/release/strata} --admin-socket /var/tmp/p/a.sock mount $EXTRA s.img mnt > mount.log 2>&1 &
for i in $(seq 50); do [ -e mnt/c1/f ] && break; sleep 0.2; done
cat mnt/c1/f > /dev/null
