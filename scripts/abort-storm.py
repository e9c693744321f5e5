#!/usr/bin/env python3
"""Abort storm: requests whose clients hang up at once, while readiness is watched.

Given one or more shoal node URLs (loopback only), opens a TCP connection at RATE per second
(round-robin over the nodes), sends one request (default `DELETE /api/v1/listeners/nonexistent`)
and closes the socket 0 to 2 ms later without reading the answer. Meanwhile every 0.5 s it
GETs /health/ready on every node and records the status and latency. It reads each node's
`shoal_lease_renewal_failures_total` from /metrics before and after, and at the end each
node's lease worker from GET /api/v1/nodes/{id}.

Exit status: 0 if every readiness check answered 200 and no lease renewal failed during the
run; 1 otherwise; 2 if it could not measure (a node unreachable at the start, bad arguments).

Python 3 standard library only. Bounded: at most --duration seconds (capped at 1 hour) and
RATE x DURATION requests; it stops by itself.

    scripts/abort-storm.py http://127.0.0.1:7700 --rate 10 --duration 60
    scripts/abort-storm.py http://127.0.0.1:7700 http://127.0.0.1:7701 --rate 200 --threads 8 --duration 30

With --schedules N it first creates N every-second schedules (`* * * * * *`, named
storm-tick-0 ...) of SANDBOX's noop job (--job, default jobs/noop.toml of the example sandbox
`shoal up` registers), spread over the nodes, watches (and storms, if --rate > 0) with them
firing, reports the firings the nodes recorded meanwhile, and deletes them again:

    scripts/abort-storm.py http://127.0.0.1:7700 http://127.0.0.1:7701 --schedules 2000 --rate 0 --duration 120
"""

import argparse
import http.client
import json
import math
import random
import socket
import struct
import sys
import threading
import time
import urllib.parse

MAX_DURATION = 3600.0
MAX_RATE = 5000.0
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
METRIC = "shoal_lease_renewal_failures_total"


def parse_node(url):
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname or not u.port:
        raise ValueError(f"{url}: expected http://127.0.0.1:PORT")
    host = u.hostname
    if host not in LOOPBACK:
        raise ValueError(f"{url}: only loopback addresses are allowed")
    if host == "localhost":
        host = "127.0.0.1"
    return {"url": url.rstrip("/"), "host": host, "port": u.port}


