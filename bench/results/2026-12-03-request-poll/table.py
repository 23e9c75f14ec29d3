import json, sys
def load(p):
    d=json.load(open(p+"/results.json")); out={}
    for w in d["workloads"]:
        s=w["systems"]
        try: out[w["id"]]=(s["strata"]["summary"]["median"], s["ext4"]["summary"]["median"], w.get("higher_is_better",True), w.get("unit",""))
        except Exception: pass
    return out
runs=sys.argv[1:]
ds=[load(r) for r in runs]
print("%-40s"%"workload" + "".join("%28s"%r.split('/')[-1] for r in runs))
for k in ds[0]:
    row="%-40s"%k
    for d in ds:
        if k in d and d[k][0] and d[k][1]:
            st,ex,hib,u=d[k]; ratio = st/ex if hib else ex/st
            row+="%18.4g (%5.2fx)"%(st,ratio)
        else: row+="%28s"%"-"
    print(row)
