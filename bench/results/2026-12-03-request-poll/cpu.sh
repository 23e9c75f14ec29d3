#!/bin/bash
pid=$(pgrep -f "a.sock mount" | head -1)
t0=$(awk '{print $14+$15}' /proc/$pid/stat); s0=$(date +%s.%N)
"$@"
t1=$(awk '{print $14+$15}' /proc/$pid/stat); s1=$(date +%s.%N)
echo "daemon cpu: $(( t1 - t0 )) ticks over $(echo "$s1 - $s0" | bc) s"