def http_get(node, path, timeout):
    """(status, body text, seconds); status is a string like 'error: ...' when no answer."""
    started = time.monotonic()
    conn = http.client.HTTPConnection(node["host"], node["port"], timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        return resp.status, body, time.monotonic() - started
    except Exception as e:  # noqa: BLE001 - any failure is a failed check
        return f"error: {type(e).__name__}: {e}", "", time.monotonic() - started
    finally:
        conn.close()


def metric_sum(node, name):
    """Sum of metric `name` over its label sets in the node's /metrics, or None if unreadable."""
    status, body, _ = http_get(node, "/metrics", 10)
    if status != 200:
        return None
    total, found = 0.0, False
    for line in body.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest.startswith("{"):
            rest = rest.split("}", 1)[1]
        elif rest and not rest[0].isspace():
            continue  # another metric with this prefix
        try:
            total += float(rest.split()[0])
            found = True
        except (IndexError, ValueError):
            pass
    return total if found else None


def lease_failures(node):
    return metric_sum(node, METRIC)


def firings_started(node):
    return metric_sum(node, "shoal_schedule_firings_started_total")


def build_request(kind, body, host_header):
    method, _, path = kind.strip().partition(" ")
    if not method or not path.startswith("/"):
        raise ValueError(f"request kind `{kind}`: expected `METHOD /path`")
    data = body.encode() if body else b""
    head = [f"{method.upper()} {path.strip()} HTTP/1.1", f"Host: {host_header}", f"Content-Length: {len(data)}"]
    if data:
        head.append("Content-Type: application/json")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.connect_errors = 0
        self.send_errors = 0


def storm(nodes, requests, rate, threads, deadline, total, close_mode, stats, stop):
    """Each thread sends its share at evenly spaced times (catching up if it falls behind)."""
    interval = threads / rate
    counter = {"next": 0}
    counter_lock = threading.Lock()

    def take():
        with counter_lock:
            i = counter["next"]
            if i >= total:
                return None
            counter["next"] = i + 1
            return i

    def worker(t):
        start = time.monotonic() + t * interval / threads
        k = 0
        while not stop.is_set():
            due = start + k * interval
            now = time.monotonic()
            if due >= deadline:
                return
            if due > now:
                time.sleep(due - now)
            i = take()
            if i is None:
                return
            k += 1
            node = nodes[i % len(nodes)]
            request = requests[i % len(nodes)]
            try:
                s = socket.create_connection((node["host"], node["port"]), timeout=2)
            except OSError:
                with stats.lock:
                    stats.connect_errors += 1
                continue
            try:
                rst = close_mode == "rst" or (close_mode == "mix" and random.random() < 0.5)
                if rst:  # close with a reset rather than a FIN
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.sendall(request)
                time.sleep(random.uniform(0, 0.002))
                with stats.lock:
                    stats.sent += 1
            except OSError:
                with stats.lock:
                    stats.send_errors += 1
            finally:
                s.close()

    ts = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for t in ts:
        t.start()
    return ts


def watch_ready(node, interval, deadline, stop, record):
    """Polls /health/ready every `interval` s until the deadline; one thread per node."""
    k = 0
    start = time.monotonic()
    while not stop.is_set():
        due = start + k * interval
        k += 1
        if due >= deadline:
            return
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        status, body, took = http_get(node, "/health/ready", 5)
        entry = {"t": round(time.monotonic() - start, 3), "status": status, "latency": took}
        if status != 200:
            entry["body"] = body[:500]
            # What the node says about its workers, once per episode, is the clue that matters.
            if not record["details"] or record["details"][-1]["t"] < entry["t"] - 5:
                nid = node.get("id")
                if nid:
                    s2, b2, _ = http_get(node, f"/api/v1/nodes/{nid}", 5)
                    record["details"].append({"t": entry["t"], "ready": body[:500], "node_status": s2, "node": b2[:4000]})
        record["checks"].append(entry)


def http_call(node, method, path, body, timeout):
    conn = http.client.HTTPConnection(node["host"], node["port"], timeout=timeout)
    try:
        headers = {"content-type": "application/json"} if body is not None else {}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def p99(values):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(0.99 * len(v)) - 1))]  # nearest rank


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("nodes", nargs="+", help="node URLs, e.g. http://127.0.0.1:7700 (loopback only)")
    ap.add_argument("--rate", type=float, default=10.0,
                    help="requests per second over all nodes (default 10; 0 only watches readiness)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of storm (default 60)")
    ap.add_argument("--request", default="DELETE /api/v1/listeners/nonexistent",
                    help="request kind `METHOD /path` (default `DELETE /api/v1/listeners/nonexistent`)")
    ap.add_argument("--body", default="", help="request body (JSON), sent with Content-Type: application/json")
    ap.add_argument("--threads", type=int, default=0, help="sender threads (default: 1 per 25 req/s, at least 1)")
    ap.add_argument("--close", choices=["fin", "rst", "mix"], default="fin",
                    help="how the socket is closed: normal close (default), reset, or half of each")
    ap.add_argument("--ready-interval", type=float, default=0.5, help="seconds between readiness checks (default 0.5)")
    ap.add_argument("--json", metavar="FILE", help="also write the raw results to FILE")
    ap.add_argument("--schedules", type=int, default=0,
                    help="every-second schedules to create first, and delete at the end (default 0; at most 20000)")
    ap.add_argument("--sandbox", default="examples", help="sandbox of the scheduled job (default examples)")
    ap.add_argument("--job", default="jobs/noop.toml", help="the scheduled job (default jobs/noop.toml)")
    a = ap.parse_args()
    if not (0 <= a.schedules <= 20000):
        print("error: --schedules must be from 0 to 20000", file=sys.stderr)
        return 2

    try:
        nodes = [parse_node(u) for u in a.nodes]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not (0 <= a.rate <= MAX_RATE) or not (0 < a.duration <= MAX_DURATION) or a.ready_interval <= 0:
        print(f"error: rate must be in (0, {MAX_RATE:.0f}], duration in (0, {MAX_DURATION:.0f}]", file=sys.stderr)
        return 2
    threads = a.threads or max(1, int(a.rate // 25))
    threads = max(1, min(threads, 64, max(1, int(a.rate * a.duration))))
    try:
        requests = [build_request(a.request, a.body, f"{n['host']}:{n['port']}") for n in nodes]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    # Before: every node answers, its id, its lease failure counter.
    for n in nodes:
        status, body, _ = http_get(n, "/health/ready", 5)
        try:
            n["id"] = json.loads(body).get("node")
        except ValueError:
            n["id"] = None
        n["ready_before"] = status
        n["failures_before"] = lease_failures(n)
        if n["failures_before"] is None:
            print(f"error: cannot read {METRIC} from {n['url']}/metrics (ready: {status} {body[:200]})", file=sys.stderr)
            return 2

    created = []
    if a.schedules:
        began = time.monotonic()
        for i in range(a.schedules):
            n = nodes[i % len(nodes)]
            body = {"name": f"storm-tick-{i}", "sandbox": a.sandbox, "job": a.job, "cron": "* * * * * *"}
            status, answer = http_call(n, "POST", "/api/v1/schedules", body, 30)
            if status != 201:
                print(f"error: creating schedule {i} on {n['url']}: {status} {answer[:300]}", file=sys.stderr)
                break
            created.append((n, json.loads(answer).get("id") or f"storm-tick-{i}"))
        print(f"created {len(created)} every-second schedules in {time.monotonic() - began:.1f} s", flush=True)
        if len(created) < a.schedules:
            delete_schedules(created)
            return 2
    fired_before = [firings_started(n) for n in nodes]

    total = int(a.rate * a.duration)
    print(f"abort storm: {a.request!r} to {len(nodes)} node(s) at {a.rate:g}/s for {a.duration:g} s "
          f"({total} requests max, {threads} thread(s), close={a.close}); readiness every {a.ready_interval:g} s",
          flush=True)
    stats, stop = Stats(), threading.Event()
    started = time.monotonic()
    deadline = started + a.duration
    records = {n["url"]: {"checks": [], "details": []} for n in nodes}
    watchers = [threading.Thread(target=watch_ready, args=(n, a.ready_interval, deadline, stop, records[n["url"]]),
                                 daemon=True) for n in nodes]
    for w in watchers:
        w.start()
    senders = storm(nodes, requests, a.rate, threads, deadline, total, a.close, stats, stop) if a.rate > 0 else []
    try:
        for t in senders + watchers:
            t.join(max(0.0, deadline - time.monotonic()) + 15)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    stop.set()
    for t in senders + watchers:
        t.join(10)
    elapsed = time.monotonic() - started
    time.sleep(1.0)  # let the last handlers finish before reading the counters

    bad = False
    print(f"\nrequests sent: {stats.sent} in {elapsed:.1f} s ({stats.sent / elapsed:.1f}/s); "
          f"connect errors {stats.connect_errors}, send errors {stats.send_errors}")
    result = {"request": a.request, "rate": a.rate, "duration": a.duration, "close": a.close,
              "threads": threads, "sent": stats.sent, "elapsed_s": elapsed,
              "connect_errors": stats.connect_errors, "send_errors": stats.send_errors, "nodes": []}
    for n in nodes:
        rec = records[n["url"]]
        checks = rec["checks"]
        ok = sum(1 for c in checks if c["status"] == 200)
        other = len(checks) - ok
        lat = [c["latency"] * 1000 for c in checks]
        after = lease_failures(n)
        status_end, body_end, _ = http_get(n, "/health/ready", 5)
        lease_worker = None
        if n["id"]:
            s2, b2, _ = http_get(n, f"/api/v1/nodes/{n['id']}", 5)
            try:
                workers = json.loads(b2).get("workers") or []
                lease_worker = next((w for w in workers if w.get("name") == "lease"), None)
            except ValueError:
                pass
        delta = None if after is None else after - n["failures_before"]
        print(f"{n['url']} (node {n['id']}): ready checks {len(checks)}: {ok} x 200, {other} other; "
              f"latency max {max(lat) if lat else float('nan'):.1f} ms, p99 {p99(lat):.1f} ms; "
              f"{METRIC} before {n['failures_before']:g}, after {'unreadable' if after is None else f'{after:g}'}; "
              f"ready at the end: {status_end}")
        if lease_worker is not None:
            print(f"    lease worker: {json.dumps(lease_worker)}")
        if other:
            bad = True
            firsts = [c for c in checks if c["status"] != 200][:5]
            for c in firsts:
                print(f"    not ready at t={c['t']} s: {c['status']} {c.get('body', '')}")
            for d in rec["details"][:3]:
                print(f"    at t={d['t']} s GET /api/v1/nodes/{n['id']} -> {d['node_status']}: {d['node']}")
        if delta is None or delta > 0 or status_end != 200:
            bad = True
        result["nodes"].append({"url": n["url"], "id": n["id"], "checks": len(checks), "ok": ok, "other": other,
                                "max_ms": max(lat) if lat else None, "p99_ms": p99(lat) if lat else None,
                                "failures_before": n["failures_before"], "failures_after": after,
                                "ready_end": status_end, "lease_worker": lease_worker,
                                "not_ready": [c for c in checks if c["status"] != 200][:50],
                                "details": rec["details"][:10]})
    if created:
        fired = [(after or 0.0) - (before or 0.0) for before, after in zip(fired_before, map(firings_started, nodes))]
        print(f"schedule firings started during the run: {sum(fired):.0f} "
              f"({sum(fired) / elapsed:.0f}/s; per node {', '.join(f'{f:.0f}' for f in fired)}; "
              f"{len(created)} every-second schedules make {len(created)}/s)")
        result["schedules"] = len(created)
        result["firings_started"] = fired
        delete_schedules(created)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    print("RESULT:", "FAIL (a node was not ready or a lease renewal failed)" if bad else "OK")
    return 1 if bad else 0


def delete_schedules(created):
    for n, sid in created:
        try:
            http_call(n, "DELETE", f"/api/v1/schedules/{sid}", None, 30)
        except OSError:
            pass
    if created:
        print(f"deleted the {len(created)} schedules", flush=True)


if __name__ == "__main__":
    sys.exit(main())
