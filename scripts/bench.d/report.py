"""Reads wrk outputs and prints the benchmark table and the targets.

Rates are ratios of the free route (a gate402 service with auth = "off")
measured in the same run; the free route itself is a ratio of the nginx
proxy hops (one worker, as the targets were set; and one per core), and
direct is shown for context. A scenario run in several rounds
(NAME.0.out, NAME.1.out, ...) counts as the median of its rounds' rates
and latencies; its non-2xx answers are summed.

usage: report.py DIR NAME...
"""
import glob
import os
import re
import statistics
import sys

LABELS = {
    "direct": "direct to upstream (nginx)",
    "hop1": "nginx proxy_pass hop (1 worker, the issue's floor)",
    "hop": "nginx proxy_pass hop, 2 workers",
    "free": "gate402 free route",
    "free_https": "gate402 free route, https upstream",
    "unpaid": "gate402 unpaid (402), SQLite",
    "l402": "gate402 paid L402, SQLite",
    "mpp": "gate402 paid MPP, SQLite",
    "unpaid_pg": "gate402 unpaid (402), PostgreSQL",
    "l402_pg": "gate402 paid L402, PostgreSQL",
    "mpp_pg": "gate402 paid MPP, PostgreSQL",
    "mppx_unpaid": "mppx unpaid (402)",
    "mppx_paid": "mppx paid",
    "rss_long": "gate402 paid L402, SQLite, long run",
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
    return {"rate": requests / duration, "non2xx": non2xx, "p50": p50, "p99": p99}


def rounds(directory, name):
    """The scenario's rounds, in order: NAME.out alone, or NAME.<n>.out."""
    paths = glob.glob(f"{directory}/{name}.[0-9]*.out")
    paths.sort(key=lambda p: int(p.rsplit(".", 2)[1]))
    runs = [read(p) for p in paths] or [read(f"{directory}/{name}.out")]
    return {
        "rate": statistics.median(r["rate"] for r in runs),
        "non2xx": sum(r["non2xx"] for r in runs),
        "p50": statistics.median(r["p50"] for r in runs),
        "p99": statistics.median(r["p99"] for r in runs),
        "rates": [r["rate"] for r in runs],
    }


directory, names = sys.argv[1], sys.argv[2:]
rows = {name: rounds(directory, name) for name in names}


def ratio(name, base):
    if name in rows and base in rows:
        return rows[name]["rate"] / rows[base]["rate"]
    return None


def per_round(name, base):
    """The ratio within each round, when both ran in the same rounds."""
    if name in rows and base in rows and len(rows[name]["rates"]) == len(rows[base]["rates"]) > 1:
        pairs = zip(rows[name]["rates"], rows[base]["rates"])
        return " / ".join(f"{a / b:.2f}" for a, b in pairs)
    return ""


print("| scenario | req/s | ratio | p50 ms | p99 ms | non-2xx | req/s by round |")
print("|---|---:|---|---:|---:|---:|---|")
for name, row in rows.items():
    if name in ("direct", "hop1", "hop"):
        versus = "—"
    elif name == "free":
        versus = (f"{ratio(name, 'hop1'):.2f} of the 1-worker hop, "
                  f"{ratio(name, 'hop'):.2f} of the 2-worker hop")
    else:
        versus = f"{ratio(name, 'free'):.2f} of the free route"
    print(
        f"| {LABELS.get(name, name)} | {row['rate']:,.0f} | {versus} "
        f"| {row['p50']:.2f} | {row['p99']:.2f} | {row['non2xx']} "
        f"| {' / '.join(f'{r:,.0f}' for r in row['rates'])} |"
    )

targets = [
    ("free route / nginx hop (1 worker)", "free", "hop1", 0.9),
    ("free route / nginx hop (2 workers, context)", "free", "hop", 0.9),
    ("paid L402 / free route", "l402", "free", 0.9),
    ("paid MPP on SQLite / free route", "mpp", "free", 0.5),
    ("paid MPP on PostgreSQL / free route", "mpp_pg", "free", 0.4),
    ("unpaid 402 / free route", "unpaid", "free", 0.5),
]
print("\n| target | measured | goal | met | by round |")
print("|---|---:|---:|---|---|")
for label, name, base, goal in targets:
    value = ratio(name, base)
    if value is None:
        continue
    print(f"| {label} | {value:.2f} | {goal:.2f} | {'yes' if value >= goal else 'NO'} "
          f"| {per_round(name, base)} |")
if "l402" in rows and "free" in rows:
    # Lower is better: the two p99s against the limit, in milliseconds.
    l402, limit = rows["l402"]["p99"], rows["free"]["p99"] * 1.5
    print(f"| p99 of paid L402 within 1.5x the free route's | {l402:.2f} ms "
          f"| <= {limit:.2f} ms | {'yes' if l402 <= limit else 'NO'} | |")
    print(f"\np99 ms: paid L402 {l402:.2f}, free route {rows['free']['p99']:.2f}")

before, after = (f"{directory}/rss.{w}" for w in ("before", "after"))
if os.path.exists(before) and os.path.exists(after):
    kb_before, kb_after = int(open(before).read()), int(open(after).read())
    served = rows.get("rss_long", {}).get("rate", 0)
    print(f"RSS of the SQLite gateway: {kb_before:,} KiB before, {kb_after:,} KiB after the long paid run "
          f"({served:,.0f} req/s), growth {kb_after - kb_before:+,} KiB")

for name, knob in [("mpp", "GATE402_BENCH_MPP_CREDENTIALS"), ("mpp_pg", "GATE402_BENCH_MPP_CREDENTIALS"), ("mppx_paid", "GATE402_BENCH_MPPX_CREDENTIALS")]:
    row = rows.get(name)
    if row and row["non2xx"] > 0:
        print(f"\nnote: {row['non2xx']} {LABELS[name]} requests found no unused credential; raise {knob}", file=sys.stderr)
# The work behind each paid MPP request, by round (NAME.<n>.work: the
# gateway's CPU ticks, its SQLite writer's, the bytes it wrote and the
# PostgreSQL server's ticks, before and after the run).
ticks_path = f"{directory}/clock_ticks"
work_rows = []
for name, store in [("mpp", "SQLite"), ("mpp_pg", "PostgreSQL")]:
    paths = sorted(glob.glob(f"{directory}/{name}.[0-9]*.work"), key=lambda p: int(p.rsplit(".", 2)[1]))
    if not paths or not os.path.exists(ticks_path):
        continue
    micros = 1e6 / int(open(ticks_path).read())
    cells = []
    for path in paths:
        before_after = [int(v) for v in open(path).read().split()]
        gateway, writer, written, postgres = (b - a for a, b in zip(before_after[:4], before_after[4:]))
        served = int(re.search(r"(\d+) requests in", open(path[: -len("work")] + "out").read()).group(1))
        cells.append((gateway * micros / served, writer * micros / served, written / served / 1024, postgres * micros / served))
    work_rows.append((store, cells))
if work_rows:
    print("\nwork per paid MPP request, by round (CPU time from /proc; bytes the gateway wrote: its database, log and sockets):")
    for store, cells in work_rows:
        if store == "SQLite":
            parts = [f"gateway {g:.0f} µs (store writer {w:.0f} µs), {b:.1f} KiB" for g, w, b, _ in cells]
        else:
            parts = [f"gateway {g:.0f} µs, PostgreSQL {p:.0f} µs" for g, _, _, p in cells]
        print(f"  {store}: " + " / ".join(parts))
for paid, unpaid in [("mpp", "mppx_paid"), ("unpaid", "mppx_unpaid")]:
    ours, theirs = rows.get(paid), rows.get(unpaid)
    if ours and theirs:
        print(f"{LABELS[paid]} / {LABELS[unpaid]}: {ours['rate'] / theirs['rate']:.1f}x the requests per second")
