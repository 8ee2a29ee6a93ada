#!/usr/bin/env python3
"""Unit tests of stream_check.py: hand-made histories and streams, one per
rule it enforces, each failing the way it should."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stream_check  # noqa: E402


def w(k, v, r="ok", f="put"):
    return {"p": 0, "f": f, "k": k, "v": v, "r": r}


def ev(k, v, ver, part=1, e="put"):
    return {"e": e, "k": k, "v": v, "ver": ver, "part": part}


class StreamCheck(unittest.TestCase):
    def test_every_write_once_in_order(self):
        h = [w("r1", "a"), w("r1", "b", f="cas"), w("r2", "c"), w("c1", 5, f="add")]
        s = [ev("r1", "a", 10), ev("r2", "c", 11, part=2), ev("r1", "b", 12)]
        r = stream_check.check(h, s)
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["acked"], 3)

    def test_missing(self):
        r = stream_check.check([w("r1", "a"), w("r1", "b")], [ev("r1", "a", 10)])
        self.assertFalse(r["ok"])
        self.assertEqual(r["missing"], ["r1=b"])

    def test_missing_after_gap_is_allowed(self):
        s = [ev("r1", "a", 10, part=3), {"e": "gap", "part": 3}]
        r = stream_check.check([w("r1", "a"), w("r1", "b")], s)
        self.assertTrue(r["ok"], r)
        self.assertEqual(r["after_gap"], 1)

    def test_repeated(self):
        r = stream_check.check([w("r1", "a")], [ev("r1", "a", 10), ev("r1", "a", 11)])
        self.assertFalse(r["ok"])
        self.assertEqual(r["repeated"], ["r1=a"])

    def test_never_written(self):
        r = stream_check.check([w("r1", "a")], [ev("r1", "a", 10), ev("r1", "zz", 11)])
        self.assertFalse(r["ok"])
        self.assertEqual(r["phantom"], ["r1=zz"])

    def test_unknown_outcome_may_appear_or_not(self):
        h = [w("r1", "a"), w("r1", "b", r="info"), w("r1", "c", r="info")]
        r = stream_check.check(h, [ev("r1", "a", 10), ev("r1", "b", 11)])
        self.assertTrue(r["ok"], r)

    def test_out_of_order(self):
        h = [w("r1", "a"), w("r1", "b")]
        r = stream_check.check(h, [ev("r1", "b", 12), ev("r1", "a", 10)])
        self.assertFalse(r["ok"])
        self.assertEqual(len(r["out_of_order"]), 1)

    def test_ended(self):
        r = stream_check.check([], [{"e": "ended", "part": 0, "err": "GRID_ENOCACHE"}])
        self.assertFalse(r["ok"])
        self.assertEqual(r["ended"], "GRID_ENOCACHE")


if __name__ == "__main__":
    unittest.main()
