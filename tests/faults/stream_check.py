#!/usr/bin/env python3
"""stream_check: checks a change stream against the history of the writes it
followed (the fault harness: fault_client --events, next to --out).

Registers are written with unique values (put and cas), so each write is
told apart by its (key, value). The rules:

  - every acknowledged write ("r": "ok") of a register appears in the stream
    as a put of that key and value, unless the stream said GAP for that
    key's partition (the history it needed was gone: allowed, and counted);
  - no write appears twice;
  - every put in the stream is a write some client made (acknowledged, or of
    unknown outcome: "info"), never a value nobody wrote;
  - each key's events come in version order (each version greater than the
    one before);
  - the stream did not end (GRID_EVENT_ENDED).

Batch registers (b<i>, written as four entries "{b<i>}.0".."{b<i>}.3" by
one atomic batch) are followed by their first entry's events. Counters
(add) are left out: their values are not unique. Prints a summary
and, with --json FILE, writes it as JSON. Exit status 0 when every rule
holds, 1 when one does not, 2 on bad input.
"""
import argparse
import json
import sys


def load_jsonl(path):
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                raise SystemExit("%s:%d: not JSON: %s" % (path, n, line[:80]))
    return out


def check(history, events):
    acked, written = set(), set()
    for op in history:
        if op.get("f") not in ("put", "cas") or not str(op.get("k", "")).startswith(("r", "b")):
            continue
        kv = (op["k"], str(op.get("v")))
        if op.get("r") == "ok":
            acked.add(kv)
            written.add(kv)
        elif op.get("r") == "info":
            written.add(kv)
    seen = {}
    repeated, phantom, out_of_order = [], [], []
    gap_parts, part_of, last_version = set(), {}, {}
    ended = None
    for ev in events:
        e = ev.get("e")
        if e == "gap":
            gap_parts.add(ev.get("part"))
            continue
        if e == "ended":
            ended = ev.get("err", "?")
            continue
        k = ev.get("k")
        if k is not None and k.startswith("{b") and k.endswith("}.0"):
            k = k[1:-3]  # a batch register, by its first entry
        if k is None or not k.startswith(("r", "b")):
            continue
        part_of[k] = ev.get("part")
        ver = ev.get("ver", 0)
        if ver <= last_version.get(k, 0):
            out_of_order.append((k, ver, last_version.get(k, 0)))
        last_version[k] = ver
        if e != "put":
            continue
        kv = (k, ev.get("v"))
        seen[kv] = seen.get(kv, 0) + 1
        if seen[kv] == 2:
            repeated.append(kv)
        if kv not in written:
            phantom.append(kv)
    missing, excused = [], 0
    for kv in sorted(acked):
        if kv in seen:
            continue
        if kv[0] in part_of and part_of[kv[0]] in gap_parts:
            excused += 1
        else:
            missing.append(kv)
    return {
        "acked": len(acked),
        "events": len(events),
        "missing": ["%s=%s" % kv for kv in missing],
        "after_gap": excused,
        "gaps": len(gap_parts),
        "repeated": ["%s=%s" % kv for kv in repeated],
        "phantom": ["%s=%s" % kv for kv in phantom],
        "out_of_order": ["%s version %d after %d" % x for x in out_of_order],
        "ended": ended,
        "ok": not (missing or repeated or phantom or out_of_order or ended),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("history", help="fault_client's history (--out)")
    ap.add_argument("events", help="fault_client's change stream (--events)")
    ap.add_argument("--json", metavar="FILE", help="also write the summary as JSON to FILE")
    args = ap.parse_args(argv)
    try:
        r = check(load_jsonl(args.history), load_jsonl(args.events))
    except OSError as e:
        print("stream_check: %s" % e, file=sys.stderr)
        return 2
    print("stream: %d acknowledged writes, %d events, %d missing (%d more after a GAP), "
          "%d repeated, %d never written, %d out of order%s: %s"
          % (r["acked"], r["events"], len(r["missing"]), r["after_gap"], len(r["repeated"]),
             len(r["phantom"]), len(r["out_of_order"]),
             ", ended " + r["ended"] if r["ended"] else "", "ok" if r["ok"] else "FAIL"))
    for what in ("missing", "repeated", "phantom", "out_of_order"):
        for item in r[what][:20]:
            print("  %s: %s" % (what, item))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
