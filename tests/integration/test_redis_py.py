#!/usr/bin/python3
"""A scripted session of redis-py (Debian's python3-redis), the client most
Python code uses, against gridd's RESP port and against a real redis-server
7: every step's result must be the same on both.

    test_redis_py.py GRIDD

Runs with Debian's /usr/bin/python3 (python3-redis is installed for it).
Starts one redis-server and one gridd on 127.0.0.1 and stops exactly those
by pid; restarts each once on its port (the reconnect step).

What it covers: plain commands; hashes, sets and lists; pipelines with and
without a transaction (redis-py's default pipeline() is MULTI/EXEC), errors
inside a transaction, WATCH with the retry loop redis-py documents (a change
from another connection forces one retry), r.transaction(), concurrent
WATCH increments from several threads (none lost, none doubled); PubSub;
binary and large values; databases; KEYS, scan_iter, RENAME, FLUSHDB and
FLUSHALL; and a client that reconnects after its server restarted.
"""
import os
import shutil
import sys
import tempfile
import threading
import time

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resp_servers import gridd_stops_cleanly, start_gridd, start_redis, stop  # noqa: E402

THREADS = 4              # concurrent WATCH increments ...
INCREMENTS = 50          # ... each, on one key
LARGE_BYTES = 1 << 20    # a value of 1 MiB
SOCKET_TIMEOUT_S = 10

failures = []


def check(cond, what):
    print(f"{'ok  ' if cond else 'FAIL'} {what}")
    if not cond:
        failures.append(what)


def outcome(fn):
    """What a step gives: its value, or the error's type and words."""
    try:
        return ("ok", fn())
    except redis.RedisError as e:
        return ("error", type(e).__name__, str(e))


def client(port):
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=SOCKET_TIMEOUT_S)


def plain_steps(r, out):
    out.append(("set", outcome(lambda: r.set("py:a", "1"))))
    out.append(("get", outcome(lambda: r.get("py:a"))))
    out.append(("incr", outcome(lambda: r.incr("py:n", 5))))
    out.append(("expire", outcome(lambda: r.expire("py:a", 100))))
    out.append(("ttl", outcome(lambda: r.ttl("py:a"))))
    out.append(("mget", outcome(lambda: r.mget("py:a", "py:n", "py:none"))))
    out.append(("binary", outcome(lambda: (r.set(b"py:\x00b\r\n", b"\xff\x00\r\n"),
                                           r.get(b"py:\x00b\r\n")))))
    big = os.urandom(LARGE_BYTES)
    out.append(("large", outcome(lambda: (r.set("py:big", big), r.get("py:big") == big))))
    db1 = redis.Redis(host="127.0.0.1", port=r.connection_pool.connection_kwargs["port"], db=1)
    out.append(("db=1", outcome(lambda: (db1.set("py:a", "in db1"), db1.get("py:a"), r.get("py:a")))))
    db1.close()
    out.append(("incr non-number", outcome(lambda: (r.set("py:s", "text"), r.incr("py:s")))))


def types_steps(r, out):
    """Hashes, sets and lists as Python code uses them (sets compared as sets:
    Redis keeps no order for them)."""
    out.append(("hset mapping", outcome(lambda: r.hset("py:thing", mapping={
        "temperature": "21.5", "rpm": "1200", "state": "on"}))))
    out.append(("hgetall", outcome(lambda: r.hgetall("py:thing"))))
    out.append(("hincrby", outcome(lambda: r.hincrby("py:thing", "rpm", 30))))
    out.append(("hincrbyfloat", outcome(lambda: r.hincrbyfloat("py:thing", "temperature", 0.25))))
    out.append(("hmget", outcome(lambda: r.hmget("py:thing", ["rpm", "nope", "state"]))))
    out.append(("hscan_iter", outcome(lambda: sorted(r.hscan_iter("py:thing", match="r*")))))
    out.append(("hdel hlen", outcome(lambda: (r.hdel("py:thing", "state"), r.hlen("py:thing")))))
    out.append(("sadd", outcome(lambda: r.sadd("py:set", "a", "b", "c", "a"))))
    out.append(("smembers", outcome(lambda: r.smembers("py:set"))))
    out.append(("sinter", outcome(lambda: (r.sadd("py:set2", "b", "c", "d"),
                                          r.sinter("py:set", "py:set2"),
                                          r.sunion("py:set", "py:set2"),
                                          r.sdiff("py:set", "py:set2")))))
    out.append(("sscan_iter", outcome(lambda: sorted(r.sscan_iter("py:set")))))
    out.append(("lists", outcome(lambda: (r.rpush("py:list", *range(6)), r.lpop("py:list"),
                                         r.rpop("py:list", 2), r.lrange("py:list", 0, -1),
                                         r.lmove("py:list", "py:list2", "LEFT", "RIGHT"),
                                         r.lrange("py:list2", 0, -1), r.llen("py:list"),
                                         r.lpos("py:list", "3")))))
    out.append(("wrongtype", outcome(lambda: r.lpush("py:thing", "x"))))
    out.append(("types", outcome(lambda: [r.type(k) for k in
                                          ("py:thing", "py:set", "py:list", "py:a", "py:none")])))


