#!/bin/bash
# usage: qd32.sh [iodepth] [runtime]
cd /var/tmp/p
fio --name=r --filename=mnt/c1/big --rw=randread --bs=4k --direct=1 --ioengine=io_uring --iodepth=${1:-32} --time_based --runtime=${2:-5} --size=256M 2>&1 | grep -E "IOPS=|lat \(usec\): min|clat \(usec\)" | head -3 | tr -s ' ' | tr '\n' ' '; echo
