import json, sys
j = json.load(sys.stdin)["jobs"][0]["read"]
p = j["lat_ns"].get("percentile", {})
p50 = p.get("50.000000")
print(f"{j['iops']:.0f}" + (f" p50={p50/1000:.0f}" if p50 else ""))
