import json, math, sys
import os
# compare.py [DIR A B]: runs A-1, B-1, B-2, A-2 in DIR (default: this directory, main, nocrc).
base = (sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))) + "/"
A, B = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else ("main", "nocrc")
runs = [A + "-1", B + "-1", B + "-2", A + "-2"]
data = {}
for r in runs:
    d = json.load(open(base + r + "/results.json"))
    for w in d["workloads"]:
        s = w["systems"]
        if "strata" not in s or "ext4" not in s: continue
        try:
            st = s["strata"]["summary"]["median"]; ex = s["ext4"]["summary"]["median"]
        except Exception:
            continue
        if not st or not ex: continue
        hib = w.get("higher_is_better", True)
        data.setdefault(w["id"], {})[r] = (st, ex, hib, w["label"])
rows = []
out = [f"| workload | {A} strata (ratio to ext4) | {B} strata (ratio) | {A}/{B}, raw | of ratios |", "|---|---:|---:|---:|---:|"]
lr_raw = {"fio": [], "buf": []}; lr_rat = {"fio": [], "buf": []}
for wid, v in data.items():
    if len(v) < 4: continue
    hib = v[A + "-1"][2]
    def m(keys, idx):
        return sum(v[k][idx] for k in keys) / len(keys)
    ms, me = m([A + "-1", A + "-2"], 0), m([A + "-1", A + "-2"], 1)
    ns, ne = m([B + "-1", B + "-2"], 0), m([B + "-1", B + "-2"], 1)
    # ratio "goodness": >1 means main (with checksums) is faster
    raw = ms / ns if hib else ns / ms
    rm = sum((v[k][0] / v[k][1]) for k in [A + "-1", A + "-2"]) / 2
    rn = sum((v[k][0] / v[k][1]) for k in [B + "-1", B + "-2"]) / 2
    rat = rm / rn if hib else rn / rm
    g = "fio" if wid.startswith("fio") else "buf"
    lr_raw[g].append(math.log(raw)); lr_rat[g].append(math.log(rat))
    out.append(f"| {v[A + '-1'][3]} | {ms:,.1f} ({rm:.2f}) | {ns:,.1f} ({rn:.2f}) | {raw:.3f} | {rat:.3f} |")
print("\n".join(out))
for g in ["fio", "buf"]:
    if lr_raw[g]:
        print(f"{g}: n={len(lr_raw[g])} geomean {A}/{B} raw {math.exp(sum(lr_raw[g])/len(lr_raw[g])):.3f}, of ratios {math.exp(sum(lr_rat[g])/len(lr_rat[g])):.3f}")
