"""Reads wrk outputs and prints the benchmark table, rates as ratios of
the first (direct) scenario. usage: report.py DIR NAME...
"""
import re
import sys

LABELS = {"direct": "direct to upstream", "unpaid": "gate402 unpaid (402)", "l402": "gate402 paid L402", "mpp": "gate402 paid MPP"}
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def millis(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * UNITS[unit]


def read(path):
    text = open(path).read()
    requests = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", text).group(1))
    seconds = re.search(r"requests in ([\d.]+)(ms|s|m)", text)
    duration = float(seconds.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[seconds.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non2xx = int(non2xx.group(1)) if non2xx else 0
    p50 = millis(re.search(r"50%\s+(\S+)", text).group(1))
    p99 = millis(re.search(r"99%\s+(\S+)", text).group(1))
    return requests, duration, non2xx, p50, p99


directory, names = sys.argv[1], sys.argv[2:]
rows = [(name, *read(f"{directory}/{name}.out")) for name in names]
base = rows[0][1] / rows[0][2]
print(f"| scenario | req/s | ratio to direct | p50 ms | p99 ms | non-2xx |")
print(f"|---|---:|---:|---:|---:|---:|")
for name, requests, duration, non2xx, p50, p99 in rows:
    rate = requests / duration
    print(f"| {LABELS.get(name, name)} | {rate:,.0f} | {rate / base:.2f} | {p50:.2f} | {p99:.2f} | {non2xx} |")
mpp = dict((r[0], r) for r in rows).get("mpp")
if mpp and mpp[3] > 0:
    print(f"\nnote: {mpp[3]} MPP requests found no unused credential (402); raise GATE402_BENCH_MPP_CREDENTIALS", file=sys.stderr)
