#!/usr/bin/env python3
"""faults.py: seeded fault schedules against a three-node grid cluster.

For each seed it builds a private network of Linux network namespaces
(a bridge namespace and one namespace each for ZooKeeper, three gridd nodes
and the workload client, joined by veth pairs, IPv6 ULA addresses only),
starts ZooKeeper and the nodes, creates a full_sync cache with one backup,
runs fault_client's workload while a nemesis seeded with the same seed
injects faults one after another, heals everything, reads every key back
(liveness) and checks the history with checker.py.

Faults: kill -9 of a node and a restart with the same node_id; SIGSTOP and
SIGCONT of a node; a cut between two nodes (blackhole routes on both
sides); a cut between a node and ZooKeeper; kill -9 and restart of
ZooKeeper on the same data directory.

Every process it starts is stopped by pid and every namespace it created is
deleted, also on an error, SIGINT or SIGTERM. Needs root, ip (iproute2),
java and Debian's zookeeper package (scripts/deps installs them).
"""

import argparse
import ctypes
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ZK_JAR = "/usr/share/java/zookeeper.jar"
NODES = 3
CACHE = "faults"
GRID_PORT = 7000           # every node listens on it, each in its namespace
GRID_TLS_PORT = 7001       # --tls-links: the nodes' links to each other
ZK_PORT = 2181
SESSION_MS = 1000          # zk_session_timeout_ms of the nodes
FORWARD_TIMEOUT_MS = 2000
CLIENT_TIMEOUT_MS = 1500   # deadline of each client call
CLIENT_THREADS = 4
CLIENT_KEYS = 16
CLIENT_RATE = 3000         # ops/s: a key's history stays a few thousand ops
WARMUP_S = 1.0             # workload before the first fault
COOLDOWN_S = 3.0           # workload after the last heal
ZK_START_S = 60            # bounds: ZooKeeper answering "ruok"
NODE_START_S = 20          # a node listening
CLUSTER_READY_S = 30       # three nodes in the map and the cache settled
SETTLE_BEFORE_FAULT_S = 8  # waiting for a settled map before a kill
SETTLE_AFTER_S = 20        # after the heal, before the final read
FINAL_READ_DEADLINE_MS = 20000  # liveness: every key readable by then
CHECKER_TIMEOUT_S = 600
STOP_WAIT_S = 5            # a SIGKILLed process must be gone by then
FAULT_GAP_S = (0.5, 2.0)   # quiet time between two faults
PAUSE_S = (0.5, 3.0)
CUT_S = (1.0, 4.0)
DOWN_S = (1.0, 3.0)        # a killed node or ZooKeeper stays down that long

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    """In a child before exec: SIGKILL when this orchestrator dies, even by
    SIGKILL, so that nothing outlives it (the namespaces are the one thing
    left then; their names start with gf<pid>)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Interrupted(Exception):
    pass


def _on_signal(signum, frame):
    raise Interrupted("signal %d" % signum)


def run(cmd, check=True, timeout=30, quiet=False):
    """Runs a short command; its output, or an exception naming it."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(cmd), p.returncode, p.stderr.strip()))
    return p


