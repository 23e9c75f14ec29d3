#!/bin/bash
cd /var/tmp/p
fio --name=r --filename=mnt/c1/big --rw=randread --bs=4k --direct=1 --ioengine=${ENG:-io_uring} --iodepth=${1:-32} --time_based --runtime=${2:-5} --size=256M --cpus_allowed=0 2>&1 | grep -E "IOPS=|lat \(usec\): min" | head -2 | tr -s ' ' | tr '\n' ' '; echo
