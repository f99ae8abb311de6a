#!/usr/bin/env python3
"""Drive /work/shared/tools/lambda_runtime_bench.py (its `one_run`: fake Runtime API, init =
spawn -> first GET /next, invoke = event handed out -> response posted, peak RSS = VmHWM) over
several binaries, interleaved run by run so that machine noise hits all of them alike, and
print the medians and the ratios as a Markdown table.

Usage: measure.py --harness PATH --runs N --invokes K --env-file FILE \
         --case LABEL EVENT_JSON CMD [--case ...]
"""
import argparse, importlib.util, json, shlex, statistics, sys

ap = argparse.ArgumentParser()
ap.add_argument("--harness", required=True)
ap.add_argument("--runs", type=int, default=10)
ap.add_argument("--invokes", type=int, default=5)
ap.add_argument("--env-file", required=True)
ap.add_argument("--timeout", type=float, default=30)
ap.add_argument("--case", nargs=3, action="append", metavar=("LABEL", "EVENT", "CMD"), required=True)
ap.add_argument("--json-out")
a = ap.parse_args()

spec = importlib.util.spec_from_file_location("lambda_runtime_bench", a.harness)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

env = dict(l.split("=", 1) for l in open(a.env_file).read().splitlines() if "=" in l)
cases = [(label, json.load(open(ev)), shlex.split(cmd)) for label, ev, cmd in a.case]
runs = {label: [] for label, _, _ in cases}
for i in range(a.runs):
    for label, ev, cmd in cases:
        r = bench.one_run(cmd, [ev] * a.invokes, env, a.timeout)
        runs[label].append(r)
    print(f"run {i + 1}/{a.runs} done", file=sys.stderr)

def med(xs):
    return statistics.median(xs) if xs else float("nan")

rows = {}
for label, _, _ in cases:
    rs = runs[label]
    init = med([r["init_ms"] for r in rs if r["init_ms"] is not None])
    first = med([r["invoke_ms"][0] for r in rs if r["invoke_ms"]])
    init_first = med([r["init_ms"] + r["invoke_ms"][0] for r in rs if r["init_ms"] is not None and r["invoke_ms"]])
    warm = med([x for r in rs for x in r["invoke_ms"][1:]])
    rss = med([r["rss_kb"] for r in rs if r["rss_kb"]])
    ok = sum(r["ok"] for r in rs)
    body = rs[0]["first_body"] or rs[0]["init_error"] or rs[0]["stdout_tail"]
    rows[label] = dict(init=init, first=first, init_first=init_first, warm=warm, rss_kb=rss, ok=ok, n=len(rs),
                       kinds=rs[0]["kinds"], first_body=body)

print(f"\nMedians of {a.runs} cold starts per binary, {a.invokes} invokes each "
      f"(warm = invokes 2..{a.invokes} of every run):\n")
print("| Binary | init (ms) | first invoke (ms) | init + first invoke (ms) | warm invoke (ms) | peak RSS (MiB) | runs ok |")
print("|---|---:|---:|---:|---:|---:|---:|")
for label, r in rows.items():
    print(f"| {label} | {r['init']:.1f} | {r['first']:.1f} | {r['init_first']:.1f} | {r['warm']:.2f} "
          f"| {r['rss_kb'] / 1024:.1f} | {r['ok']}/{r['n']} |")

hello = rows.get("hello-lambda")
node = rows.get("node")
baton = [l for l in rows if l not in ("hello-lambda", "node")]
if hello and baton:
    print("\n| Ratio | " + " | ".join(baton) + " |")
    print("|---|" + "---:|" * len(baton))
    print("| Baton init / hello-world init | " + " | ".join(f"{rows[b]['init'] / hello['init']:.2f}x" for b in baton) + " |")
    if node:
        print("| Node init / Baton init | " + " | ".join(f"{node['init'] / rows[b]['init']:.1f}x" for b in baton) + " |")
        print("| Node (init + 1st invoke) / Baton (init + 1st invoke) | "
              + " | ".join(f"{node['init_first'] / rows[b]['init_first']:.1f}x" for b in baton) + " |")

print("\nWhat the first invoke of the first run returned:\n")
for label, r in rows.items():
    print(f"- {label}: {r['kinds'][:1]} {str(r['first_body'])[:240]!r}")

if a.json_out:
    json.dump({"rows": rows, "runs": {l: [{k: v for k, v in r.items() if k != 'stdout_tail'} for r in rs]
                                      for l, rs in runs.items()}}, open(a.json_out, "w"), indent=1)
