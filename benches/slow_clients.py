#!/usr/bin/env python3
"""Non-reading clients against normal GIF requests (issue 10 §3), side by side.

Starts the service binary on 127.0.0.1:0 over a temporary media root (a 20 MB file and a
400 KB GIF), opens N connections that ask for the 20 MB file and never read, and for
5 s fetches the GIF again and again (4 at a time) while they hold on. Reports the normal
clients' statuses and worst latency, and the server's RssAnon (idle, peak during the
attack, 3 s after the attackers left). Each round runs the shipped configuration
("pool": stalled bodies leave the in-flight bound) and `MAX_STALLED=0` ("no pool": the
behaviour before, a non-reading body keeps its slot), one after the other, so both see
the same machine load.

    cargo build [--release]
    python3 benches/slow_clients.py target/release/oip-media [rounds] [attackers]

Loopback only; every process and socket it opens is closed before it exits.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time


def start(binary, root, extra_env):
    env = dict(
        os.environ,
        MEDIA_DIR=root,
        PORT="0",
        BIND="127.0.0.1",
        RUST_LOG="info",
        DERIVED_DIR=os.path.join(root, ".derived"),
        **extra_env,
    )
    proc = subprocess.Popen(
        [binary], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    for line in proc.stdout:
        found = re.search(r"listening on http://(\S+)", line)
        if found:
            host, port = found.group(1).rsplit(":", 1)
            # Keep draining the log so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, (host, int(port))
    raise SystemExit("the service exited before listening")


def rss_anon_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


def get(addr, path):
    started = time.monotonic()
    with socket.create_connection(addr, timeout=20) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    return data.split(b" ", 2)[1].decode(), time.monotonic() - started


def run(binary, root, label, extra_env, attackers):
    proc, addr = start(binary, root, extra_env)
    try:
        time.sleep(0.5)
        get(addr, "/media/p/a.gif")
        idle = rss_anon_mib(proc.pid)
        held = []
        for _ in range(attackers):
            s = socket.create_connection(addr)
            s.sendall(b"GET /media/p/big.gif HTTP/1.1\r\nHost: t\r\n\r\n")
            held.append(s)
        peak, worst, statuses = idle, 0.0, {}
        began = time.monotonic()
        while time.monotonic() - began < 5:
            results = []
            threads = [
                threading.Thread(target=lambda: results.append(get(addr, "/media/p/a.gif")))
                for _ in range(4)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for status, took in results:
                statuses[status] = statuses.get(status, 0) + 1
                worst = max(worst, took)
            peak = max(peak, rss_anon_mib(proc.pid))
            time.sleep(0.1)
        for s in held:
            s.close()
        time.sleep(3)
        after = rss_anon_mib(proc.pid)
        codes = ", ".join(f"{n}× {code}" for code, n in sorted(statuses.items()))
        print(
            f"{label:8} normal GIFs: {codes}; worst {worst * 1000:5.0f} ms | "
            f"RssAnon MiB: idle {idle:.1f}, peak {peak:.1f}, 3 s after {after:.1f}",
            flush=True,
        )
    finally:
        proc.kill()
        proc.wait()


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/oip-media"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    attackers = int(sys.argv[3]) if len(sys.argv) > 3 else 600
    root = tempfile.mkdtemp(prefix="oip-slow-clients-")
    try:
        os.makedirs(os.path.join(root, "web/p"))
        with open(os.path.join(root, "web/p/big.gif"), "wb") as f:
            f.truncate(20_000_000)
        with open(os.path.join(root, "web/p/a.gif"), "wb") as f:
            f.write(os.urandom(400_000))
        print(f"{attackers} non-reading clients on a 20 MB file, {rounds} rounds", flush=True)
        for _ in range(rounds):
            run(binary, root, "pool", {}, attackers)
            run(binary, root, "no pool", {"MAX_STALLED": "0"}, attackers)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
