#!/bin/bash
# usage: ref.sh DIR LABEL [noisy]  -> quiet p50/p99 (us), iops; noisy MiB/s
D=$1; L=$2
Q="fio --name=quiet --filename=$D/q --size=1G --rw=randread --bs=4k --iodepth=1 --ioengine=psync --direct=1 --time_based --runtime=10 --output-format=json --output=/tmp/ref-q.json"
if [ "$3" = noisy ]; then
  sh -c "echo \$\$ > /sys/fs/cgroup/blkio/${CG:-.}/cgroup.procs; exec fio --name=noisy --filename=$D/n --size=2G --rw=write --bs=1M --iodepth=32 --ioengine=io_uring --direct=1 --time_based --runtime=14 --output-format=json --output=/tmp/ref-n.json" &
  NP=$!; sleep 2
fi
$Q
[ -n "$NP" ] && wait $NP
python3 - "$L" "$3" <<'PY'
import json,sys
q=json.load(open("/tmp/ref-q.json"))["jobs"][0]["read"]
p=q["clat_ns"]["percentile"]
s=f'{sys.argv[1]}: quiet p50 {p["50.000000"]/1000:.0f} us p99 {p["99.000000"]/1000:.0f} us iops {q["iops"]:.0f}'
if sys.argv[2]=="noisy":
    n=json.load(open("/tmp/ref-n.json"))["jobs"][0]["write"]
    s+=f'; noisy {n["bw"]/1024:.0f} MiB/s'
print(s)
PY
