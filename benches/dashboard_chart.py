#!/usr/bin/env python3
"""Draws docs/dashboard.svg: the Grafana dashboard's first panels (deploy/grafana/oip-media.json)
from the same series, scraped from a real server under a short load.

    python3 benches/dashboard_chart.py [BINARY] [SECONDS] [OUT]

No Grafana can be installed on these machines (Debian ships none), so this plots what the
dashboard's queries would show: RssAnon vs RssFile (oip_media_process_rss_*_bytes),
requests per second by route (rate of oip_media_http_responses_total), and p50/p99 latency
of the media route (histogram_quantile over oip_media_http_request_duration_seconds_bucket).
Starts BINARY (default target/release/oip-media) on 127.0.0.1, a free port, the bundled
media; 4 client threads GET the bundled GIFs (and a few misses and /readyz) for SECONDS
(default 30); /metrics is scraped every second. Leaves nothing running.
"""

import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "target/release/oip-media")
SECONDS = int(sys.argv[2]) if len(sys.argv) > 2 else 30
OUT = sys.argv[3] if len(sys.argv) > 3 else os.path.join(HERE, "docs/dashboard.svg")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def scrape(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    samples = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            samples[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return samples


def gifs():
    root = os.path.join(HERE, "media/web")
    found = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".gif"):
                found.append("/media/" + os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(found)[:50]


def load(port, paths, stop):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    i = 0
    while not stop.is_set():
        path = paths[i % len(paths)]
        if i % 50 == 7:
            path = "/media/missing/nothing.gif"
        elif i % 200 == 11:
            path = "/readyz"
        try:
            conn.request("GET", path)
            conn.getresponse().read()
        except OSError:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        i += 1


def quantile(q, buckets):
    """histogram_quantile over [(le, cumulative count)] (Prometheus's interpolation)."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_le, prev_count = le, count
    return prev_le


def series(scrapes):
    t0 = scrapes[0][0]
    mem = {"RssAnon": [], "RssFile": []}
    rate = {}
    lat = {"p50": [], "p99": []}
    for (ta, a), (tb, b) in zip(scrapes, scrapes[1:]):
        t = tb - t0
        mem["RssAnon"].append((t, b.get(("oip_media_process_rss_anon_bytes", ""), 0) / 2**20))
        mem["RssFile"].append((t, b.get(("oip_media_process_rss_file_bytes", ""), 0) / 2**20))
        by_route = {}
        for (name, labels), v in b.items():
            if name == "oip_media_http_responses_total":
                route = re.search(r'route="([^"]*)"', labels).group(1)
                by_route[route] = by_route.get(route, 0) + (v - a.get((name, labels), 0)) / (tb - ta)
        for route, r in by_route.items():
            rate.setdefault(route, []).append((t, r))
        buckets = []
        for (name, labels), v in b.items():
            if name == "oip_media_http_request_duration_seconds_bucket" and 'route="media"' in labels:
                le = re.search(r'le="([^"]*)"', labels).group(1)
                buckets.append((float("inf") if le == "+Inf" else float(le), v - a.get((name, labels), 0)))
        for q, key in [(0.5, "p50"), (0.99, "p99")]:
            v = quantile(q, buckets)
            if v is not None:
                lat[key].append((t, v * 1e6))
    return mem, rate, lat


COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def panel(x0, y0, w, h, title, unit, lines):
    out = [f'<g transform="translate({x0},{y0})">',
           f'<rect width="{w}" height="{h}" fill="#181b1f" stroke="#2c3235"/>',
           f'<text x="10" y="20" fill="#ccccdc" font-size="13">{title}</text>']
    pts = [p for _, ps in lines for p in ps]
    if not pts:
        return out + ["</g>"]
    tmax = max(p[0] for p in pts) or 1
    vmax = max(p[1] for p in pts) * 1.1 or 1
    px, py, pw, ph = 55, 35, w - 70, h - 65
    for i in range(5):
        yv = vmax * i / 4
        y = py + ph - ph * i / 4
        out.append(f'<line x1="{px}" y1="{y:.1f}" x2="{px + pw}" y2="{y:.1f}" stroke="#2c3235"/>')
        out.append(f'<text x="{px - 5}" y="{y + 4:.1f}" fill="#8e8e8e" font-size="10" text-anchor="end">{yv:.3g}</text>')
    out.append(f'<text x="{px}" y="{h - 8}" fill="#8e8e8e" font-size="10">0 s</text>')
    out.append(f'<text x="{px + pw}" y="{h - 8}" fill="#8e8e8e" font-size="10" text-anchor="end">{tmax:.0f} s</text>')
    out.append(f'<text x="{px - 45}" y="{py - 8}" fill="#8e8e8e" font-size="10">{unit}</text>')
    legend_x = px + 60
    for i, (name, ps) in enumerate(lines):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{px + pw * t / tmax:.1f},{py + ph - ph * v / vmax:.1f}" for t, v in ps)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
        out.append(f'<text x="{legend_x}" y="{h - 8}" fill="{colour}" font-size="10">{name}</text>')
        legend_x += 8 * len(name) + 20
    return out + ["</g>"]


def main():
    port = free_port()
    env = dict(os.environ, MEDIA_DIR=os.path.join(HERE, "media"), PORT=str(port), RUST_LOG="warn")
    server = subprocess.Popen([BIN], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    sys.exit("server did not start")
                time.sleep(0.2)
        paths = gifs() or ["/healthz"]
        stop = threading.Event()
        scrapes = [(time.time(), scrape(port))]
        threads = [threading.Thread(target=load, args=(port, paths, stop)) for _ in range(4)]
        for t in threads:
            t.start()
        for _ in range(SECONDS):
            time.sleep(1)
            scrapes.append((time.time(), scrape(port)))
        stop.set()
        for t in threads:
            t.join()
    finally:
        server.terminate()
        server.wait()
    mem, rate, lat = series(scrapes)
    w, h = 480, 220
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w + 30}" height="{2 * h + 50}" font-family="sans-serif">',
           f'<rect width="100%" height="100%" fill="#111217"/>',
           f'<text x="10" y="22" fill="#ccccdc" font-size="15">oip-media (deploy/grafana/oip-media.json, drawn by benches/dashboard_chart.py from /metrics scrapes, {SECONDS} s of load)</text>']
    svg += panel(10, 35, w, h, "Memory: RssAnon vs RssFile", "MiB", list(mem.items()))
    svg += panel(20 + w, 35, w, h, "Requests by route family", "req/s",
                 sorted(rate.items(), key=lambda kv: -max(v for _, v in kv[1]))[:5])
    svg += panel(10, 45 + h, w, h, "Latency to the response head, route=media", "µs", list(lat.items()))
    shed = [("in flight", [(t, b.get(("oip_media_media_in_flight", ""), 0)) for t, b in
                           ((tb - scrapes[0][0], b) for tb, b in scrapes[1:])])]
    svg += panel(20 + w, 45 + h, w, h, "Media in flight", "bodies", shed)
    svg.append("</svg>")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write("\n".join(svg) + "\n")
    print(f"wrote {OUT}: {len(scrapes)} scrapes")


if __name__ == "__main__":
    main()
