"""Starting a redis-server and a gridd on 127.0.0.1 for the tests that
compare the two (test_pubsub.py, test_redis_py.py). Each is stopped by the
caller, by its Popen, never by name."""
import os
import socket
import subprocess
import sys
import time

START_WAIT_S = 10.0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def answers_ping(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64) == b"+PONG\r\n"
    except OSError:
        return False


def wait_ping(port, proc):
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if answers_ping(port):
            return True
        time.sleep(0.05)
    return False


def start_redis(work, extra=(), port=None, who="test"):
    """A redis-server (Popen, port); port None: a free one."""
    for _ in range(5):
        p_port = port or free_port()
        p = subprocess.Popen(["redis-server", "--port", str(p_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", work, *extra],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait_ping(p_port, p):
            return p, p_port
        p.kill()
        p.wait()
        if port:
            break
    sys.exit(f"{who}: redis-server did not start")


def start_gridd(gridd, work, settings=(), port=None, who="test"):
    """A gridd serving RESP (Popen, RESP port); port None: one it picks.
    Its log is work/gridd.log (appended to)."""
    port_file = os.path.join(work, "resp.port")
    try:
        os.unlink(port_file)
    except FileNotFoundError:
        pass
    log = open(os.path.join(work, "gridd.log"), "ab")
    args = [gridd, "--port", "0", "--set", f"resp_port={port or 0}",
            "--set", f"resp_port_file={port_file}"]
    for s in settings:
        args += ["--set", s]
    p = subprocess.Popen(args, stdout=log, stderr=log)
    log.close()
    deadline = time.monotonic() + START_WAIT_S
    got = None
    while time.monotonic() < deadline and p.poll() is None:
        try:
            got = int(open(port_file).read())
            break
        except (OSError, ValueError):
            time.sleep(0.05)
    if not got or not wait_ping(got, p):
        p.kill()
        p.wait()
        print(open(os.path.join(work, "gridd.log")).read())
        sys.exit(f"{who}: gridd did not serve RESP")
    return p, got


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def gridd_stops_cleanly(p, work):
    """SIGTERM to a gridd still running: its exit status (a sanitizer's
    report, a leak or a race, fails it), with its log's end when not 0."""
    if p.poll() is not None:
        return p.returncode if p.returncode is not None else -1
    p.terminate()
    rc = p.wait(timeout=30)
    if rc != 0:
        print(open(os.path.join(work, "gridd.log")).read()[-4000:])
    return rc
