#!/bin/bash
# usage: ab.sh LABEL ENV... ; mounts /var/tmp/tr/img with env, runs fio randread QD32 and QD1, prints IOPS/lat, unmounts
cd /var/tmp/tr
label=$1; shift
B=${B:-/work/exp/strata-qpin}
env "$@" $B mount img mnt --cache-size 0 --admin-socket /var/tmp/tr/adm.sock --metrics-addr 127.0.0.1:9488 --snapshotter-socket off --diff-socket off --keeper-socket /var/tmp/tr/keep.sock > daemon-$label.log 2>&1 &
for i in $(seq 50); do [ -e mnt/default/f ] && break; sleep 0.1; done
out=""
for spec in "32 ${RT:-4}" "1 ${RT1:-3}"; do set -- $spec
 r=$(fio --name=r --filename=mnt/default/f --rw=randread --bs=4k --iodepth=$1 --direct=1 --ioengine=${ENG:-io_uring} --runtime=$2 --time_based --lat_percentiles=1 --output-format=json 2>/dev/null | python3 /work/exp/tools/fj.py)
 out="$out qd$1: $r;"
done
d=$(fio --name=r --filename=img --offset=128M --size=1G --rw=randread --bs=4k --iodepth=32 --direct=1 --ioengine=io_uring --runtime=2 --time_based --output-format=json 2>/dev/null | python3 /work/exp/tools/fj.py)
echo "$label:$out img-qd32: $d"
umount mnt; sleep 1; pkill -f "keep.sock" ; sleep 0.5
