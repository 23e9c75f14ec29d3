#!/bin/bash
# ab2.sh LABEL PRIOCMD : mount, apply PRIOCMD to each fuseq thread (TID appended), fio qd32/qd1 + hot inherited reads, unmount
cd /var/tmp/tr
label=$1; prio=$2
B=${B:-/work/main/target/release/strata}
$B mount img mnt --cache-size 0 --admin-socket /var/tmp/tr/adm.sock --metrics-addr 127.0.0.1:9488 --snapshotter-socket off --diff-socket off --keeper-socket /var/tmp/tr/keep.sock > daemon-$label.log 2>&1 &
for i in $(seq 50); do [ -e mnt/default/f ] && break; sleep 0.1; done
P=$(pgrep -f "$B mount img" | head -1)
if [ -n "$prio" ]; then for t in $(ps -L -o tid=,comm= -p $P | awk '/fuseq/ {print $1}'); do $prio $t >/dev/null; done; fi
out=""
for spec in "32 ${RT:-4}" "1 ${RT1:-3}"; do set -- $spec
 r=$(fio --name=r --filename=mnt/default/f --rw=randread --bs=4k --iodepth=$1 --direct=1 --ioengine=${ENG:-io_uring} --runtime=$2 --time_based --lat_percentiles=1 --output-format=json 2>/dev/null | python3 /work/exp/tools/fj.py)
 out="$out qd$1: $r;"
done
st=$(python3 -c "
import os,time
d='/var/tmp/tr/mnt/default/u'
os.makedirs(d, exist_ok=True)
n=2000
t=time.perf_counter()
for i in range(n): os.close(os.open(f'{d}/f{i}', os.O_CREAT|os.O_WRONLY, 0o644))
c=(time.perf_counter()-t)/n*1e6
t=time.perf_counter()
for i in range(n): os.stat(f'{d}/f{i}')
s=(time.perf_counter()-t)/n*1e6
t=time.perf_counter()
for i in range(n): os.unlink(f'{d}/f{i}')
u=(time.perf_counter()-t)/n*1e6
print(f'create {c:.1f} stat {s:.1f} unlink {u:.1f} us')
")
echo "$label:$out $st"
umount mnt; sleep 1; pkill -f "keep.sock" ; sleep 0.5
