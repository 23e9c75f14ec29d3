#!/bin/bash
cd /var/tmp/p
S="/work/main/target/release/strata --admin-socket /var/tmp/p/a.sock"
a=$($S stats | sed -n 2p | grep -o "([0-9]*" | tr -d '(')
r=$(fio --name=w --filename=mnt/c1/f --rw=randread --bs=4k --direct=0 --invalidate=0 --ioengine=psync --time_based --runtime=${1:-3} --size=64M 2>&1 | grep -E "IOPS" | grep -o "IOPS=[^,]*")
b=$($S stats | sed -n 2p | grep -o "([0-9]*" | tr -d '(')
echo "$r requests $((b-a))"
