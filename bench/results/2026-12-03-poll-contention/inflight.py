import time,sys,collections
c=collections.Counter(); n=0; end=time.time()+float(sys.argv[1])
while time.time()<end:
    r,w=open('/sys/block/vda/inflight').read().split(); c[int(r)]+=1; n+=1
    time.sleep(0.0002)
tot=sum(k*v for k,v in c.items())
print("samples",n,"mean inflight %.1f"%(tot/n), "dist", sorted(c.items())[:40])
