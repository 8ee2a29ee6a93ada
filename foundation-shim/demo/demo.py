#!/usr/bin/python3
"""The active-active reference deployment on one machine (scripts/demo).

    devices (devicesim) --WebSocket--> HAProxy :ws --> connserver x2
    connserver --HTTP keep-alive--> HAProxy :http (checks /ready)
        --> foundationd x3, each embedding a grid cluster member
    ZooKeeper: the grid cluster's membership and leases

After a steady period one Foundation server is killed (kill -9), later
restarted, then another leaves gracefully (SIGTERM). At the end every
Thing is read back through the balancer. It prints what was sent,
acknowledged, lost and stale, latency before, during and after each fault,
the longest time a device saw no acknowledgement, DataChange events per
server, who held the singleton when; writes a timeline plot (gnuplot); and
ends with one line:

    demo: sent=... acked=... lost=... stale=... p99_ms=... longest_no_ack_ms=...

Exit status 0 when nothing acknowledged was lost and nothing is stale.
Every process it starts is stopped by pid, also on failure or ^C.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ZK_JAR = "/usr/share/java/zookeeper.jar"
FOUNDATIONS = 3
CONNSERVERS = 2


def parse_args():
    p = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration-s", type=float, default=120,
                   help="seconds of device traffic (default 120); the faults are placed "
                        "at 25%%, 45%% and 70%% of it")
    p.add_argument("--devices", type=int, default=1000, help="simulated devices (default 1000)")
    p.add_argument("--rate", type=float, default=1.0,
                   help="messages per second per device (default 1)")
    p.add_argument("--props", type=int, default=4, help="properties per message (default 4)")
    p.add_argument("--bin", required=True, help="directory with foundationd (a build)")
    p.add_argument("--out", help="where logs, results and the plot go (default: a new "
                                 "/tmp/grid-demo-* directory)")
    p.add_argument("--plot", help="the timeline PNG (default OUT/timeline.png)")
    a = p.parse_args()
    if a.duration_s < 20:
        p.error("--duration-s at least 20 (three faults and their recovery)")
    return a


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def now_ms():
    return int(time.time() * 1000)


class Demo:
    def __init__(self, args):
        self.args = args
        self.out = args.out or tempfile.mkdtemp(prefix="grid-demo-", dir="/tmp")
        os.makedirs(self.out, exist_ok=True)
        self.procs = {}          # name -> Popen
        self.events = []         # (ms, words): the faults and other steps
        self.stats = {}          # foundationd name -> its last /stats
        self.fd_ports = {}

    def say(self, words):
        print("[%7.1f s] %s" % (time.time() - self.t0, words), flush=True)

    def start(self, name, argv, env=None):
        log = open(os.path.join(self.out, name + ".log"), "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        return self.procs[name]

    def stop(self, name, sig=signal.SIGTERM, timeout=30):
        p = self.procs.get(name)
        if not p or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def cpu_seconds(self):
        """CPU time (user + system) of each process still running."""
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for name, p in self.procs.items():
            try:
                with open("/proc/%d/stat" % p.pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[name] = (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                pass
        return out

    def stop_all(self):
        for name in reversed(list(self.procs)):
            self.stop(name, timeout=20)

    def wait_file(self, path, what, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if os.path.exists(path) and os.path.getsize(path) > 0:
                with open(path) as f:
                    return int(f.read().strip())
            time.sleep(0.05)
        raise SystemExit("demo: %s did not start (see %s)" % (what, self.out))

    def http_json(self, url, timeout=2):
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.load(r)

    # -- the parts ------------------------------------------------------------

    def start_zookeeper(self):
        d = os.path.join(self.out, "zk")
        os.makedirs(os.path.join(d, "data"), exist_ok=True)
        self.zk_port = free_port()
        with open(os.path.join(d, "zoo.cfg"), "w") as f:
            f.write("tickTime=200\ndataDir=%s/data\nclientPort=%d\nclientPortAddress=127.0.0.1\n"
                    "minSessionTimeout=400\nmaxSessionTimeout=60000\nadmin.enableServer=false\n"
                    "4lw.commands.whitelist=ruok\n" % (d, self.zk_port))
        self.start("zookeeper", ["java", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                                 "-cp", "%s:%s" % (d, ZK_JAR),
                                 "org.apache.zookeeper.server.ZooKeeperServerMain",
                                 os.path.join(d, "zoo.cfg")])
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.zk_port), 1) as s:
                    s.sendall(b"ruok")
                    if s.recv(4) == b"imok":
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("demo: ZooKeeper did not start (see %s/zookeeper.log)" % self.out)

    def start_foundation(self, i):
        name = "fd-%d" % i
        pf = os.path.join(self.out, name + ".port")
        if os.path.exists(pf):
            os.unlink(pf)
        argv = [os.path.join(self.args.bin, "foundationd"), "--http-port",
                str(self.fd_ports.get(name, 0)), "--port-file", pf,
                "--zk", "127.0.0.1:%d" % self.zk_port, "--cluster", "demo", "--node-id", name,
                "--drain-ms", "1500", "--leave-timeout-ms", "8000",
                "--set", "listen=on", "--set", "port=0", "--set", "loops=1",
                "--set", "zk_session_timeout_ms=1500", "--set", "lost_grace_ms=3000",
                "--set", "http_port=%d" % self.ops_ports[name]]
        self.start(name, argv)
        self.fd_ports[name] = self.wait_file(pf, name)

    def wait_ready(self, name, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                self.http_json("http://127.0.0.1:%d/ready" % self.fd_ports[name])
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("demo: %s never became ready (see %s/%s.log)" % (name, self.out, name))

    def start_haproxy(self):
        """At self.lb_port (chosen before, the connservers point at it)."""
        self.ws_port = free_port()
        servers = "\n".join("  server %s 127.0.0.1:%d check" % (n, p)
                            for n, p in sorted(self.fd_ports.items()))
        conns = "\n".join("  server %s 127.0.0.1:%d check" % (n, p)
                          for n, p in sorted(self.cs_ports.items()))
        cfg = os.path.join(self.out, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write("""global
  maxconn 8000
