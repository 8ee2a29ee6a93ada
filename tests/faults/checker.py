#!/usr/bin/env python3
"""checker.py: is a fault_client history linearizable, and was a write lost?

Reads the JSON-lines history that fault_client writes (one operation per
line, see tests/faults/README.md), splits it per key (linearizability is
compositional: a history is linearizable when each key's sub-history is)
and checks each key with the Wing-Gong / Lowe search, memoizing (set of
linearized operations, model state) pairs as Knossos and Porcupine do.

Models:
  register  get returns the last written value (null: never written); put
            sets; cas(exp -> v) takes effect only when the value is exp;
            a cas refused with GRID_EVERSION saw another value, one refused
            with GRID_ENOTFOUND saw no value.
  counter   (a key with an "add") add(d) returns the new sum; a get reads
            the sum (null: 0). fault_client only adds positive deltas.

Result classes: "ok" ops took effect between invoke (t0) and completion
(t1); "fail" ops took no effect (only a cas refused for its value says
anything about the state); "info" ops may or may not have taken effect, at
any point after t0 (their completion is infinity).

Two reductions keep the search small and are exact:
  - a written value that no read and no cas ever names cannot be told from
    any other such value, so they all become one token (UNSEEN);
  - info puts of UNSEEN values (and info adds of one delta) are then
    interchangeable and, once invoked, stay available forever, so the
    search only ever linearizes the earliest-invoked unused one.

Besides, a lost-write check on the final reads (ops with "fin": 1): the
last final read of a register must not miss an acknowledged write that
started after the write it returns completed; a counter's final sum must
be at least the sum of its acknowledged adds and at most that plus its
info adds.

Exit status: 0 every key linearizable and nothing lost, 1 a violation or a
lost write, 2 bad usage or unreadable input. A key whose search passes
--max-steps is reported "unknown" and does not fail the run.
"""

import argparse
import json
import math
import sys
import time
from collections import defaultdict

INF = math.inf
UNSEEN = ("unseen",)  # the one token for every value nobody observed
NO = object()  # "this op cannot be linearized here"

# Operation kinds after classification (small ints keep the inner loop fast).
R_GET, R_PUT, R_CAS_OK, R_CAS_INFO, R_CAS_FAIL_VER, R_CAS_FAIL_NF, C_ADD_OK, C_ADD_INFO, C_GET = range(9)

MAX_STEPS_DEFAULT = 10_000_000  # search steps per key before "unknown"
WINDOW_OPS_MAX = 40  # ops printed for one violation
CONTEXT_OPS = 4  # linearized ops shown before a violation's window


class Op:
    __slots__ = ("i", "raw", "kind", "a", "b", "t0", "t1", "sym")

    def __init__(self, raw, kind, a, b, t0, t1):
        self.raw = raw
        self.kind = kind
        self.a = a  # value written / expected / read / delta
        self.b = b  # new value of a cas, or the sum an add returned
        self.t0 = t0
        self.t1 = t1
        self.sym = None  # symmetry class of interchangeable info ops
        self.i = -1


def step(state, op):
    """The model: the state after op, or NO when op cannot happen in state."""
    k = op.kind
    if k == R_GET:
        return state if state == op.a else NO
    if k == R_PUT:
        return op.a
    if k == R_CAS_OK:
        return op.b if state == op.a else NO
    if k == R_CAS_INFO:
        return op.b if state == op.a else state
    if k == R_CAS_FAIL_VER:
        return state if (state is not None and state != op.a) else NO
    if k == R_CAS_FAIL_NF:
        return state if state is None else NO
    if k == C_ADD_OK:
        return op.b if state + op.a == op.b else NO
    if k == C_ADD_INFO:
        return state + op.a
    if k == C_GET:
        return state if state == op.a else NO
    raise AssertionError(k)


def parse_int(s):
    try:
        return int(s)
    except (TypeError, ValueError):
        return None


