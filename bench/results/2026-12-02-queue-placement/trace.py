import sys, re, collections, statistics
# perf script output analysis: latencies of FUSE requests, the daemon's device reads, block requests
lines = sys.stdin
line_re = re.compile(r'^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)$')
fuse_send = {}; fuse_lat = []
uring_sub = {}; dev_lat = []; sub_to_issue = []; taskadd_to_complete = []; bc_to_taskadd = []
last_sub_by_tid = {}
blk_issue = {}; blk_lat = []; blk_lat_daemon = []
blk_done_for_req = {}
taskadd = {}
async_work = 0
inflight_blk = 0; blk_area = 0.0; last_t = None; t0 = None
fuse_inflight = 0; fuse_area = 0.0
idle = collections.Counter(); last_switch = {}
daemon_ring = set()
for ln in lines:
    m = line_re.match(ln)
    if not m: continue
    comm, tid, cpu, t, ev, rest = m.groups(); t = float(t); cpu = int(cpu)
    if t0 is None: t0 = t
    if last_t is not None:
        blk_area += inflight_blk * (t - last_t); fuse_area += fuse_inflight * (t - last_t)
    last_t = t
    if ev == 'fuse:fuse_request_send':
        rid = re.search(r'req (\d+) opcode (\d+)', rest)
        fuse_send[rid.group(1)] = t; fuse_inflight += 1
    elif ev == 'fuse:fuse_request_end':
        rid = re.search(r'req (\d+)', rest).group(1)
        if rid in fuse_send:
            fuse_lat.append(t - fuse_send.pop(rid)); fuse_inflight -= 1
    elif ev == 'io_uring:io_uring_submit_req':
        if 'strata' in comm and 'opcode READ' in rest:
            req = re.search(r'req (0x[0-9a-f]+)', rest).group(1)
            uring_sub[req] = t; last_sub_by_tid[tid] = req
    elif ev == 'block:block_rq_issue':
        mm = re.search(r'(\d+) \+ (\d+)', rest)
        if mm:
            blk_issue[mm.group(1)] = (t, 'strata' in comm, last_sub_by_tid.pop(tid, None))
            inflight_blk += 1
    elif ev == 'block:block_rq_complete':
        mm = re.search(r'(\d+) \+ (\d+)', rest)
        if mm and mm.group(1) in blk_issue:
            ti, d, req = blk_issue.pop(mm.group(1)); inflight_blk -= 1
            blk_lat.append(t - ti)
            if d: blk_lat_daemon.append(t - ti)
            if req and req in uring_sub:
                sub_to_issue.append(ti - uring_sub[req])
            blk_done_for_req_t = t
            blk_done_for_req[mm.group(1)] = t
    elif ev == 'io_uring:io_uring_task_add':
        req = re.search(r'req (0x[0-9a-f]+)', rest).group(1)
        if req in uring_sub: taskadd[req] = t
    elif ev == 'io_uring:io_uring_complete':
        req = re.search(r'req (0x[0-9a-f]+)', rest).group(1)
        if req in uring_sub:
            dev_lat.append(t - uring_sub.pop(req))
            if req in taskadd: taskadd_to_complete.append(t - taskadd.pop(req))
    elif ev == 'io_uring:io_uring_queue_async_work':
        async_work += 1
    elif ev == 'sched:sched_switch':
        nxt = re.search(r'next_comm=(\S+)', rest).group(1)
        prev = re.search(r'prev_comm=(\S+)', rest).group(1)
        if cpu in last_switch:
            idle[(cpu, last_switch[cpu][1])] += t - last_switch[cpu][0]
        last_switch[cpu] = (t, nxt)
span = last_t - t0
def q(name, xs):
    if not xs: print(f'{name}: none'); return
    xs = sorted(xs); n = len(xs)
    print(f'{name}: n={n} mean={statistics.mean(xs)*1e6:.1f} p50={xs[n//2]*1e6:.1f} p90={xs[int(n*.9)]*1e6:.1f} p99={xs[int(n*.99)]*1e6:.1f} us')
print(f'span {span:.3f}s; fuse reqs/s {len(fuse_lat)/span:.0f}; mean fuse inflight {fuse_area/span:.1f}; mean block inflight {blk_area/span:.1f}; async punts {async_work}')
q('fuse send->end', fuse_lat)
q('daemon uring read submit->cqe', dev_lat)
q('  submit->block issue', sub_to_issue)
q('  block issue->complete (all)', blk_lat)
q('  block issue->complete (daemon)', blk_lat_daemon)
q('  task_add->cqe', taskadd_to_complete)
tot = collections.Counter()
for (cpu, comm), d in idle.items():
    tot[cpu] += d
for (cpu, comm), d in sorted(idle.items(), key=lambda x: -x[1])[:12]:
    print(f'cpu{cpu} {comm}: {d/tot[cpu]*100:.1f}%')
