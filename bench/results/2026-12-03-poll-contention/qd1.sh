#!/bin/bash
cd /var/tmp/p
fio --name=r --filename=${F:-mnt/c1/big} --rw=randread --bs=4k --direct=1 --ioengine=io_uring --iodepth=1 --time_based --runtime=${1:-3} --size=256M 2>&1 | grep -E "IOPS=|clat percentiles" -A3 | grep -E "IOPS|50.00th" | tr -s ' ' | sed -E 's/BW=.*//; s/.*(50.00th=\[ *[0-9]+\]).*/\1/' | tr '\n' ' '; echo
