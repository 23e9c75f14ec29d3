# compare.py [DIR [SYSTEM]]: the ABBA rounds in DIR (default: this directory; A =
# --request-poll-us 50, B = 0), for SYSTEM (default strata; strata-dev for dev/).
# Per workload: A/B on the raw medians (geometric mean of the two rounds each; > 1: polling
# better) and the ratio to ext4 in the same run for A and for B (> 1: Strata better).
import json, math, os, sys
base = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
SYS = sys.argv[2] if len(sys.argv) > 2 else "strata"
def load(p):
    d = json.load(open(os.path.join(base, p, "results.json"))); out = {}
    for w in d["workloads"]:
        s = w["systems"]
        try:
            out[w["id"]] = (s[SYS]["summary"]["median"], s["ext4"]["summary"]["median"], w.get("higher_is_better", True))
        except Exception:
            pass
    return out
R = {r: load(r) for r in ["A-1", "B-1", "B-2", "A-2"]}
print("| workload | A/B (raw) | A: Strata vs ext4 | B: Strata vs ext4 |\n|---|---:|---:|---:|")
g = []
for k in R["A-1"]:
    try:
        a = [R[r][k] for r in ("A-1", "A-2")]; b = [R[r][k] for r in ("B-1", "B-2")]
    except KeyError:
        continue
    if not all(x[0] and x[1] for x in a + b):
        continue
    hib = a[0][2]
    am = math.sqrt(a[0][0] * a[1][0]); bm = math.sqrt(b[0][0] * b[1][0])
    gain = am / bm if hib else bm / am
    ra = math.sqrt(a[0][0] / a[0][1] * a[1][0] / a[1][1]); rb = math.sqrt(b[0][0] / b[0][1] * b[1][0] / b[1][1])
    if not hib:
        ra, rb = 1 / ra, 1 / rb
    g.append(gain)
    print("| %s | %.2f | %.2f× | %.2f× |" % (k, gain, ra, rb))
print("\ngeometric mean of A/B: %.3f" % math.exp(sum(map(math.log, g)) / len(g)))