def keyspace_steps(r, out):
    """KEYS, SCAN (every key once, whatever the cursor's form), RANDOMKEY,
    RENAME, FLUSHDB and FLUSHALL, in database 3 and 4."""
    port = r.connection_pool.connection_kwargs["port"]
    d3 = redis.Redis(host="127.0.0.1", port=port, db=3)
    d4 = redis.Redis(host="127.0.0.1", port=port, db=4)
    try:
        d3.flushdb()
        for i in range(300):
            d3.set(f"ks:{i}", i)
        d3.hset("ks:hash", "f", "v")
        d3.sadd("ks:set", "m")
        d4.set("other", "1")
        out.append(("keys", outcome(lambda: sorted(d3.keys("ks:*")))))
        out.append(("scan_iter", outcome(lambda: sorted(d3.scan_iter(count=7)))))
        out.append(("scan match", outcome(lambda: sorted(d3.scan_iter(match="ks:1?")))))
        out.append(("scan type", outcome(lambda: sorted(d3.scan_iter(_type="hash")))))
        out.append(("randomkey", outcome(lambda: d3.randomkey().startswith(b"ks:"))))
        out.append(("rename", outcome(lambda: (d3.rename("ks:1", "ks:one"), d3.get("ks:one"),
                                              d3.exists("ks:1")))))
        out.append(("dbsize", outcome(d3.dbsize)))
        out.append(("flushdb", outcome(lambda: (d3.flushdb(), d3.dbsize(), d4.dbsize()))))
        d3.set("again", "1")
        out.append(("flushall", outcome(lambda: (r.flushall(), d3.dbsize(), d4.dbsize(),
                                                r.dbsize()))))
    finally:
        d3.close()
        d4.close()


def pipeline_steps(r, out):
    p = r.pipeline(transaction=False)
    p.set("py:p1", "x").get("py:p1").incr("py:p2").incr("py:p2").delete("py:p1").exists("py:p1")
    out.append(("pipeline", outcome(p.execute)))
    p = r.pipeline()  # MULTI / EXEC
    p.set("py:t1", "a").append("py:t1", "b").get("py:t1").incr("py:t2").ttl("py:t1")
    out.append(("transaction", outcome(p.execute)))
    # A command failing inside EXEC: the others ran; redis-py raises the
    # first error unless asked for every reply.
    p = r.pipeline()
    p.set("py:t3", "text").incr("py:t3").get("py:t3")
    out.append(("transaction with error", outcome(p.execute)))
    p = r.pipeline()
    p.set("py:t4", "text").incr("py:t4").set("py:t4", "after")
    out.append(("every reply", outcome(lambda: [
        str(x) if isinstance(x, Exception) else x for x in p.execute(raise_on_error=False)])))
    out.append(("after error", outcome(lambda: r.get("py:t4"))))
    # A command refused when queued: nothing runs (EXECABORT).
    p = r.pipeline()
    p.set("py:t5", "never").execute_command("SET", "py:t5")
    out.append(("queued error", outcome(p.execute)))
    out.append(("nothing ran", outcome(lambda: r.exists("py:t5"))))
    out.append(("empty transaction", outcome(r.pipeline().execute)))


