#!/bin/bash
# usage: ref2.sh LABEL BS QD [RATE]: quiet 4k randread QD1 beside a writer of BS at QD (rate-limited)
L=$1; BS=$2; QD=$3; R=${4:+--rate=$4}
fio --name=noisy --filename=/var/tmp/fairref/n --size=2G --rw=write --bs=$BS --iodepth=$QD --ioengine=io_uring --direct=1 $R --time_based --runtime=14 --output-format=json --output=/tmp/ref-n.json &
NP=$!; sleep 2
fio --name=quiet --filename=/var/tmp/fairref/q --size=1G --rw=randread --bs=4k --iodepth=1 --ioengine=psync --direct=1 --time_based --runtime=10 --output-format=json --output=/tmp/ref-q.json
wait $NP
python3 - "$L" <<'PY'
import json,sys
q=json.load(open("/tmp/ref-q.json"))["jobs"][0]["read"]; p=q["clat_ns"]["percentile"]
n=json.load(open("/tmp/ref-n.json"))["jobs"][0]["write"]
print(f'{sys.argv[1]}: quiet p50 {p["50.000000"]/1000:.0f} us p99 {p["99.000000"]/1000:.0f} us iops {q["iops"]:.0f}; noisy {n["bw"]/1024:.0f} MiB/s, {n["iops"]:.0f} ops/s')
PY
