#!/usr/bin/env python3
"""Redis pub/sub and keyspace notifications on gridd's RESP port, against a
real redis-server 7: the same steps on both, what each client receives
compared reply by reply (bytes as RESP sends them).

    test_pubsub.py GRIDD

Starts one redis-server and one gridd on 127.0.0.1 (ports they pick, or
free ones), both with notify-keyspace-events KEA, and stops exactly those
two by pid. Needs redis-server 7.x (scripts/deps installs it).

Where the two may differ by design, the comparison says so:
- a change's notifications come from the change stream of its key's
  partition: one key's events keep their order, keys of different
  partitions may interleave differently than Redis's single thread does,
  so keyspace events are compared key by key;
- a key expires when each server's sweep finds it, so only that an
  'expired' event comes is compared, not when.
"""
import os
import select
import shutil
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resp_servers import gridd_stops_cleanly, start_gridd, start_redis, stop  # noqa: E402

REPLY_TIMEOUT_S = 5.0      # one reply
QUIET_S = 0.5              # no notification for this long: all have come
EVENTS_WAIT_S = 10.0       # notifications of one batch, at most

failures = []


def check(cond, what):
    if cond:
        print(f"ok   {what}")
    else:
        print(f"FAIL {what}")
        failures.append(what)


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Client:
    """One RESP connection; replies are parsed and kept as their raw bytes."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT_S)
        self.buf = b""

    def close(self):
        self.s.close()

    def send(self, *args):
        self.s.sendall(encode(*args))

    def send_raw(self, data):
        self.s.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([self.s], [], [], left)
        if not r:
            return False
        chunk = self.s.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        self.buf += chunk
        return True

    def _parse(self, at):
        """(end, value) of the reply starting at at, or None if incomplete."""
        nl = self.buf.find(b"\r\n", at)
        if nl < 0:
            return None
        kind, line = self.buf[at:at + 1], self.buf[at + 1:nl]
        if kind in (b"+", b"-", b":", b",", b"#", b"_"):  # "_": RESP3's null
            return nl + 2, self.buf[at:nl + 2]
        if kind == b"$":
            n = int(line)
            if n < 0:
                return nl + 2, None
            end = nl + 2 + n + 2
            if len(self.buf) < end:
                return None
            return end, self.buf[nl + 2:nl + 2 + n]
        if kind in (b"*", b"~", b">", b"%"):  # RESP3: set, push, map (pairs)
            n = int(line) * (2 if kind == b"%" else 1)
            items, pos = [], nl + 2
            for _ in range(max(n, 0)):
                r = self._parse(pos)
                if r is None:
                    return None
                pos, v = r
                items.append(v)
            return pos, items
        raise ValueError(f"not RESP: {self.buf[at:at + 40]!r}")

    def read(self, timeout=REPLY_TIMEOUT_S):
        """The next reply: (raw bytes, parsed), or None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if self.buf:
                r = self._parse(0)
                if r is not None:
                    end, v = r
                    raw, self.buf = self.buf[:end], self.buf[end:]
                    return raw, v
            if not self._fill(deadline):
                return None

    def call(self, *args):
        self.send(*args)
        r = self.read()
        return r[0] if r else b"(no reply)"


# ---- the steps ---------------------------------------------------------------

def transcript_call(out, cl, name, *args, replies=1):
    """Sends a command on cl and puts its replies' raw bytes in out."""
    cl.send(*args)
    for i in range(replies):
        r = cl.read()
        out.append((name, " ".join(str(x) for x in args) + (f" [{i}]" if replies > 1 else ""),
                    r[0] if r else b"(no reply)"))


