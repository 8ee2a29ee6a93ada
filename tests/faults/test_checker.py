#!/usr/bin/env python3
"""Unit tests of checker.py: hand-made histories that are linearizable and
ones that are not, and generated ones of the size a fault run produces."""

import io
import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checker  # noqa: E402

MS = 1_000_000  # history times are nanoseconds


class H:
    """Builds a history: op(p, f, k, t0_ms, t1_ms, ...) appends one record."""

    def __init__(self):
        self.recs = []

    def op(self, p, f, k, t0, t1, r="ok", v=None, exp=None, out=None, err=None, fin=False):
        rec = {"p": p, "f": f, "k": k, "v": v, "exp": exp, "t0": int(t0 * MS),
               "t1": int(t1 * MS), "r": r, "out": out}
        if err:
            rec["err"] = err
        if fin:
            rec["fin"] = 1
        self.recs.append(rec)
        return self

    def put(self, p, k, v, t0, t1, r="ok", err=None):
        return self.op(p, "put", k, t0, t1, r=r, v=v, err=err)

    def get(self, p, k, out, t0, t1, fin=False, r="ok"):
        return self.op(p, "get", k, t0, t1, r=r, out=out, fin=fin)

    def cas(self, p, k, exp, v, t0, t1, r="ok", err=None):
        return self.op(p, "cas", k, t0, t1, r=r, v=v, exp=exp, err=err)

    def add(self, p, k, d, out, t0, t1, r="ok"):
        return self.op(p, "add", k, t0, t1, r=r, v=d, out=out)

    def check(self):
        per_key = {}
        for r in self.recs:
            per_key.setdefault(r["k"], []).append(r)
        buf = io.StringIO()
        s = checker.check_history(per_key, out=buf)
        s["text"] = buf.getvalue()
        return s


class Register(unittest.TestCase):
    def test_sequential(self):
        h = H().get(0, "r", None, 0, 1).put(0, "r", "a", 2, 3).get(1, "r", "a", 4, 5)
        h.put(1, "r", "b", 6, 7).get(0, "r", "b", 8, 9)
        self.assertTrue(h.check()["linearizable"])

    def test_concurrent_read_may_see_old_or_new(self):
        h = H().put(0, "r", "a", 0, 1).put(0, "r", "b", 2, 10)
        h.get(1, "r", "a", 3, 4).get(2, "r", "b", 5, 6).get(3, "r", "b", 11, 12)
        self.assertTrue(h.check()["linearizable"])

    def test_stale_read_after_acknowledged_write(self):
        h = H().put(0, "r", "a", 0, 1).put(0, "r", "b", 2, 3).get(1, "r", "a", 4, 5)
        s = h.check()
        self.assertFalse(s["linearizable"])
        self.assertEqual(s["violations"], ["r"])
        self.assertIn("NOT linearizable", s["text"])
        self.assertIn('get -> "a"', s["text"])

    def test_read_goes_back_in_time(self):
        # Two concurrent reads during a write may split, but once a read
        # saw the new value a later read must not see the old one.
        h = H().put(0, "r", "a", 0, 1).put(0, "r", "b", 2, 20)
        h.get(1, "r", "b", 3, 4).get(2, "r", "a", 5, 6)
        self.assertFalse(h.check()["linearizable"])

    def test_lost_acknowledged_write(self):
        h = H().put(0, "r", "a", 0, 1).put(0, "r", "b", 2, 3).get(1000, "r", "a", 10, 11, fin=True)
        s = h.check()
        self.assertFalse(s["linearizable"])
        self.assertEqual(s["lost"], ["r"])
        self.assertIn("LOST WRITE", s["text"])

    def test_final_read_empty_after_acknowledged_write(self):
        h = H().put(0, "r", "a", 0, 1).get(1000, "r", None, 10, 11, fin=True)
        s = h.check()
        self.assertEqual(s["lost"], ["r"])
        self.assertFalse(s["linearizable"])

    def test_value_nobody_wrote(self):
        h = H().put(0, "r", "a", 0, 1).get(1, "r", "zzz", 2, 3)
        self.assertFalse(h.check()["linearizable"])

    def test_failed_write_must_not_appear(self):
        h = H().put(0, "r", "a", 0, 1).put(0, "r", "b", 2, 3, r="fail", err="GRID_ENOTREADY")
        h.get(1, "r", "b", 4, 5)
        self.assertFalse(h.check()["linearizable"])

    def test_failed_read_is_no_observation(self):
        h = H().put(0, "r", "a", 0, 1).get(1, "r", None, 2, 3, r="fail")
        self.assertTrue(h.check()["linearizable"])