def watch_steps(r, other, out):
    # redis-py's documented retry loop; another connection changes the key
    # between WATCH and EXEC once, so it runs twice.
    r.set("py:w", "10")
    tries = 0
    with r.pipeline() as pipe:
        while True:
            try:
                pipe.watch("py:w")
                v = int(pipe.get("py:w"))
                if tries == 0:
                    other.incr("py:w")
                pipe.multi()
                pipe.set("py:w", v * 2)
                pipe.execute()
                break
            except redis.WatchError:
                tries += 1
    out.append(("watch retries", tries))
    out.append(("watched result", outcome(lambda: r.get("py:w"))))

    def double(pipe):
        v = int(pipe.get("py:w"))
        pipe.multi()
        pipe.set("py:w", v * 2)
        pipe.get("py:w")

    out.append(("r.transaction", outcome(lambda: r.transaction(double, "py:w"))))
    # UNWATCH: a change after it no longer aborts.
    with r.pipeline() as pipe:
        pipe.watch("py:w")
        pipe.unwatch()
        other.set("py:w", "0")
        pipe.multi()
        pipe.incr("py:w")
        out.append(("after unwatch", outcome(pipe.execute)))
    # Isolation: increments through WATCH from several threads at once; each
    # either runs whole or retries, so none is lost or counted twice.
    r.set("py:c", "0")
    errors = []

    def worker():
        c = client(r.connection_pool.connection_kwargs["port"])
        try:
            for _ in range(INCREMENTS):
                with c.pipeline() as pipe:
                    while True:
                        try:
                            pipe.watch("py:c")
                            v = int(pipe.get("py:c"))
                            pipe.multi()
                            pipe.set("py:c", v + 1)
                            pipe.execute()
                            break
                        except redis.WatchError:
                            continue
        except redis.RedisError as e:
            errors.append(str(e))
        finally:
            c.close()

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.append(("concurrent errors", errors))
    out.append(("concurrent total", outcome(lambda: r.get("py:c"))))


def pubsub_steps(r, other, out):
    """redis-py's PubSub: subscribe, a message from another connection, a
    pattern, unsubscribe."""
    p = r.pubsub()
    try:
        p.subscribe("py:ch")
        p.psubscribe("py:c*")
        got = []
        deadline = time.monotonic() + SOCKET_TIMEOUT_S
        while len(got) < 2 and time.monotonic() < deadline:  # the confirmations
            m = p.get_message(timeout=1.0)
            if m:
                got.append((m["type"], m["channel"], m["data"]))
        out.append(("pubsub confirmations", got))
        out.append(("publish", outcome(lambda: other.publish("py:ch", "hello"))))
        msgs = []
        while len(msgs) < 2 and time.monotonic() < deadline:  # message and pmessage
            m = p.get_message(timeout=1.0)
            if m:
                msgs.append((m["type"], m.get("pattern"), m["channel"], m["data"]))
        out.append(("pubsub messages", sorted(msgs, key=str)))
        p.unsubscribe()
        p.punsubscribe()
    finally:
        p.close()


def reconnect_steps(r, restart, out):
    out.append(("before restart", outcome(lambda: r.set("py:r", "1"))))
    restart()
    # The pooled connection is gone: the first command may fail with a
    # connection error (redis-py then drops it), the next reconnects.
    try:
        r.ping()
    except redis.ConnectionError:
        pass
    out.append(("after restart", outcome(lambda: (r.ping(), r.set("py:r", "2"), r.get("py:r")))))


def session(port, restart):
    out = []
    r, other = client(port), client(port)
    try:
        plain_steps(r, out)
        types_steps(r, out)
        pipeline_steps(r, out)
        watch_steps(r, other, out)
        pubsub_steps(r, other, out)
        reconnect_steps(r, restart, out)
        keyspace_steps(r, out)
    finally:
        r.close()
        other.close()
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: test_redis_py.py GRIDD")
    gridd = sys.argv[1]
    if not shutil.which("redis-server"):
        sys.exit("test_redis_py: redis-server not found; scripts/deps installs it")
    work = tempfile.mkdtemp(prefix="grid-redis-py-")
    procs = {}
    try:
        procs["redis"], rport = start_redis(work, who="test_redis_py")
        procs["gridd"], gport = start_gridd(gridd, work, who="test_redis_py")

        def restart(name, port):
            def go():
                stop([procs[name]])
                if name == "redis":
                    procs[name], _ = start_redis(work, port=port, who="test_redis_py")
                else:
                    procs[name], _ = start_gridd(gridd, work, port=port, who="test_redis_py")
            return go

        want = session(rport, restart("redis", rport))
        got = session(gport, restart("gridd", gport))
        check(len(want) == len(got), f"{len(want)} steps on both")
        for (name, w), (_, g) in zip(want, got):
            check(w == g, f"{name}: redis {w!r:.200} grid {g!r:.200}")
        check(dict(want)["watch retries"] == 1, "the WATCH loop retried once on Redis too")
        check(dict(want)["concurrent total"] == ("ok", str(THREADS * INCREMENTS).encode()),
              "Redis counted every concurrent increment (the check itself is right)")
        check(procs["gridd"].poll() is None, "gridd still running")
        rc = gridd_stops_cleanly(procs["gridd"], work)
        check(rc == 0, f"gridd stopped cleanly (exit status {rc})")
    finally:
        stop(list(procs.values()))
        shutil.rmtree(work, ignore_errors=True)
    print(f"test_redis_py: {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