def pubsub_steps(port):
    """Pub/sub replies and messages, in the order they come: a transcript."""
    out = []
    a, b, c = Client(port), Client(port), Client(port)

    def call(cl, name, *args, replies=1):
        transcript_call(out, cl, name, *args, replies=replies)

    def msg(cl, name, what):
        r = cl.read()
        out.append((name, what, r[0] if r else b"(none)"))

    call(a, "A", "SUBSCRIBE", "ch1", "ch2", replies=2)
    call(a, "A", "SUBSCRIBE", "ch1")                     # again: no change
    call(c, "C", "PSUBSCRIBE", "ch?", "x[ab]*", replies=2)
    call(b, "B", "PUBLISH", "ch1", "hello")              # A and C
    msg(a, "A", "message ch1")
    msg(c, "C", "pmessage ch? ch1")
    call(b, "B", "PUBLISH", "xb-1", "to a pattern")
    msg(c, "C", "pmessage x[ab]*")
    call(b, "B", "PUBLISH", "nobody", "lost")            # 0 receivers
    call(b, "B", "PUBLISH", b"bin\r\n\x00ch2", b"a\r\nb\x00c")
    call(b, "B", "PUBLISH", "ch2", b"a\r\nb\x00c")
    msg(a, "A", "binary message ch2")
    msg(c, "C", "pmessage ch? ch2")
    # Subscribed mode: only these commands.
    call(a, "A", "PING")
    call(a, "A", "PING", "there")
    call(a, "A", "GET", "k")
    call(a, "A", "SET", "k", "v")
    call(a, "A", "PUBLISH", "ch1", "from a subscriber")
    call(a, "A", "NOSUCHCOMMAND")
    call(b, "B", "PUBSUB", "NUMSUB", "ch1", "ch2", "none")
    call(b, "B", "PUBSUB", "NUMPAT")
    call(b, "B", "PUBSUB", "CHANNELS", "ch1")
    call(b, "B", "PUBSUB", "CHANNELS", "nomatch*")
    call(b, "B", "PUBSUB", "NOSUCH")
    call(b, "B", "PUBSUB", "CHANNELS", "a", "b")
    call(b, "B", "CONFIG", "GET")
    call(b, "B", "CONFIG", "NOSUCH")
    call(b, "B", "SUBSCRIBE")
    call(b, "B", "PUBLISH", "only-channel")
    # A command and a subscribe in one write, then a message.
    b.send_raw(encode("PING") + encode("SUBSCRIBE", "ch3") + encode("PING"))
    for what in ("PING before", "SUBSCRIBE ch3", "PING after"):
        msg(b, "B", what)
    call(c, "C", "PUBLISH", "ch3", "three")  # C is subscribed: refused
    call(a, "A", "UNSUBSCRIBE", "ch1")
    call(a, "A", "UNSUBSCRIBE", "ch1")       # not subscribed: count stays
    call(a, "A", "UNSUBSCRIBE")              # every one left: ch2
    call(a, "A", "UNSUBSCRIBE")              # none: nil
    call(a, "A", "GET", "pubsub-test-none")  # normal mode again
    call(c, "C", "PUNSUBSCRIBE", "x[ab]*")
    call(c, "C", "PUNSUBSCRIBE")             # every one left: ch?
    call(b, "B", "RESET")
    call(b, "B", "PUBSUB", "NUMSUB", "ch3")
    call(b, "B", "PUBLISH", "ch2", "after all left")
    for cl in (a, b, c):
        cl.close()
    return out


def events_by_key(msgs):
    """pmessage replies as {key: [(channel kind, event)]}, each key's in order."""
    keys = {}
    for m in msgs:
        _, _pattern, channel, payload = m
        if b"__keyspace@" in channel:
            key, ev = channel.split(b"__:", 1)[1], payload
            kind = "keyspace"
        else:
            key, ev = payload, channel.split(b"__:", 1)[1]
            kind = "keyevent"
        keys.setdefault(key, []).append((kind, ev))
    return keys


