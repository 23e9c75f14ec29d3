#!/bin/bash
# usage: [B=STRATA_BIN] [LIM=1] pinned.sh LABEL QUIET_CPUS [NOISY_CPUS]  (no NOISY_CPUS: quiet alone; "-" = unpinned).
# Needs /var/tmp/pin/s.img with layers quiet (weight 1000) and noisy, as the fair bench lays them out.
cd /var/tmp/pin
B=${B:-/var/tmp/strata-wl2}
umount mnt 2>/dev/null; for i in $(seq 50); do pgrep -f "pin/a.sock mount" >/dev/null || break; sleep 0.2; done
(nohup $B --admin-socket /var/tmp/pin/a.sock mount s.img mnt --metrics-addr off --snapshotter-socket off --diff-socket off > mount.log 2>&1 &)
for i in $(seq 50); do [ -e mnt/quiet/big ] && break; sleep 0.2; done
[ -n "$LIM" ] && $B --admin-socket /var/tmp/pin/a.sock layer limit quiet --io-weight 1000 >/dev/null
pin() { if [ "$1" = "-" ]; then echo ""; else echo "taskset -c $1"; fi; }
if [ -n "$3" ]; then
  $(pin $3) fio --name=noisy --filename=mnt/noisy/big --size=2G --rw=write --bs=1M --iodepth=32 --ioengine=io_uring --direct=1 --time_based --runtime=13 --output-format=json --output=/tmp/pin-n.json &
  NP=$!; sleep 2
fi
$(pin $2) fio --name=quiet --filename=mnt/quiet/big --size=1G --rw=randread --bs=4k --iodepth=1 --ioengine=psync --direct=1 --time_based --runtime=10 --output-format=json --output=/tmp/pin-q.json
[ -n "$NP" ] && wait $NP
python3 - "$1" "$3" <<'PY'
import json,sys
q=json.load(open("/tmp/pin-q.json"))["jobs"][0]["read"]
p=q["clat_ns"]["percentile"]
s=f'{sys.argv[1]}: quiet p50 {p["50.000000"]/1000:.0f} us p99 {p["99.000000"]/1000:.0f} us iops {q["iops"]:.0f}'
if sys.argv[2]:
    n=json.load(open("/tmp/pin-n.json"))["jobs"][0]["write"]
    s+=f'; noisy {n["bw"]/1024:.0f} MiB/s'
print(s)
PY