class Cas(unittest.TestCase):
    def test_cas_chain(self):
        h = H().put(0, "r", "a", 0, 1).cas(1, "r", "a", "b", 2, 3).cas(2, "r", "b", "c", 4, 5)
        h.get(0, "r", "c", 6, 7)
        self.assertTrue(h.check()["linearizable"])

    def test_two_cas_from_one_value_both_succeed(self):
        h = H().put(0, "r", "a", 0, 1).cas(1, "r", "a", "b", 2, 5).cas(2, "r", "a", "c", 3, 6)
        self.assertFalse(h.check()["linearizable"])

    def test_concurrent_cas_one_wins(self):
        h = H().put(0, "r", "a", 0, 1).cas(1, "r", "a", "b", 2, 5)
        h.cas(2, "r", "a", "c", 3, 6, r="fail", err="GRID_EVERSION").get(0, "r", "b", 7, 8)
        self.assertTrue(h.check()["linearizable"])

    def test_cas_refused_with_nothing_changed(self):
        # EVERSION says the value was not "a"; nothing else was written.
        h = H().put(0, "r", "a", 0, 1).cas(1, "r", "a", "b", 2, 3, r="fail", err="GRID_EVERSION")
        self.assertFalse(h.check()["linearizable"])

    def test_cas_refusal_explained_by_an_unknown_write(self):
        h = H().put(0, "r", "a", 0, 1).put(2, "r", "x", 1.5, 2, r="info", err="GRID_EUNKNOWN")
        h.cas(1, "r", "a", "b", 2, 3, r="fail", err="GRID_EVERSION")
        self.assertTrue(h.check()["linearizable"])

    def test_cas_notfound_on_written_key(self):
        h = H().put(0, "r", "a", 0, 1).cas(1, "r", "a", "b", 2, 3, r="fail", err="GRID_ENOTFOUND")
        self.assertFalse(h.check()["linearizable"])

    def test_cas_on_stale_value_succeeds(self):
        h = H().put(0, "r", "a", 0, 1).put(0, "r", "b", 2, 3).cas(1, "r", "a", "c", 4, 5)
        self.assertFalse(h.check()["linearizable"])


class Info(unittest.TestCase):
    def test_info_write_that_took_effect(self):
        h = H().put(0, "r", "a", 0, 1).put(1, "r", "x", 2, 3, r="info", err="GRID_EUNKNOWN")
        h.get(2, "r", "x", 50, 51)
        self.assertTrue(h.check()["linearizable"])

    def test_info_write_that_did_not(self):
        h = H().put(0, "r", "a", 0, 1).put(1, "r", "x", 2, 3, r="info", err="GRID_EUNKNOWN")
        h.get(2, "r", "a", 50, 51).get(1000, "r", "a", 60, 61, fin=True)
        s = h.check()
        self.assertTrue(s["linearizable"])
        self.assertEqual(s["lost"], [])

    def test_info_write_seen_then_unseen(self):
        h = H().put(0, "r", "a", 0, 1).put(1, "r", "x", 2, 3, r="info", err="GRID_EUNKNOWN")
        h.get(2, "r", "x", 50, 51).get(2, "r", "a", 52, 53)
        self.assertFalse(h.check()["linearizable"])

    def test_info_write_takes_effect_late(self):
        # An unknown write may land long after its client gave up, even
        # after a later acknowledged write.
        h = H().put(1, "r", "x", 0, 1, r="info", err="GRID_EUNKNOWN").put(0, "r", "a", 2, 3)
        h.get(2, "r", "x", 10, 11)
        self.assertTrue(h.check()["linearizable"])

    def test_info_cannot_take_effect_before_invocation(self):
        h = H().put(0, "r", "a", 0, 1).get(2, "r", "x", 2, 3)
        h.put(1, "r", "x", 5, 6, r="info", err="GRID_EUNKNOWN")
        self.assertFalse(h.check()["linearizable"])

    def test_info_cas(self):
        h = H().put(0, "r", "a", 0, 1).cas(1, "r", "a", "b", 2, 3, r="info", err="GRID_EUNKNOWN")
        h.get(2, "r", "b", 10, 11)
        self.assertTrue(h.check()["linearizable"])
        h = H().put(0, "r", "a", 0, 1).put(0, "r", "c", 2, 3)
        h.cas(1, "r", "a", "b", 4, 5, r="info", err="GRID_EUNKNOWN").get(2, "r", "b", 10, 11)
        self.assertFalse(h.check()["linearizable"])

    def test_many_unknown_writes(self):
        # 300 writes of unknown outcome, one of which a late read sees.
        h = H().put(0, "r", "a0", 0, 1)
        for i in range(300):
            h.put(1 + i, "r", "u%d" % i, 2 + i, 3 + i, r="info", err="GRID_EUNKNOWN")
            h.get(0, "r", "a0", 2.5 + i, 2.7 + i)
        h.get(0, "r", "u7", 400, 401)
        self.assertTrue(h.check()["linearizable"])