def collect(sub, until_key, until_event, timeout=EVENTS_WAIT_S):
    """Messages until until_key's until_event came and then none for QUIET_S."""
    msgs, seen, deadline = [], False, time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = sub.read(QUIET_S if seen else max(0.01, deadline - time.monotonic()))
        if r is None:
            if seen:
                break
            continue
        msgs.append(r[1])
        _, _, channel, payload = r[1]
        if channel.endswith(b"__:" + until_key) and payload == until_event:
            seen = True
    return msgs


KEYSPACE_BATCH = [
    ("SET", "ks:a", "1"),
    ("SET", "ks:b", "v", "EX", "100"),
    ("SETEX", "ks:c", "100", "v"),
    ("PSETEX", "ks:d", "100000", "v"),
    ("SETNX", "ks:e", "v"),
    ("SETNX", "ks:e", "again"),            # not set: no event
    ("GETSET", "ks:a", "2"),
    ("GETDEL", "ks:e"),
    ("GETDEL", "ks:missing"),              # nothing deleted: no event
    ("MSET", "ks:f", "1", "ks:g", "2"),
    ("INCR", "ks:h"),
    ("DECR", "ks:h"),
    ("INCRBY", "ks:h", "5"),
    ("DECRBY", "ks:h", "2"),
    ("APPEND", "ks:f", "x"),
    ("APPEND", "ks:i", "new"),
    ("EXPIRE", "ks:a", "100"),
    ("PEXPIRE", "ks:a", "100000"),
    ("PERSIST", "ks:a"),
    ("PERSIST", "ks:a"),                   # no TTL: no event
    ("EXPIRE", "ks:missing", "100"),
    ("EXPIRE", "ks:g", "-1"),              # deletes
    ("DEL", "ks:b", "ks:c", "ks:missing"),
    # hashes, sets, lists, strings changed in place: their own events, and
    # "del" after the command that leaves a collection empty
    ("HSET", "ks:hh", "a", "1", "b", "2"),
    ("HSETNX", "ks:hh", "a", "x"),         # not set: no event
    ("HINCRBY", "ks:hh", "n", "2"),
    ("HINCRBYFLOAT", "ks:hh", "f", "1.5"),
    ("HDEL", "ks:hh", "a", "b", "n", "f"),
    ("SADD", "ks:s", "1", "2"),
    ("SREM", "ks:s", "1"),
    ("SPOP", "ks:s"),
    ("RPUSH", "ks:l", "a", "b", "c"),
    ("LPUSHX", "ks:l", "z"),
    ("LPOP", "ks:l"),
    ("RPOP", "ks:l"),
    ("LSET", "ks:l", "0", "q"),
    ("LINSERT", "ks:l", "BEFORE", "q", "p"),
    ("LREM", "ks:l", "1", "p"),
    ("RPUSH", "ks:l2", "x"),
    ("LMOVE", "ks:l2", "ks:l", "LEFT", "RIGHT"),
    ("LTRIM", "ks:l", "5", "6"),
    ("SADD", "ks:s2", "a"),
    ("SADD", "ks:s3", "a", "b"),
    ("SINTERSTORE", "ks:s4", "ks:s2", "ks:s3"),
    ("SMOVE", "ks:s2", "ks:s3", "a"),
    ("SET", "ks:str", "hello"),
    ("SETRANGE", "ks:str", "1", "a"),
    ("SETBIT", "ks:str", "1", "1"),
    ("INCRBYFLOAT", "ks:fl", "1.5"),
    ("RENAME", "ks:str", "ks:str2"),
    ("COPY", "ks:str2", "ks:str3"),
    ("SET", "ks:j", "v", "PX", "100"),     # expires soon
    ("SET", "ks:end", "1"),
]