defaults
  mode http
  timeout connect 1s
  timeout client 120s
  timeout server 10s
  timeout tunnel 1h
  retries 3
  option redispatch 1
  option http-buffer-request
  retry-on conn-failure empty-response response-timeout 502 503 504
# Foundation servers: HTTP, each request to one that answers /ready.
frontend foundation
  bind 127.0.0.1:%d
  default_backend foundation
backend foundation
  balance roundrobin
  option httpchk GET /ready
  http-check expect status 200
  default-server inter 300ms fall 2 rise 2 on-marked-down shutdown-sessions
%s
# Devices: WebSockets to the Connection Servers.
frontend devices
  bind 127.0.0.1:%d
  default_backend connservers
backend connservers
  balance leastconn
  option httpchk GET /stats
  default-server inter 1s fall 2 rise 2
%s
""" % (self.lb_port, servers, self.ws_port, conns))
        self.start("haproxy", ["haproxy", "-db", "-f", cfg])
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.lb_port), 1):
                    return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("demo: HAProxy did not start (see %s/haproxy.log)" % self.out)

    def start_connservers(self):
        self.cs_ports = {}
        for i in range(CONNSERVERS):
            name = "cs-%d" % i
            pf = os.path.join(self.out, name + ".port")
            self.start(name, ["/usr/bin/python3", os.path.join(HERE, "connserver"), "--port", "0",
                              "--port-file", pf, "--name", name,
                              "--upstream", "http://127.0.0.1:%d" % self.lb_port])
            self.cs_ports[name] = self.wait_file(pf, name)

    def holder(self, exclude):
        """The server that said last it holds the singleton (not exclude)."""
        self.poll_stats()
        for name, st in sorted(self.stats.items()):
            p = self.procs.get(name)
            if st.get("singleton") and name != exclude and p and p.poll() is None:
                return name
        return None

    def poll_stats(self):
        for name, port in self.fd_ports.items():
            p = self.procs.get(name)
            if not p or p.poll() is not None:
                continue
            try:
                self.stats[name] = self.http_json("http://127.0.0.1:%d/stats" % port, 0.5)
            except OSError:
                pass

    # -- the run --------------------------------------------------------------

    def run(self):
        a = self.args
        self.t0 = time.time()
        self.say("output in %s" % self.out)
        self.start_zookeeper()
        self.say("ZooKeeper on 127.0.0.1:%d" % self.zk_port)
        self.ops_ports = {"fd-%d" % i: free_port() for i in range(FOUNDATIONS)}
        for i in range(FOUNDATIONS):
            self.start_foundation(i)
        for i in range(FOUNDATIONS):
            self.wait_ready("fd-%d" % i)
        self.say("3 Foundation servers ready: %s (dashboard: http://127.0.0.1:%d/)" % (
            ", ".join("%s :%d" % kv for kv in sorted(self.fd_ports.items())),
            self.ops_ports["fd-0"]))
        # The connservers point at the balancer and it at them: its port
        # first, then them, then it.
        self.lb_port = free_port()
        self.start_connservers()
        self.start_haproxy()
        self.say("HAProxy: HTTP :%d (Foundation), WebSocket :%d (2 connservers)" % (
            self.lb_port, self.ws_port))
        sim_out = os.path.join(self.out, "sim")
        sim = self.start("devicesim", [
            "/usr/bin/python3", os.path.join(HERE, "devicesim"),
            "--connservers", "ws://127.0.0.1:%d" % self.ws_port,
            "--devices", str(a.devices), "--rate", str(a.rate), "--props", str(a.props),
            "--duration-s", str(a.duration_s), "--drain-s", "30", "--out", sim_out,
            "--verify", "http://127.0.0.1:%d" % self.lb_port])
        self.sim_t0 = time.time()
        self.event("start", "%d devices, %g messages/s each, %d properties" % (
            a.devices, a.rate, a.props))
        # The server holding the singleton is killed (so the role moves),
        # restarted; later the one holding it then leaves gracefully.
        killed = None
        for frac, what in [(0.25, "kill"), (0.45, "restart"), (0.70, "leave")]:
            while time.time() - self.sim_t0 < frac * a.duration_s:
                if sim.poll() is not None:
                    raise SystemExit("demo: the simulator stopped early (see %s/devicesim.log)"
                                     % self.out)
                self.poll_stats()
                time.sleep(0.5)
            if what == "kill":
                who = killed = self.holder(exclude=None) or "fd-1"
                self.procs[who].kill()
                self.procs[who].wait()
                self.event("kill -9", who)
            elif what == "restart":
                who = killed
                self.start_foundation(int(who[-1]))
                self.event("restart", who)
            else:
                who = self.holder(exclude=killed) or next(
                    n for n in sorted(self.fd_ports) if n != killed)
                self.procs[who].send_signal(signal.SIGTERM)
                self.event("leave", who + " (SIGTERM: a graceful leave)")
        while sim.poll() is None:
            self.poll_stats()
            self.cpu = self.cpu_seconds()  # the simulator's own, just before it ends
            time.sleep(0.5)
        self.cpu.update({k: v for k, v in self.cpu_seconds().items() if k != "devicesim"})
        self.poll_stats()
        self.say("simulator done")
        return sim_out

    def event(self, what, words):
        self.events.append((time.time(), what, words))  # wall clock: aligned in report()
        self.say("%s: %s" % (what, words))


def percentile(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def singleton_timeline(demo):
    """Who held the singleton when, from the servers' logs."""
    spans = []
    for i in range(FOUNDATIONS):
        name = "fd-%d" % i
        try:
            lines = open(os.path.join(demo.out, name + ".log"), errors="replace").readlines()
        except OSError:
            continue
        for line in lines:
            if "singleton=" not in line:
                continue
            parts = dict(w.split("=", 1) for w in line.split() if "=" in w)
            t = (int(parts.get("at_ms", 0)) / 1000.0) - demo.sim_t0
            spans.append((t, name, parts.get("singleton")))
    return sorted(spans)


