import re,sys,statistics as st
send={};lat=[];ev=[]
sub={};dev=[];subs=[];comps=[]
for line in open(sys.argv[1]):
    m=re.search(r'^\s*(\S+)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):',line)
    if not m: continue
    comm,tid,cpu,t,evn=m.groups(); t=float(t)*1e6
    if evn=='fuse:fuse_request_send':
        u=int(re.search(r'req (\d+)',line)[1]); send[u]=t
        if 'FUSE_READ' in line: ev.append((t,1))
    elif evn=='fuse:fuse_request_end':
        u=int(re.search(r'req (\d+)',line)[1])
        if u in send: lat.append(t-send.pop(u)); ev.append((t,-1))
    elif evn=='io_uring:io_uring_submit_req' and 'user_data 0x40' in line:
        ud=re.search(r'user_data (\S+),',line)[1]; sub[ud]=t; subs.append((t,cpu))
    elif evn=='io_uring:io_uring_complete' and 'user_data 0x40' in line:
        ud=re.search(r'user_data (\S+),',line)[1]
        if ud in sub: dev.append(t-sub.pop(ud)); comps.append(t)
def q(a): a=sorted(a); return "n=%d mean=%.0f p10=%.0f p50=%.0f p90=%.0f"%(len(a),st.mean(a),a[len(a)//10],a[len(a)//2],a[9*len(a)//10])
print("fuse req send->end:",q(lat))
print("device read submit->CQE:",q(dev))
# group submissions: gap < 5us => same batch
def groups(ts):
    ts=sorted(ts); g=[];c=1
    for a,b in zip(ts,ts[1:]):
        if b-a<5: c+=1
        else: g.append(c); c=1
    g.append(c); return g
g=groups([t for t,c in subs]); print("submit batches:",len(g),"mean size %.1f"%st.mean(g), "max",max(g))
g=groups(comps); print("completion batches:",len(g),"mean size %.1f"%st.mean(g), "max",max(g))