def classify(key, raw_ops):
    """Turns one key's raw records into model ops; drops those that neither
    took effect nor observed anything. Returns (model, ops)."""
    counter = any(r.get("f") == "add" for r in raw_ops)
    ops = []
    for r in raw_ops:
        f, res = r.get("f"), r.get("r")
        t0 = r["t0"]
        t1 = INF if res == "info" else r["t1"]
        err = r.get("err", "")
        if counter:
            if f == "add" and res == "ok":
                ops.append(Op(r, C_ADD_OK, int(r["v"]), int(r["out"]), t0, t1))
            elif f == "add" and res == "info":
                ops.append(Op(r, C_ADD_INFO, int(r["v"]), None, t0, t1))
            elif f == "get" and res == "ok":
                out = r.get("out")
                val = 0 if out is None else parse_int(out)
                # A value that is not a number can match no sum: keep it as
                # an impossible read so that the search reports it.
                ops.append(Op(r, C_GET, val if val is not None else ("bad", out), None, t0, t1))
            # Anything else on a counter key (a failed add or read) took no
            # effect and observed nothing.
            continue
        if f == "get":
            if res == "ok":
                ops.append(Op(r, R_GET, r.get("out"), None, t0, t1))
        elif f == "put":
            if res in ("ok", "info"):
                ops.append(Op(r, R_PUT, r["v"], None, t0, t1))
        elif f == "cas":
            if res == "ok":
                ops.append(Op(r, R_CAS_OK, r.get("exp"), r["v"], t0, t1))
            elif res == "info":
                ops.append(Op(r, R_CAS_INFO, r.get("exp"), r["v"], t0, t1))
            elif err == "GRID_EVERSION":
                ops.append(Op(r, R_CAS_FAIL_VER, r.get("exp"), None, t0, t1))
            elif err == "GRID_ENOTFOUND":
                ops.append(Op(r, R_CAS_FAIL_NF, r.get("exp"), None, t0, t1))
    if not counter:
        observed = set()
        for op in ops:
            if op.kind == R_GET and op.a is not None:
                observed.add(op.a)
            elif op.kind in (R_CAS_OK, R_CAS_INFO, R_CAS_FAIL_VER):
                observed.add(op.a)
        for op in ops:
            if op.kind == R_PUT and op.a not in observed:
                op.a = UNSEEN
                if op.t1 == INF:
                    op.sym = ("put",)
            elif op.kind in (R_CAS_OK, R_CAS_INFO) and op.b not in observed:
                op.b = UNSEEN
    else:
        for op in ops:
            if op.kind == C_ADD_INFO:
                op.sym = ("add", op.a)
    ops.sort(key=lambda o: (o.t0, o.t1))
    for i, op in enumerate(ops):
        op.i = i
    return ("counter" if counter else "register"), ops


class Result:
    def __init__(self):
        self.ok = True
        self.unknown = False
        self.steps = 0
        self.fail_op = None
        self.fail_state = None
        self.context = []
        self.pending = []
        self.after = []


