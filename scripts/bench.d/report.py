"""Reads wrk outputs and prints the benchmark table, rates as ratios of
the first (direct) scenario. usage: report.py DIR NAME...
"""
import re
import sys

LABELS = {
    "direct": "direct to upstream",
    "unpaid": "gate402 unpaid (402), SQLite",
    "l402": "gate402 paid L402, SQLite",
    "mpp": "gate402 paid MPP, SQLite",
    "unpaid_pg": "gate402 unpaid (402), PostgreSQL",
    "l402_pg": "gate402 paid L402, PostgreSQL",
    "mpp_pg": "gate402 paid MPP, PostgreSQL",
    "mppx_unpaid": "mppx unpaid (402)",
    "mppx_paid": "mppx paid",
}
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def millis(text):
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not match:
        sys.exit(f"cannot read the latency {text!r}")
    value, unit = match.groups()
    return float(value) * UNITS[unit]


def read(path):
    text = open(path).read()
    requests = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", text).group(1))
    seconds = re.search(r"requests in ([\d.]+)(ms|s|m)", text)
    duration = float(seconds.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[seconds.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non2xx = int(non2xx.group(1)) if non2xx else 0
    p50 = millis(re.search(r"^\s*50%[ \t]+(\S+)", text, re.M).group(1))
    p99 = millis(re.search(r"^\s*99%[ \t]+(\S+)", text, re.M).group(1))
    return requests, duration, non2xx, p50, p99


directory, names = sys.argv[1], sys.argv[2:]
rows = [(name, *read(f"{directory}/{name}.out")) for name in names]
base = rows[0][1] / rows[0][2]
print(f"| scenario | req/s | ratio to direct | p50 ms | p99 ms | non-2xx |")
print(f"|---|---:|---:|---:|---:|---:|")
for name, requests, duration, non2xx, p50, p99 in rows:
    rate = requests / duration
    print(f"| {LABELS.get(name, name)} | {rate:,.0f} | {rate / base:.2f} | {p50:.2f} | {p99:.2f} | {non2xx} |")
by_name = dict((r[0], r) for r in rows)
for name, knob in [("mpp", "GATE402_BENCH_MPP_CREDENTIALS"), ("mpp_pg", "GATE402_BENCH_MPP_CREDENTIALS"), ("mppx_paid", "GATE402_BENCH_MPPX_CREDENTIALS")]:
    row = by_name.get(name)
    if row and row[3] > 0:
        print(f"\nnote: {row[3]} {LABELS[name]} requests found no unused credential; raise {knob}", file=sys.stderr)
for paid, unpaid in [("mpp", "mppx_paid"), ("unpaid", "mppx_unpaid")]:
    ours, theirs = by_name.get(paid), by_name.get(unpaid)
    if ours and theirs:
        ratio = (ours[1] / ours[2]) / (theirs[1] / theirs[2])
        print(f"\n{LABELS[paid]} / {LABELS[unpaid]}: {ratio:.1f}x the requests per second")
