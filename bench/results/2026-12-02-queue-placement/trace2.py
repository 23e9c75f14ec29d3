import sys, re, collections, statistics
line_re = re.compile(r'^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)$')
ent_cqe = {}; held = []; rd_sub = {}; dev = []
cqe_to_read = []; read_to_commit = []
last_cqe = {}
for ln in sys.stdin:
    m = line_re.match(ln)
    if not m: continue
    comm, tid, cpu, t, ev, rest = m.groups(); t = float(t)
    if 'strata-fuseq' not in comm: continue
    if ev == 'io_uring:io_uring_complete':
        ud = int(re.search(r'user_data (0x[0-9a-f]+)', rest).group(1), 16)
        req = re.search(r'req (0x[0-9a-f]+)', rest).group(1)
        if ud < 64:
            ent_cqe[(tid, ud)] = t
        elif req in rd_sub:
            dev.append(t - rd_sub.pop(req))
    elif ev == 'io_uring:io_uring_submit_req':
        ud = int(re.search(r'user_data (0x[0-9a-f]+)', rest).group(1), 16)
        req = re.search(r'req (0x[0-9a-f]+)', rest).group(1)
        if 'opcode READ' in rest:
            rd_sub[req] = t
        elif 'URING_CMD' in rest and ud < 64 and (tid, ud) in ent_cqe:
            held.append(t - ent_cqe.pop((tid, ud)))
def q(name, xs):
    xs = sorted(xs); n = len(xs)
    print(f'{name}: n={n} mean={statistics.mean(xs)*1e6:.1f} p50={xs[n//2]*1e6:.1f} p90={xs[int(n*.9)]*1e6:.1f} p99={xs[int(n*.99)]*1e6:.1f} us')
q('entry cqe -> commit (daemon holds the request)', held)
q('device read submit -> cqe', dev)