def check_ops(ops, init_state, max_steps=MAX_STEPS_DEFAULT):
    """Wing-Gong / Lowe linearizability search over ops (sorted by t0).

    Ops that completed are nodes of the time-ordered event list, as in
    Lowe's algorithm. Info ops never complete and need not take effect at
    all, so they are kept out of the list: where the scan of the list stops
    at the first completion not yet linearized (time T), the info ops
    invoked by T are tried as further candidates, in a fixed order, before
    the search backtracks. Of a class of interchangeable info ops only the
    earliest-invoked unused one is a candidate."""
    res = Result()
    n = len(ops)
    if n == 0:
        return res
    finite = [op for op in ops if op.t1 != INF]
    # The event list: a call and a return node per completed op, in time
    # order; at equal times calls first, so touching ops count as concurrent.
    events = []
    for op in finite:
        events.append((op.t0, 0, op.i))
        events.append((op.t1, 1, op.i))
    events.sort()
    # Node 0 is the head; node j+1 is events[j].
    size = len(events) + 1
    nxt = list(range(1, size + 1))
    nxt[-1] = -1
    prv = list(range(-1, size - 1))
    node_op = [-1] * size
    node_call = [False] * size
    node_time = [0] * size
    call_node = [0] * n
    ret_node = [0] * n
    for j, (t, kind, i) in enumerate(events):
        node_op[j + 1] = i
        node_call[j + 1] = kind == 0
        node_time[j + 1] = t
        if kind == 0:
            call_node[i] = j + 1
        else:
            ret_node[i] = j + 1

    def lift(i):
        c, r = call_node[i], ret_node[i]
        nxt[prv[c]] = nxt[c]
        if nxt[c] != -1:
            prv[nxt[c]] = prv[c]
        nxt[prv[r]] = nxt[r]
        if nxt[r] != -1:
            prv[nxt[r]] = prv[r]

    def unlift(i):
        c, r = call_node[i], ret_node[i]
        if nxt[r] != -1:
            prv[nxt[r]] = r
        nxt[prv[r]] = r
        if nxt[c] != -1:
            prv[nxt[c]] = c
        nxt[prv[c]] = c

    # Info ops: the lone ones in invocation order, and the classes of
    # interchangeable ones, each in invocation order; of a class only the
    # next unused member is ever linearized (they are used as a prefix).
    is_info = [op.t1 == INF for op in ops]
    lone = [op.i for op in ops if op.t1 == INF and op.sym is None]
    classes = defaultdict(list)
    for op in ops:
        if op.t1 == INF and op.sym is not None:
            classes[op.sym].append(op.i)
    class_list = list(classes.values())
    class_of = {}
    for ci, members in enumerate(class_list):
        for i in members:
            class_of[i] = ci
    used = [0] * len(class_list)

    def info_candidates(lin, t_stop):
        """The info ops that may be linearized now, in a fixed order."""
        out = []
        for i in lone:
            if ops[i].t0 > t_stop:
                break
            if not (lin >> i) & 1:
                out.append(i)
        for ci, members in enumerate(class_list):
            u = used[ci]
            if u < len(members) and ops[members[u]].t0 <= t_stop:
                out.append(members[u])
        return out

    # The memo: (completed ops linearized, state) -> the sets of info ops
    # linearized with them that were explored already. A configuration
    # with a subset of those info ops used is at least as good as one with
    # more (the unused ones stay invokable forever), so a configuration is
    # pruned when a subset of its info ops was explored with the same
    # completed ops and state.
    cache = {}

    def seen(fin, info, st):
        ck = (fin, st)
        masks = cache.get(ck)
        if masks is None:
            cache[ck] = [info]
            return False
        for m in masks:
            if m & ~info == 0:
                return True
        # Keep the list an antichain: what the new set dominates goes.
        masks[:] = [m for m in masks if info & ~m != 0]
        masks.append(info)
        return False

    fin_lin = 0
    info_lin = 0
    calls = []  # (op index, state before it, stop time of its info phase or None)
    state = init_state
    linearized = 0
    best_depth = -1
    best_linearized = 0
    entry = nxt[0]
    resume_after = None  # in the info phase: resume after this op
    steps = 0
    while nxt[0] != -1:
        steps += 1
        if steps > max_steps:
            res.unknown = True
            res.steps = steps
            return res
        if entry != -1 and node_call[entry]:
            i = node_op[entry]
            new_state = step(state, ops[i])
            if new_state is not NO:
                new_fin = fin_lin | (1 << i)
                if not seen(new_fin, info_lin, new_state):
                    calls.append((i, state, None))
                    state = new_state
                    fin_lin = new_fin
                    linearized |= 1 << i
                    lift(i)
                    entry = nxt[0]
                    continue
            entry = nxt[entry]
            continue
        # The scan stopped at a completion (entry) whose op is not
        # linearized: try the info ops invoked by then.
        t_stop = node_time[entry]
        cands = info_candidates(linearized, t_stop)
        start = 0
        if resume_after is not None:
            start = cands.index(resume_after) + 1 if resume_after in cands else len(cands)
            resume_after = None
        moved = False
        for i in cands[start:]:
            steps += 1
            new_state = step(state, ops[i])
            # An info op that leaves the state as it is only uses itself up:
            # not taking it effect at all is at least as good.
            if new_state is NO or new_state == state:
                continue
            new_info = info_lin | (1 << i)
            if seen(fin_lin, new_info, new_state):
                continue
            calls.append((i, state, t_stop))
            state = new_state
            info_lin = new_info
            linearized |= 1 << i
            if i in class_of:
                used[class_of[i]] += 1
            entry = nxt[0]
            moved = True
            break
        if moved:
            continue
        # Nothing fits before this completion: backtrack.
        if len(calls) > best_depth:
            best_depth = len(calls)
            res.fail_op = ops[node_op[entry]]
            res.fail_state = state
            res.context = [ops[c[0]] for c in calls[-CONTEXT_OPS:]]
            best_linearized = linearized
        if not calls:
            res.ok = False
            res.steps = steps
            # The window: every op invoked before the failing op completed
            # that the deepest attempt had not linearized.
            fail_t1 = res.fail_op.t1
            res.pending = [op for op in ops if op.t0 <= fail_t1 and not (best_linearized >> op.i) & 1]
            res.after = [op for op in ops if op.t0 > fail_t1][:CONTEXT_OPS]
            return res
        i, state, t_was = calls.pop()
        linearized &= ~(1 << i)
        if is_info[i]:
            info_lin &= ~(1 << i)
        else:
            fin_lin &= ~(1 << i)
        if is_info[i]:
            if i in class_of:
                used[class_of[i]] -= 1
            # Resume the info phase of the same stop, after op i. The list
            # is as it was then, so the scan reaches the same completion.
            resume_after = i
            entry = nxt[0]
            while entry != -1 and node_call[entry]:
                entry = nxt[entry]
            assert node_time[entry] == t_was
        else:
            unlift(i)
            entry = nxt[call_node[i]]
    res.steps = steps
    return res