class Cluster:
    """One schedule's namespaces and processes."""

    def __init__(self, seed, args, out_dir, log):
        self.seed = seed
        self.args = args
        self.out = out_dir
        self.log = log
        rnd = random.Random(seed)
        # A seeded ULA /64 (fd00::/8), unique enough per seed, and only
        # inside namespaces this run owns.
        self.prefix = "fd47:%x:%x:%x" % (rnd.randrange(1, 0x10000), rnd.randrange(0x10000), rnd.randrange(0x10000))
        tag = "gf%d-%d" % (os.getpid(), seed)
        self.ns_br = tag + "-br"
        self.ns = {"zk": tag + "-zk", "cl": tag + "-cl"}
        for i in range(1, NODES + 1):
            self.ns["n%d" % i] = tag + "-n%d" % i
        self.addr = {"zk": self.prefix + "::10", "cl": self.prefix + "::20"}
        for i in range(1, NODES + 1):
            self.addr["n%d" % i] = self.prefix + "::%d" % (10 + i)
        self.created_ns = []
        self.procs = {}      # name -> Popen (the live one)
        self.all_procs = []  # every Popen ever started, for the cleanup
        self.cuts = set()    # (a, b) pairs with blackhole routes now
        self.zk_dir = os.path.join(out_dir, "zk")

    # ---- namespaces --------------------------------------------------------
    def setup_network(self):
        for ns in [self.ns_br] + list(self.ns.values()):
            run(["ip", "netns", "add", ns])
            self.created_ns.append(ns)
        run(["ip", "-n", self.ns_br, "link", "set", "lo", "up"])
        run(["ip", "-n", self.ns_br, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.ns_br, "link", "set", "br0", "up"])
        for host, ns in self.ns.items():
            # The veth end in the bridge namespace is named after the host:
            # names are per namespace, so they clash with nothing outside.
            run(["ip", "-n", self.ns_br, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns])
            run(["ip", "-n", self.ns_br, "link", "set", host, "master", "br0", "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            run(["ip", "-n", ns, "-6", "addr", "add", self.addr[host] + "/64", "dev", "eth0", "nodad"])

    def in_ns(self, host, cmd):
        return ["ip", "netns", "exec", self.ns[host]] + cmd

    # ---- processes ---------------------------------------------------------
    def spawn(self, name, host, cmd, log_path):
        logf = open(log_path, "ab")
        p = subprocess.Popen(self.in_ns(host, cmd), stdout=logf, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        logf.close()
        self.procs[name] = p
        self.all_procs.append(p)
        return p

    def kill9(self, name):
        p = self.procs.get(name)
        if p is None:
            return
        try:
            p.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.log("warning: %s (pid %d) still there %d s after SIGKILL" % (name, p.pid, STOP_WAIT_S))
        del self.procs[name]

    def start_zk(self):
        data = os.path.join(self.zk_dir, "data")
        os.makedirs(data, exist_ok=True)
        cfg = os.path.join(self.zk_dir, "zoo.cfg")
        with open(cfg, "w") as f:
            # A short tick so that sessions of a second are allowed (the
            # session timeout must be at least 2 ticks).
            f.write("tickTime=100\ndataDir=%s\nclientPort=%d\nclientPortAddress=%s\n"
                    "minSessionTimeout=200\nmaxSessionTimeout=60000\nadmin.enableServer=false\n"
                    "4lw.commands.whitelist=ruok,srvr\n" % (data, ZK_PORT, self.addr["zk"]))
        self.spawn("zk", "zk", ["java", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                                "-Djava.net.preferIPv6Addresses=true",
                                "-cp", "%s:%s" % (self.zk_dir, ZK_JAR),
                                "org.apache.zookeeper.server.ZooKeeperServerMain", cfg],
                   os.path.join(self.out, "zk.log"))
        deadline = time.monotonic() + ZK_START_S
        while time.monotonic() < deadline:
            if self.zk_ok():
                return
            if self.procs["zk"].poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError("ZooKeeper did not answer within %d s; its log: %s/zk.log" % (ZK_START_S, self.out))

    def zk_ok(self):
        probe = ("import socket,sys\n"
                 "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=1)\n"
                 "s.sendall(b'ruok'); sys.exit(0 if s.recv(4)==b'imok' else 1)\n")
        try:
            p = run(self.in_ns("cl", [sys.executable, "-c", probe, self.addr["zk"], str(ZK_PORT)]),
                    check=False, timeout=5)
            return p.returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def zk_hosts(self):
        # The ZooKeeper C client (3.8) splits host:port at the last colon and
        # hands the host to getaddrinfo, which refuses brackets: an IPv6
        # address goes in bare ("fd47::10:2181").
        return "%s:%d" % (self.addr["zk"], ZK_PORT)

    def start_node(self, i):
        host = "n%d" % i
        cmd = [self.args.gridd, "--bind", self.addr[host], "--port", str(GRID_PORT),
               "--set", "zk=" + self.zk_hosts(), "--set", "cluster=faults",
               "--set", "node_id=" + host, "--set", "zk_session_timeout_ms=%d" % SESSION_MS,
               "--set", "cluster_min_nodes=%d" % NODES,
               "--set", "forward_timeout_ms=%d" % FORWARD_TIMEOUT_MS, "--set", "loops=1"]
        if self.args.persistence:
            # The node's disk outlives its restarts within the schedule.
            cmd += ["--set", "data_dir=" + os.path.join(self.out, host + "-data")]
        if self.args.tls_links:
            # Links between nodes over TLS (clients stay on the plain port).
            c = self.make_certs()
            cmd += ["--set", "tls_port=%d" % GRID_TLS_PORT, "--set", "tls_replication=yes",
                    "--set", "tls_cert_file=" + c + "/node.crt",
                    "--set", "tls_key_file=" + c + "/node.key",
                    "--set", "tls_ca_cert_file=" + c + "/ca.crt",
                    "--set", "tls_auth_clients=optional"]
        self.spawn(host, host, cmd, os.path.join(self.out, host + ".log"))

    def make_certs(self):
        """A CA and one certificate naming every node's address (openssl CLI),
        made once per schedule; returns their directory."""
        c = os.path.join(self.out, "certs")
        if os.path.exists(os.path.join(c, "node.crt")):
            return c
        os.makedirs(c, exist_ok=True)
        san = ",".join("IP:" + self.addr["n%d" % i] for i in range(1, NODES + 1))
        with open(os.path.join(c, "san.ext"), "w") as f:
            f.write("subjectAltName=" + san + "\n")
        steps = [
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-days", "2", "-subj", "/CN=faults CA"],
            ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key",
             "-out", "node.csr", "-subj", "/CN=faults node"],
            ["openssl", "x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "node.crt", "-days", "2", "-extfile", "san.ext"],
        ]
        for s in steps:
            subprocess.run(s, cwd=c, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return c

    def wait_listening(self, i):
        deadline = time.monotonic() + NODE_START_S
        while time.monotonic() < deadline:
            if self.ctl(i, ["stats"], check=False).returncode == 0:
                return True
            if self.procs["n%d" % i].poll() is not None:
                raise RuntimeError("gridd n%d exited at start; its log: %s/n%d.log" % (i, self.out, i))
            time.sleep(0.1)
        raise RuntimeError("gridd n%d not listening within %d s" % (i, NODE_START_S))

    def server(self, i):
        return "[%s]:%d" % (self.addr["n%d" % i], GRID_PORT)

    def uri(self):
        return "grid://" + ",".join(self.server(i) for i in range(1, NODES + 1))

    def ctl(self, i, words, check=True, timeout=10):
        try:
            return run(self.in_ns("cl", [self.args.gridctl, "--server", self.server(i), "--timeout-ms", "2000"] + words),
                       check=check, timeout=timeout)
        except subprocess.TimeoutExpired:
            if check:
                raise
            return subprocess.CompletedProcess(words, 124, "", "timeout")

    def settled(self):
        """Whether some node reports three nodes holding copies and the
        cache with nothing moving, handing off or lost."""
        for i in range(1, NODES + 1):
            if "n%d" % i not in self.procs:
                continue
            p = self.ctl(i, ["status", "--json"], check=False, timeout=5)
            if p.returncode != 0:
                continue
            try:
                st = json.loads(p.stdout)
            except ValueError:
                continue
            nodes = [n for n in st.get("nodes", []) if n.get("primaries", 0) + n.get("backups", 0) > 0]
            caches = [c for c in st.get("caches", []) if c.get("name") == CACHE]
            if len(nodes) == NODES and caches and not any(caches[0].get(k) for k in ("moving", "handoff", "lost")):
                return True
            return False
        return False

    def wait_settled(self, bound_s):
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline:
            if self.settled():
                return True
            time.sleep(0.25)
        return False

    # ---- links -------------------------------------------------------------
    def blackhole(self, a, b, add):
        for x, y in ((a, b), (b, a)):
            run(["ip", "-n", self.ns[x], "-6", "route", "add" if add else "del", "blackhole",
                 self.addr[y] + "/128"], check=add)
        if add:
            self.cuts.add((a, b))
        else:
            self.cuts.discard((a, b))

    def heal_all(self):
        for a, b in list(self.cuts):
            self.blackhole(a, b, False)
        for name, p in list(self.procs.items()):
            if name.startswith("n"):
                try:
                    p.send_signal(signal.SIGCONT)
                except ProcessLookupError:
                    pass

    # ---- the end -----------------------------------------------------------
    def cleanup(self):
        for p in self.all_procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGCONT)
                    p.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.all_procs:
            try:
                p.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.log("warning: pid %d did not exit after SIGKILL" % p.pid)
        self.procs.clear()
        for ns in reversed(self.created_ns):
            run(["ip", "netns", "del", ns], check=False)
        self.created_ns = []


class Nemesis:
    """A seeded schedule of faults, one at a time, each healed before the
    next."""

    KINDS = ("kill", "pause", "cut-nodes", "cut-peers", "cut-zk", "restart-zk")

    def __init__(self, cluster, seed, log, kinds=None):
        self.c = cluster
        self.rnd = random.Random(seed * 7919 + 1)
        self.log = log
        self.done = []
        self.kinds = kinds or self.KINDS

    def run(self, window_s):
        end = time.monotonic() + window_s
        while True:
            gap = self.rnd.uniform(*FAULT_GAP_S)
            kind = self.rnd.choice(self.kinds)
            node = self.rnd.randrange(1, NODES + 1)
            other = self.rnd.choice([j for j in range(1, NODES + 1) if j != node])
            if kind == "pause":
                length = self.rnd.uniform(*PAUSE_S)
            elif kind in ("cut-nodes", "cut-peers", "cut-zk"):
                length = self.rnd.uniform(*CUT_S)
            else:
                length = self.rnd.uniform(*DOWN_S)
            if time.monotonic() + gap + length > end:
                break
            time.sleep(gap)
            if kind == "kill" and not self.c.wait_settled(SETTLE_BEFORE_FAULT_S):
                # A second copy lost before the first is rebuilt loses a
                # partition for good (one backup): that is no bug.
                self.log("nemesis: map not settled within %d s: a pause instead of a kill" % SETTLE_BEFORE_FAULT_S)
                kind = "pause"
                length = min(length, PAUSE_S[1])
            self.inject(kind, node, other, length)

    def inject(self, kind, node, other, length):
        c = self.c
        name, oname = "n%d" % node, "n%d" % other
        t = time.monotonic()
        if kind == "kill":
            desc = "kill -9 %s, restart after %.1f s" % (name, length)
            self.log("nemesis: " + desc)
            c.kill9(name)
            time.sleep(length)
            c.start_node(node)
            try:
                c.wait_listening(node)
            except RuntimeError as e:
                self.log("nemesis: %s" % e)
        elif kind == "pause":
            desc = "SIGSTOP %s for %.1f s" % (name, length)
            self.log("nemesis: " + desc)
            p = c.procs[name]
            p.send_signal(signal.SIGSTOP)
            time.sleep(length)
            p.send_signal(signal.SIGCONT)
        elif kind == "cut-nodes":
            desc = "cut %s <-> %s for %.1f s" % (name, oname, length)
            self.log("nemesis: " + desc)
            c.blackhole(name, oname, True)
            time.sleep(length)
            c.blackhole(name, oname, False)
        elif kind == "cut-peers":
            # One node loses every link to the other nodes, not to
            # ZooKeeper: it keeps its session (and its lease), and its
            # writes wait on backups it cannot reach until they are
            # demoted and the partition goes on without them.
            others = ["n%d" % j for j in range(1, NODES + 1) if j != node]
            desc = "cut %s <-> %s for %.1f s" % (name, ",".join(others), length)
            self.log("nemesis: " + desc)
            for o in others:
                c.blackhole(name, o, True)
            time.sleep(length)
            for o in others:
                c.blackhole(name, o, False)
        elif kind == "cut-zk":
            desc = "cut %s <-> zk for %.1f s" % (name, length)
            self.log("nemesis: " + desc)
            c.blackhole(name, "zk", True)
            time.sleep(length)
            c.blackhole(name, "zk", False)
        else:
            desc = "kill -9 zk, restart after %.1f s" % length
            self.log("nemesis: " + desc)
            c.kill9("zk")
            time.sleep(length)
            c.start_zk()
        self.log("nemesis: healed (%.1f s)" % (time.monotonic() - t))
        self.done.append(desc)


def run_schedule(seed, args):
    out = os.path.join(args.out, "seed-%d" % seed)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    started = time.monotonic()
    logf = open(os.path.join(out, "faults.log"), "w")

    def log(msg):
        line = "[%6.1f s] seed %d: %s" % (time.monotonic() - started, seed, msg)
        logf.write(line + "\n")
        logf.flush()
        if args.verbose:
            print(line, flush=True)

    row = {"seed": seed, "faults": 0, "ops": 0, "ok": 0, "info": 0, "fail": 0, "linearizable": "?",
           "lost": "?", "stuck": "?", "result": "ERROR", "out": out, "secs": 0}
    c = Cluster(seed, args, out, log)
    try:
        log("network %s::/64 in namespaces gf%d-%d-*" % (c.prefix, os.getpid(), seed))
        c.setup_network()
        c.start_zk()
        log("ZooKeeper up at [%s]:%d" % (c.addr["zk"], ZK_PORT))
        for i in range(1, NODES + 1):
            c.start_node(i)
        for i in range(1, NODES + 1):
            c.wait_listening(i)
        deadline = time.monotonic() + CLUSTER_READY_S
        while True:
            # read_from_backup: the backups also hear the COMMITTED notices.
            p = c.ctl(1, ["create-cache", CACHE, "--partitions", "64", "--backups", "1", "--sync", "full",
                          "--read-from-backup", "on"] +
                      (["--persistence", "on", "--fsync", "always"] if args.persistence else []),
                      check=False)
            if p.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("create-cache failed for %d s: %s" % (CLUSTER_READY_S, p.stderr.strip()))
            time.sleep(0.3)
        if not c.wait_settled(CLUSTER_READY_S):
            raise RuntimeError("the cluster did not settle on %d nodes within %d s" % (NODES, CLUSTER_READY_S))
        log("cluster of %d nodes ready, cache %s created (64 partitions, 1 backup, full_sync, "
            "read_from_backup)" % (NODES, CACHE))

        history = os.path.join(out, "history.jsonl")
        events = os.path.join(out, "events.jsonl")
        duration_s = WARMUP_S + args.duration + COOLDOWN_S
        client_cmd = [args.client, "--uri", c.uri(), "--cache", CACHE, "--threads", str(CLIENT_THREADS),
                      "--keys", str(CLIENT_KEYS), "--duration-ms", str(int(duration_s * 1000)),
                      "--seed", str(seed), "--timeout-ms", str(CLIENT_TIMEOUT_MS), "--rate", str(CLIENT_RATE),
                      "--out", history, "--events", events]
        client_out = os.path.join(out, "client.out")
        workload = c.spawn("client", "cl", client_cmd, client_out)
        time.sleep(WARMUP_S)
        nem = Nemesis(c, seed, log, args.kinds)
        nem.run(args.duration)
        c.heal_all()
        log("nemesis done: %d faults; everything healed" % len(nem.done))
        row["faults"] = len(nem.done)
        try:
            # The stream drains after the workload (fault_client --events).
            workload.wait(timeout=duration_s + 120)
        except subprocess.TimeoutExpired:
            log("the workload client did not stop in time: killed")
            c.kill9("client")
        c.procs.pop("client", None)
        if not c.wait_settled(SETTLE_AFTER_S):
            log("the map did not settle within %d s after the heal" % SETTLE_AFTER_S)
        final_out = os.path.join(out, "final.out")
        fr = run(c.in_ns("cl", [args.client, "--uri", c.uri(), "--cache", CACHE, "--keys", str(CLIENT_KEYS),
                               "--final-read", "--deadline-ms", str(FINAL_READ_DEADLINE_MS),
                               "--timeout-ms", str(CLIENT_TIMEOUT_MS), "--out", history]),
                 check=False, timeout=FINAL_READ_DEADLINE_MS / 1000 + 60)
        with open(final_out, "w") as f:
            f.write(fr.stdout + fr.stderr)
        stuck = []
        try:
            stuck = json.loads(fr.stdout.strip().splitlines()[-1]).get("stuck", [])
        except (ValueError, IndexError):
            stuck = ["?"] if fr.returncode != 0 else []
        row["stuck"] = len(stuck)
        if stuck:
            log("stuck keys (unreadable %d ms after the heal): %s" % (FINAL_READ_DEADLINE_MS, " ".join(stuck)))
        try:
            with open(client_out) as f:
                lines = [l for l in f.read().splitlines() if l.startswith("{")]
            cs = json.loads(lines[-1])
            log("client: %s" % json.dumps(cs))
        except (OSError, ValueError, IndexError):
            log("client printed no summary: see %s" % client_out)
        summary_json = os.path.join(out, "checker.json")
        chk = run([sys.executable, os.path.join(HERE, "checker.py"), history, "--json", summary_json],
                  check=False, timeout=CHECKER_TIMEOUT_S)
        with open(os.path.join(out, "checker.txt"), "w") as f:
            f.write(chk.stdout + chk.stderr)
        if chk.returncode not in (0, 1):
            raise RuntimeError("checker failed: %s" % chk.stderr.strip()[-500:])
        with open(summary_json) as f:
            s = json.load(f)
        row.update(ops=s["ops"], ok=s["ok"], info=s["info"], fail=s["fail"],
                   linearizable="yes" if s["linearizable"] else "NO",
                   lost=len(s["lost"]))
        if s["unknown"]:
            row["linearizable"] += " (%d unknown)" % len(s["unknown"])
        # The change stream against the same history: every acknowledged
        # write once, in order, nothing else (stream_check.py).
        stream_json = os.path.join(out, "stream.json")
        sc = run([sys.executable, os.path.join(HERE, "stream_check.py"), history, events,
                  "--json", stream_json], check=False, timeout=CHECKER_TIMEOUT_S)
        with open(os.path.join(out, "stream.txt"), "w") as f:
            f.write(sc.stdout + sc.stderr)
        if sc.returncode not in (0, 1):
            raise RuntimeError("stream_check failed: %s" % sc.stderr.strip()[-500:])
        log(sc.stdout.splitlines()[0] if sc.stdout else "stream_check printed nothing")
        with open(stream_json) as f:
            st = json.load(f)
        row["stream"] = "ok" if st["ok"] else "FAIL"
        good = s["linearizable"] and not s["lost"] and not stuck and st["ok"]
        row["result"] = "pass" if good else "FAIL"
        if not good:
            for line in chk.stdout.splitlines():
                if line.startswith("total:"):
                    log("checker: " + line)
    except Interrupted:
        row["result"] = "INTERRUPTED"
        raise
    except Exception as e:  # noqa: BLE001 - any failure of one schedule is reported, then cleaned up
        log("error: %s" % e)
        row["error"] = str(e)
    finally:
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            c.cleanup()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        row["secs"] = round(time.monotonic() - started, 1)
        log("done in %.1f s: %s" % (row["secs"], row["result"]))
        row["fault_list"] = list(getattr(locals().get("nem"), "done", []))
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(row, f, indent=1)
        logf.close()
    return row


def print_table(rows):
    hdr = ("seed", "faults", "ops", "ok", "info", "fail", "linearizable", "lost", "stuck", "stream",
           "result", "secs")
    table = [[str(r.get(h, "")) for h in hdr] for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(hdr)]
    print("  ".join(h.ljust(w) for h, w in zip(hdr, widths)))
    for t in table:
        print("  ".join(x.ljust(w) for x, w in zip(t, widths)))
    for r in rows:
        if r["result"] != "pass":
            why = r.get("error") or "see checker.txt, stream.txt and faults.log"
            print("seed %d: %s: %s (node logs, history, checker report in %s)" % (r["seed"], r["result"], why, r["out"]))


def main():
    build = os.path.join(os.path.dirname(os.path.dirname(HERE)), "build", "release")
    ap = argparse.ArgumentParser(
        description="Runs seeded fault schedules (kill -9, SIGSTOP, cuts between nodes, cuts from "
                    "ZooKeeper, ZooKeeper restarts) against a 3-node grid cluster in network "
                    "namespaces, then checks the workload's history for linearizability, lost "
                    "writes and stuck keys. Needs root.",
        epilog="Exit status: 0 every schedule passed, 1 one failed, 2 bad usage or environment.")
    ap.add_argument("--seed", type=int, default=1, help="first seed (default %(default)s)")
    ap.add_argument("--schedules", type=int, default=1, help="schedules to run: seeds S..S+N-1 (default %(default)s)")
    ap.add_argument("--seeds", default="", help="these seeds instead, comma-separated (schedules that once failed)")
    ap.add_argument("--duration", type=float, default=15, help="seconds of faults per schedule (default %(default)s)")
    ap.add_argument("--gridd", default=os.path.join(build, "gridd"), help="gridd binary (default %(default)s)")
    ap.add_argument("--gridctl", default=os.path.join(build, "gridctl"), help="gridctl binary (default %(default)s)")
    ap.add_argument("--client", default=os.path.join(build, "fault_client"), help="fault_client binary (default %(default)s)")
    ap.add_argument("--persistence", action="store_true",
                    help="the cache is persistent (fsync always), each node with a data_dir that "
                         "outlives its restarts: kill -9 and restarts catch up from disk")
    ap.add_argument("--tls-links", action="store_true",
                    help="the nodes link to each other over TLS (tls_replication), with "
                         "certificates made per schedule")
    ap.add_argument("--out", default="/tmp/grid-faults", help="output directory: one seed-S folder per schedule (default %(default)s)")
    ap.add_argument("--faults", default=",".join(Nemesis.KINDS),
                    help="fault kinds the nemesis picks from, comma-separated (default %(default)s)")
    ap.add_argument("--quiet", dest="verbose", action="store_false", help="print only the summary table")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("faults.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    for what, path in (("gridd", args.gridd), ("gridctl", args.gridctl), ("fault_client", args.client), ("zookeeper", ZK_JAR)):
        if not os.access(path, os.R_OK):
            print("faults.py: %s not found at %s%s" % (what, path, " (scripts/deps installs zookeeper)" if what == "zookeeper" else ""), file=sys.stderr)
            return 2
    if shutil.which("ip") is None or shutil.which("java") is None:
        print("faults.py: needs ip (iproute2) and java (scripts/deps installs them)", file=sys.stderr)
        return 2
    args.kinds = tuple(k for k in args.faults.split(",") if k)
    unknown = [k for k in args.kinds if k not in Nemesis.KINDS]
    if unknown or not args.kinds:
        print("faults.py: unknown fault kind %s; kinds: %s" % (",".join(unknown) or "(none)",
                                                              ",".join(Nemesis.KINDS)), file=sys.stderr)
        return 2
    if args.schedules < 1 or args.duration <= 0:
        print("faults.py: --schedules must be >= 1 and --duration > 0", file=sys.stderr)
        return 2
    args.gridd, args.gridctl, args.client = map(os.path.abspath, (args.gridd, args.gridctl, args.client))
    os.makedirs(args.out, exist_ok=True)
    args.out = os.path.abspath(args.out)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    rows = []
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x] or \
            list(range(args.seed, args.seed + args.schedules))
        for seed in seeds:
            rows.append(run_schedule(seed, args))
    except Interrupted as e:
        print("faults.py: interrupted (%s); everything started was stopped" % e, file=sys.stderr)
        print_table(rows)
        return 1
    print()
    print_table(rows)
    return 0 if all(r["result"] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