def keyspace_steps(port, flags_list):
    """For each flags, the notifications of KEYSPACE_BATCH key by key."""
    out = {}
    sub, w = Client(port), Client(port)
    sub.call("PSUBSCRIBE", "__key*@0__:*")
    for flags in flags_list:
        res = {"config set": w.call("CONFIG", "SET", "notify-keyspace-events", flags),
               "config get": w.call("CONFIG", "GET", "notify-keyspace-events")}
        for i, cmd in enumerate(KEYSPACE_BATCH):
            res[f"{i}: " + " ".join(cmd)] = w.call(*cmd)
        # Until ks:j's expiry, or ks:end's set when expiry is not asked for.
        wants_x = "x" in flags or "A" in flags
        wants_set = "$" in flags or "A" in flags
        if wants_x:
            msgs = collect(sub, b"ks:j", b"expired")
        elif wants_set:
            msgs = collect(sub, b"ks:end", b"set")
        else:
            msgs = collect(sub, b"ks:end", b"(never)", timeout=1.0)
        res["events"] = events_by_key(msgs)
        w.call("DEL", *[k for k in res["events"]])   # the next round starts alike
        w.call("DEL", "ks:a", "ks:d", "ks:f", "ks:h", "ks:i", "ks:end", "ks:s3", "ks:s4", "ks:fl",
               "ks:str2", "ks:str3", "ks:l", "ks:l2", "ks:s", "ks:s2", "ks:hh")
        collect(sub, b"(none)", b"(never)", timeout=1.0)  # and hears nothing of it
        out[flags] = res
    sub.close()
    w.close()
    return out


def config_steps(port):
    c = Client(port)
    out = []
    for args in (("CONFIG", "GET", "notify-keyspace-events"),
                 ("CONFIG", "SET", "notify-keyspace-events", "KEQ"),
                 ("CONFIG", "SET", "notify-keyspace-events", "gK$x"),
                 ("CONFIG", "GET", "notify-keyspace-events"),
                 ("CONFIG", "SET", "notify-keyspace-events", "AKEn"),
                 ("CONFIG", "GET", "notify-*"),
                 ("CONFIG", "GET", "no-such-parameter"),
                 ("CONFIG", "SET", "notify-keyspace-events", "KEA"),
                 ("CONFIG", "GET", "notify-keyspace-events")):
        out.append(("", " ".join(args), c.call(*args)))
    c.close()
    return out


def resp3_steps(port):
    """RESP3's own bytes (HELLO 3): nulls, maps, sets, and pub/sub as pushes
    on a connection that goes on running commands."""
    out = []
    a, b = Client(port), Client(port)

    def call(cl, name, *args, replies=1):
        transcript_call(out, cl, name, *args, replies=replies)

    a.send("HELLO", "3")
    hello = a.read()
    out.append(("A", "HELLO 3 proto", b"proto" in hello[0] and b":3\r\n" in hello[0]
                if hello else False))
    call(a, "A", "GET", "r3:none")
    call(a, "A", "HSET", "r3:h", "f", "v")
    call(a, "A", "HGETALL", "r3:h")
    call(a, "A", "SADD", "r3:s", "7")
    call(a, "A", "SMEMBERS", "r3:s")
    call(a, "A", "MGET", "r3:none", "r3:h")
    call(a, "A", "LPOP", "r3:nolist", "2")
    call(a, "A", "SUBSCRIBE", "r3ch")
    call(a, "A", "GET", "r3:none")                       # RESP3: still any command
    call(b, "B", "PUBLISH", "r3ch", "hi")
    r = a.read()
    out.append(("A", "message push", r[0] if r else b"(none)"))
    call(a, "A", "UNSUBSCRIBE", "r3ch")
    call(a, "A", "WATCH", "r3:h")
    call(b, "B", "SET", "r3:h", "changed")
    call(a, "A", "MULTI")
    call(a, "A", "GET", "r3:h")
    call(a, "A", "EXEC")                                 # aborted: a null
    call(a, "A", "RESET")
    call(a, "A", "GET", "r3:none")                       # RESP2 again
    a.close()
    b.close()
    return out