def lost_writes(model, raw_ops):
    """The final-read check of one key: a list of reasons (empty: fine)."""
    finals = [r for r in raw_ops if r.get("fin") and r.get("f") == "get" and r.get("r") == "ok"]
    if not finals:
        return []
    last = max(finals, key=lambda r: r["t0"])
    out = last.get("out")
    if model == "counter":
        got = 0 if out is None else parse_int(out)
        if got is None:
            return ["final read %r is not a number" % (out,)]
        acked = [r for r in raw_ops if r.get("f") == "add" and r.get("r") == "ok"]
        info = [r for r in raw_ops if r.get("f") == "add" and r.get("r") == "info"]
        ok_sum = sum(int(r["v"]) for r in acked)
        info_sum = sum(int(r["v"]) for r in info)
        max_out = max((int(r["out"]) for r in acked), default=0)
        reasons = []
        if got < ok_sum:
            reasons.append("final sum %d < %d, the sum of %d acknowledged adds" % (got, ok_sum, len(acked)))
        if got < max_out:
            reasons.append("final sum %d < %d, a sum an add acknowledged" % (got, max_out))
        if got > ok_sum + info_sum:
            reasons.append("final sum %d > %d, every acknowledged and unknown add" % (got, ok_sum + info_sum))
        return reasons
    writes = [r for r in raw_ops if r.get("f") in ("put", "cas") and r.get("r") in ("ok", "info")]
    acked = [r for r in writes if r.get("r") == "ok"]
    if out is None:
        if acked:
            w = max(acked, key=lambda r: r["t1"])
            return ["final read found nothing, but %d writes were acknowledged (last %r)" % (len(acked), w["v"])]
        return []
    src = [r for r in writes if r.get("v") == out]
    if not src:
        return ["final read %r: a value nobody wrote" % (out,)]
    w = src[0]
    w_t1 = INF if w.get("r") == "info" else w["t1"]
    later = [r for r in acked if r["t0"] > w_t1]
    if later:
        l = max(later, key=lambda r: r["t1"])
        return ["final read %r, written before %d acknowledged writes began (last %r)" % (out, len(later), l["v"])]
    return []


def fmt_op(op, base):
    r = op.raw
    t0 = (r["t0"] - base) / 1e6
    t1 = "inf" if r.get("r") == "info" else "%.3f" % ((r["t1"] - base) / 1e6)
    desc = {"get": "get -> %s" % json.dumps(r.get("out")),
            "put": "put %s" % json.dumps(r.get("v")),
            "cas": "cas %s -> %s" % (json.dumps(r.get("exp")), json.dumps(r.get("v"))),
            "add": "add %s -> %s" % (r.get("v"), json.dumps(r.get("out")))}.get(r.get("f"), r.get("f"))
    extra = " " + r["err"] if r.get("err") else ""
    fin = " (final read)" if r.get("fin") else ""
    return "[%10.3f, %10s] ms  p%-4s %-4s %s%s%s" % (t0, t1, r.get("p"), r.get("r"), desc, extra, fin)


def fmt_state(s):
    if s is UNSEEN:
        return "<a value nobody read>"
    return json.dumps(s) if not isinstance(s, tuple) else repr(s)


def violation_window(key, res, base):
    lines = ["key %s: NOT linearizable" % key]
    lines.append("  ops before the window, in the order the search linearized them:")
    for op in res.context:
        lines.append("    " + fmt_op(op, base))
    lines.append("  state after them: %s" % fmt_state(res.fail_state))
    lines.append("  no order of these ops (invoked before the first one's completion, not yet "
                 "linearized) fits the model; the op that cannot complete is marked *:")
    pend = sorted(res.pending, key=lambda o: o.t0)
    # The closest ops to the failing one matter; long-pending info ops are
    # listed last and only up to the bound.
    finite = [o for o in pend if o.t1 != INF]
    infinite = [o for o in pend if o.t1 == INF]
    shown = finite[-WINDOW_OPS_MAX:] + infinite[-max(0, WINDOW_OPS_MAX - len(finite)):]
    shown.sort(key=lambda o: o.t0)
    for op in shown:
        mark = "*" if op is res.fail_op else " "
        lines.append("   %s%s" % (mark, fmt_op(op, base)))
    if len(pend) > len(shown):
        lines.append("    (%d more pending ops not shown)" % (len(pend) - len(shown)))
    if res.after:
        lines.append("  the next ops invoked after it (context):")
        for op in res.after:
            lines.append("    " + fmt_op(op, base))
    return "\n".join(lines)


