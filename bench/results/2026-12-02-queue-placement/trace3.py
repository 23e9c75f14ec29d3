import sys, re, collections, statistics, bisect
line_re = re.compile(r'^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)$')
ev_by_tid = collections.defaultdict(list)
for ln in sys.stdin:
    m = line_re.match(ln)
    if not m: continue
    comm, tid, cpu, t, ev, rest = m.groups(); t = float(t)
    if 'strata-fuseq' not in comm: continue
    if ev not in ('io_uring:io_uring_complete','io_uring:io_uring_submit_req'): continue
    ud = int(re.search(r'user_data (0x[0-9a-f]+)', rest).group(1), 16)
    kind = None
    if ev.endswith('complete'):
        kind = 'ENT_CQE' if ud < 64 else 'IO_CQE'
    else:
        kind = 'READ_SUB' if 'opcode READ' in rest else ('COMMIT' if 'URING_CMD' in rest else 'OTHER')
    ev_by_tid[tid].append((t, kind, ud))
def q(name, xs):
    xs = sorted(xs); n = len(xs)
    if not n: print(name, 'none'); return
    print(f'{name}: n={n} mean={statistics.mean(xs)*1e6:.1f} p50={xs[n//2]*1e6:.1f} p90={xs[int(n*.9)]*1e6:.1f} p99={xs[int(n*.99)]*1e6:.1f} us')
for tid, evs in ev_by_tid.items():
    a=[];b=[]; bursts=[]; enters=[]
    # group events into "enter" bursts: gap > 8us starts a new one
    prev=None; cur=[]
    for e in evs:
        if prev is not None and e[0]-prev > 8e-6:
            bursts.append(cur); cur=[]
        cur.append(e); prev=e[0]
    bursts.append(cur)
    starts=[b_[0][0] for b_ in bursts]
    gaps=[starts[i+1]-starts[i] for i in range(len(starts)-1)]
    print(f'tid {tid}: events {len(evs)}, bursts {len(bursts)}')
    q('  gap between bursts', gaps)
    per = [sum(1 for e in b_ if e[1]=='ENT_CQE') for b_ in bursts]
    per_io = [sum(1 for e in b_ if e[1]=='IO_CQE') for b_ in bursts]
    per_rd = [sum(1 for e in b_ if e[1]=='READ_SUB') for b_ in bursts]
    print(f'  per burst: new requests {statistics.mean(per):.2f}, io completions {statistics.mean(per_io):.2f}, read submits {statistics.mean(per_rd):.2f}')
    # time from ENT_CQE to next READ_SUB
    for i,e in enumerate(evs):
        if e[1]=='ENT_CQE':
            for f in evs[i+1:i+400]:
                if f[1]=='READ_SUB': a.append(f[0]-e[0]); break
        if e[1]=='IO_CQE':
            for f in evs[i+1:i+400]:
                if f[1]=='COMMIT': b.append(f[0]-e[0]); break
    q('  entry cqe -> next read submit', a)
    q('  io cqe -> next commit', b)