def compare_transcripts(name, r, g):
    for i, (rs, gs) in enumerate(zip(r, g)):
        check(rs == gs, f"{name} {i}: {rs[0]} {rs[1]}: redis {rs[2]!r} grid {gs[2]!r}")
    check(len(r) == len(g), f"{name}: as many steps ({len(r)}, {len(g)})")


def grid_only_steps(port):
    """What Redis has no counterpart for: notifications switched on at run
    time reach a subscriber once the node follows the database."""
    w, sub = Client(port), Client(port)
    check(w.call("CONFIG", "SET", "notify-keyspace-events", "") == b"+OK\r\n",
          "grid: notifications off")
    sub.call("SUBSCRIBE", "__keyevent@0__:set")
    w.call("CONFIG", "SET", "notify-keyspace-events", "E$")
    got, deadline, n = None, time.monotonic() + EVENTS_WAIT_S, 0
    while time.monotonic() < deadline and got is None:
        n += 1
        w.call("SET", f"probe:{n}", "v")
        r = sub.read(0.2)
        got = r[1] if r else None
    check(got is not None and got[0] == b"message" and got[2].startswith(b"probe:"),
          f"grid: a set after CONFIG SET is heard ({got})")
    w.call("CONFIG", "SET", "notify-keyspace-events", "KEA")
    # A random pick that may repeat has no bound of its own: grid keeps it
    # within batch_keys_max (Redis would try to answer 10^18 members).
    w.call("SADD", "bound:s", "m")
    w.call("HSET", "bound:h", "f", "v")
    for cmd in (("SRANDMEMBER", "bound:s", "-9223372036854775807"),
                ("HRANDFIELD", "bound:h", "-100000", "WITHVALUES")):
        r = w.call(*cmd)
        check(r.startswith(b"-ERR") and b"batch_keys_max" in r, f"grid: {cmd[0]} bounded ({r!r})")
    check(w.call("PING") == b"+PONG\r\n", "grid: still serving")
    w.close()
    sub.close()


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) == 2 else 2)
    gridd = sys.argv[1]
    if not shutil.which("redis-server"):
        sys.exit("test_pubsub: redis-server not found; scripts/deps installs it")
    work = tempfile.mkdtemp(prefix="grid-pubsub-")
    procs = []
    try:
        rp, rport = start_redis(work, ["--notify-keyspace-events", "KEA"], who="test_pubsub")
        procs.append(rp)
        gp, gport = start_gridd(gridd, work, ["notify_keyspace_events=KEA", "sweep_interval_ms=50"],
                               who="test_pubsub")
        procs.append(gp)

        compare_transcripts("pubsub", pubsub_steps(rport), pubsub_steps(gport))
        compare_transcripts("config", config_steps(rport), config_steps(gport))
        compare_transcripts("resp3", resp3_steps(rport), resp3_steps(gport))

        flags_list = ["KEA", "Kg", "E$", "Ex", "Kl", "AE", "KEAn", "Kn"]
        rk, gk = keyspace_steps(rport, flags_list), keyspace_steps(gport, flags_list)
        for flags in flags_list:
            for what in rk[flags]:
                if what == "events":
                    rev, gev = rk[flags][what], gk[flags][what]
                    for key in sorted(set(rev) | set(gev)):
                        check(rev.get(key) == gev.get(key),
                              f"keyspace {flags} {key!r}: redis {rev.get(key)} grid {gev.get(key)}")
                else:
                    check(rk[flags][what] == gk[flags][what],
                          f"keyspace {flags} {what}: redis {rk[flags][what]!r} "
                          f"grid {gk[flags][what]!r}")
        check(any(rk[f]["events"] for f in flags_list), "redis raised keyspace events at all")
        grid_only_steps(gport)
        check(gp.poll() is None, "gridd still running")
        rc = gridd_stops_cleanly(gp, work)
        check(rc == 0, f"gridd stopped cleanly (exit status {rc})")
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)
    print(f"test_pubsub: {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