def load(path):
    per_key = defaultdict(list)
    bad = 0
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
                if not isinstance(r.get("k"), str) or not isinstance(r.get("t0"), int) or not isinstance(r.get("t1"), int):
                    raise ValueError("missing k, t0 or t1")
            except ValueError:
                bad += 1
                continue
            per_key[r["k"]].append(r)
    return per_key, bad


def check_history(per_key, max_steps=MAX_STEPS_DEFAULT, out=sys.stdout, verbose=True):
    """Checks every key; returns a summary dict."""
    summary = {"ops": 0, "ok": 0, "fail": 0, "info": 0, "keys": len(per_key),
               "violations": [], "lost": [], "unknown": [], "linearizable": True}
    base = min((r["t0"] for rs in per_key.values() for r in rs), default=0)
    rows = []
    for key in sorted(per_key, key=lambda k: (k[0], int(k[1:]) if k[1:].isdigit() else 0, k)):
        raw = per_key[key]
        counts = defaultdict(int)
        for r in raw:
            counts[r.get("r")] += 1
        summary["ops"] += len(raw)
        for c in ("ok", "fail", "info"):
            summary[c] += counts[c]
        model, ops = classify(key, raw)
        started = time.monotonic()
        res = check_ops(ops, 0 if model == "counter" else None, max_steps)
        secs = time.monotonic() - started
        lost = lost_writes(model, raw)
        verdict = "unknown" if res.unknown else ("yes" if res.ok else "NO")
        rows.append((key, model, len(raw), counts["ok"], counts["fail"], counts["info"], verdict,
                     "yes" if lost else "no", "%.2f" % secs))
        if res.unknown:
            summary["unknown"].append(key)
        elif not res.ok:
            summary["violations"].append(key)
            summary["linearizable"] = False
            if verbose:
                print(violation_window(key, res, base), file=out)
        if lost:
            summary["lost"].append(key)
            if verbose:
                for why in lost:
                    print("key %s: LOST WRITE: %s" % (key, why), file=out)
    if verbose:
        hdr = ("key", "model", "ops", "ok", "fail", "info", "linearizable", "lost", "secs")
        widths = [max(len(str(x)) for x in col) for col in zip(hdr, *rows)] if rows else [len(h) for h in hdr]
        print("  ".join(h.ljust(w) for h, w in zip(hdr, widths)), file=out)
        for row in rows:
            print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)), file=out)
        print("total: %d ops (%d ok, %d fail, %d info) on %d keys; linearizable: %s; lost: %d; unknown: %d"
              % (summary["ops"], summary["ok"], summary["fail"], summary["info"], summary["keys"],
                 "yes" if summary["linearizable"] else "NO (%s)" % ", ".join(summary["violations"]),
                 len(summary["lost"]), len(summary["unknown"])), file=out)
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Checks a fault_client history (JSON lines) for linearizability per key "
                    "(Wing-Gong/Lowe search with memoization) and for lost writes.",
        epilog="Exit status: 0 linearizable and nothing lost, 1 a violation or a lost write, "
               "2 bad usage or input.")
    ap.add_argument("history", help="the JSON-lines history fault_client wrote")
    ap.add_argument("--max-steps", type=int, default=MAX_STEPS_DEFAULT,
                    help="search steps per key before it is reported unknown (default %(default)s)")
    ap.add_argument("--json", metavar="FILE", help="also write the summary as JSON to FILE")
    args = ap.parse_args(argv)
    try:
        per_key, bad = load(args.history)
    except OSError as e:
        print("checker: cannot read %s: %s" % (args.history, e), file=sys.stderr)
        return 2
    if bad:
        print("checker: %d malformed lines skipped (a client killed mid-write?)" % bad, file=sys.stderr)
    summary = check_history(per_key, args.max_steps)
    summary["malformed_lines"] = bad
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f)
    return 1 if (summary["violations"] or summary["lost"]) else 0


if __name__ == "__main__":
    sys.exit(main())