def report(demo, sim_out):
    a = demo.args
    summary = json.load(open(os.path.join(sim_out, "summary.json")))
    # The faults on the simulator's clock (its acks.csv counts from t0_wall).
    demo.sim_t0 = summary["t0_wall"]
    demo.events = [(t - demo.sim_t0, what, words) for t, what, words in demo.events]
    acks = []
    with open(os.path.join(sim_out, "acks.csv")) as f:
        next(f)
        for line in f:
            t, lat, _ = line.rstrip("\n").split(",")
            acks.append((float(t), float(lat)))
    lat_all = [l for _, l in acks]
    print()
    print("devices %d, %g messages/s each, %d properties per message, %g s" % (
        a.devices, a.rate, a.props, a.duration_s))
    print("sent %d, acknowledged %d, refused %d, not acknowledged at the end %d, "
          "device reconnects %d" % (summary["sent"], summary["acked"], summary["nacked"],
                                    summary["unacked"], summary["reconnects"]))
    print("read back through the balancer: %d properties, lost %d, stale %d" % (
        summary.get("properties_checked", 0), summary.get("lost", -1), summary.get("stale", -1)))
    print("end-to-end latency (device -> connserver -> balancer -> Foundation -> grid, "
          "and the acknowledgement back):")
    print("  %-34s %8s %8s %8s" % ("window", "acks", "p50 ms", "p99 ms"))

    def line(label, lo, hi):
        v = [l for t, l in acks if lo <= t < hi]
        print("  %-34s %8d %8.1f %8.1f" % (label, len(v), percentile(v, 0.5), percentile(v, 0.99)))
    line("whole run", 0, 1e9)
    for t, what, words in demo.events:
        if what == "start":
            continue
        who = words.split()[0]
        line("10 s before %s %s" % (what, who), t - 10, t)
        line("5 s from %s %s" % (what, who), t, t + 5)
        line("5-15 s after %s %s" % (what, who), t + 5, t + 15)
    print("longest time a device saw no acknowledgement: %d ms" % summary["longest_no_ack_ms"])
    print("DataChange events seen (the last count each server reported; the killed one's "
          "first life ends at its kill):")
    for name in sorted(demo.stats):
        st = demo.stats[name]
        print("  %s: %d events, %d requests, singleton now: %s" % (
            name, st.get("datachange_events", 0), st.get("requests", 0), st.get("singleton")))
    cpu = getattr(demo, "cpu", {})
    print("CPU seconds used (the machine's cores are shared by all of these): " + ", ".join(
        "%s %.1f" % kv for kv in sorted(cpu.items(), key=lambda kv: -kv[1])))
    print("the singleton:")
    for t, name, what in singleton_timeline(demo):
        print("  %7.1f s  %s %s" % (t, name, what))
    # The timeline: acknowledgements per second and their p99, faults marked.
    bins = {}
    for t, l in acks:
        bins.setdefault(int(t), []).append(l)
    data = os.path.join(demo.out, "timeline.dat")
    with open(data, "w") as f:
        for s in range(0, int(max(bins) if bins else 0) + 1):
            v = bins.get(s, [])
            f.write("%d %d %.2f\n" % (s, len(v), percentile(v, 0.99) if v else 0))
    plot = a.plot or os.path.join(demo.out, "timeline.png")
    marks = "".join(
        "set arrow from %.1f, graph 0 to %.1f, graph 1 nohead lc rgb '#c03030' dt 2\n"
        "set label '%s %s' at %.1f, graph 0.97 rotate by 90 right font ',9'\n" % (
            t, t, what, words.split()[0], t + 0.6) for t, what, words in demo.events
        if what != "start")
    gp = os.path.join(demo.out, "timeline.gp")
    with open(gp, "w") as f:
        f.write("set terminal pngcairo size 1100,420 font ',10'\nset output '%s'\n"
                "set title 'grid reference deployment: %d devices, 3 Foundation servers'\n"
                "set xlabel 'seconds'\nset ylabel 'acknowledged messages/s'\n"
                "set y2label 'p99 latency (ms)'\nset ytics nomirror\nset y2tics\n"
                "set key top left\nset grid\n%s"
                "plot '%s' using 1:2 with lines lw 2 lc rgb '#4e79a7' title 'messages/s', "
                "'%s' using 1:3 axes x1y2 with lines lw 1 lc rgb '#f28e2b' title 'p99 ms'\n"
                % (plot, a.devices, marks, data, data))
    if shutil.which("gnuplot"):
        subprocess.run(["gnuplot", gp], check=False)
        print("timeline: %s" % plot)
    p99 = percentile(lat_all, 0.99)
    ok = summary.get("lost") == 0 and summary.get("stale") == 0
    print("demo: sent=%d acked=%d lost=%d stale=%d p50_ms=%.1f p99_ms=%.1f "
          "longest_no_ack_ms=%d reconnects=%d devices=%d duration_s=%g" % (
              summary["sent"], summary["acked"], summary.get("lost", -1),
              summary.get("stale", -1), percentile(lat_all, 0.5), p99,
              summary["longest_no_ack_ms"], summary["reconnects"], a.devices, a.duration_s))
    return ok


def main():
    args = parse_args()
    demo = Demo(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    ok = False
    try:
        sim_out = demo.run()
        ok = report(demo, sim_out)
    finally:
        demo.stop_all()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
