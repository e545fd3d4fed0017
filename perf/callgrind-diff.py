#!/usr/bin/env python3
"""Per-request self cost by function, route B minus route A, from two callgrind dumps.

    perf/callgrind-diff.py perf/out/callgrind-plain.out REQS_A perf/out/callgrind-auth.out REQS_B

REQS_* are the request counts perf/callgrind.sh printed for each dump. Inlined code is counted
in the function it was inlined into, so the rows answer "what does route B pay that A does not".
"""
import collections
import re
import subprocess
import sys

SKIP = ("clone.S", "start_thread", "thread_start", "vtable.shim", "PROGRAM TOTALS")


def per_function(path, reqs):
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--inclusive=no", "--auto=no", path],
        capture_output=True, text=True, check=True,
    ).stdout
    cost = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+) \([ \d.]+%\)\s+(.*)$", line)
        if not m or any(s in m.group(2) for s in SKIP):
            continue
        where = re.sub(r" \[/.*\]$", "", m.group(2))
        fn = where.split(":", 1)[1] if ":" in where else where
        cost[fn.replace("{{closure}}", "")] += int(m.group(1).replace(",", "")) / reqs
    return cost


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    a = per_function(sys.argv[1], int(sys.argv[2]))
    b = per_function(sys.argv[3], int(sys.argv[4]))
    rows = sorted(set(a) | set(b), key=lambda k: a[k] - b[k])
    print(f"{'B-A':>7} {'A':>7} {'B':>7}  function (Ir per request)")
    for k in rows[:30]:
        if abs(b[k] - a[k]) >= 1:
            print(f"{b[k] - a[k]:7.0f} {a[k]:7.0f} {b[k]:7.0f}  {k[:140]}")
    print(f"total B-A: {sum(b.values()) - sum(a.values()):.0f}")


if __name__ == "__main__":
    main()
