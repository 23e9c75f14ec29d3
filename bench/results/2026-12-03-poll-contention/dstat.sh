#!/bin/bash
# usage: dstat.sh CMD... : runs CMD, prints vda reads, KiB per read, merged
s() { awk '$3=="vda"{print $4, $5, $6}' /proc/diskstats; }
read r0 m0 s0 < <(s)
"$@"
read r1 m1 s1 < <(s)
echo "vda reads $((r1-r0)) merged $((m1-m0)) KiB/read $(( (s1-s0)/2/( (r1-r0) > 0 ? (r1-r0) : 1) ))"