class Counter(unittest.TestCase):
    def test_counter(self):
        h = H().get(0, "c", None, 0, 1).add(0, "c", 2, 2, 2, 3).add(1, "c", 3, 5, 2.5, 4)
        h.get(1, "c", "5", 5, 6).get(1000, "c", "5", 10, 11, fin=True)
        s = h.check()
        self.assertTrue(s["linearizable"])
        self.assertEqual(s["lost"], [])

    def test_two_adds_same_sum(self):
        h = H().add(0, "c", 1, 1, 0, 1).add(1, "c", 1, 1, 2, 3)
        self.assertFalse(h.check()["linearizable"])

    def test_counter_read_lower_than_acknowledged(self):
        h = H().add(0, "c", 1, 1, 0, 1).add(0, "c", 1, 2, 2, 3).get(1, "c", "1", 4, 5)
        self.assertFalse(h.check()["linearizable"])

    def test_counter_lost_add(self):
        h = H().add(0, "c", 4, 4, 0, 1).add(0, "c", 1, 5, 2, 3).get(1000, "c", "4", 10, 11, fin=True)
        s = h.check()
        self.assertFalse(s["linearizable"])
        self.assertEqual(s["lost"], ["c"])

    def test_counter_info_adds(self):
        h = H().add(0, "c", 1, 1, 0, 1).add(1, "c", 2, None, 2, 3, r="info")
        h.add(2, "c", 2, None, 2.5, 3.5, r="info").get(0, "c", "3", 10, 11)
        h.get(1000, "c", "5", 20, 21, fin=True)
        s = h.check()
        self.assertTrue(s["linearizable"])
        self.assertEqual(s["lost"], [])
        h = H().add(0, "c", 1, 1, 0, 1).add(1, "c", 2, None, 2, 3, r="info").get(0, "c", "4", 10, 11)
        self.assertFalse(h.check()["linearizable"])


def generated(seed, nops, procs, info_rate=0.02, counter=False, corrupt=False):
    """A linearizable history made by running ops at random points inside
    random overlapping intervals; corrupt=True makes one read stale."""
    rnd = random.Random(seed)
    ops = []
    t = 0.0
    free_at = [0.0] * procs
    for i in range(nops):
        p = rnd.randrange(procs)
        t0 = max(free_at[p], t) + rnd.random() * 0.2
        t1 = t0 + 0.05 + rnd.random() * 2.0
        free_at[p] = t1
        t += rnd.random() * 0.1
        lin = t0 + (t1 - t0) * rnd.random()
        ops.append([lin, p, t0, t1])
    ops.sort()
    h = H()
    state = None if not counter else 0
    seq = 0
    last_read = None
    for lin, p, t0, t1 in ops:
        x = rnd.random()
        info = rnd.random() < info_rate
        if counter:
            if x < 0.6:
                d = rnd.randint(1, 5)
                if info and rnd.random() < 0.5:
                    h.add(p, "c", d, None, t0, t1, r="info")  # never took effect
                    continue
                state += d
                h.add(p, "c", d, None if info else state, t0, t1, r="info" if info else "ok")
            else:
                h.get(p, "c", str(state) if state else None, t0, t1)
            continue
        if x < 0.4:
            seq += 1
            v = "t%d-%d" % (p, seq)
            if info and rnd.random() < 0.5:
                h.put(p, "r", v, t0, t1, r="info", err="GRID_EUNKNOWN")
                continue
            state = v
            h.put(p, "r", v, t0, t1, r="info" if info else "ok")
        elif x < 0.7 or state is None:
            h.get(p, "r", state, t0, t1)
            last_read = len(h.recs) - 1
        else:
            seq += 1
            v = "t%d-%d" % (p, seq)
            exp = state if rnd.random() < 0.5 else "t%d-%d" % (p, rnd.randint(1, max(1, seq - 1)))
            if exp == state:
                state = v
                h.cas(p, "r", exp, v, t0, t1)
            else:
                h.cas(p, "r", exp, v, t0, t1, r="fail", err="GRID_EVERSION")
    if corrupt and last_read is not None:
        h.recs[last_read]["out"] = "never-written"
    return h


class Generated(unittest.TestCase):
    # Sizes keep the suite to seconds; perf/faults runs the checker on
    # real histories of tens of thousands of ops.
    def test_register_16_processes(self):
        for seed in range(2):
            h = generated(seed, 300, 16)
            s = h.check()
            self.assertTrue(s["linearizable"], s["text"][:3000])

    def test_counter_16_processes(self):
        h = generated(7, 500, 16, counter=True)
        s = h.check()
        self.assertTrue(s["linearizable"], s["text"][:3000])

    def test_corrupted_is_found(self):
        # A violation needs the whole search space behind it explored:
        # with the 4 to 8 processes of a fault run that takes seconds.
        for seed, procs in ((0, 4), (0, 8)):
            h = generated(seed, 1000, procs, corrupt=True)
            s = h.check()
            self.assertFalse(s["linearizable"])
            self.assertIn("never-written", s["text"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
