"""How fast a walk is, what it costs, and how that grows with the library.

Starts the simulator (its own process) and the local Kafka broker, then measures, for a
library of N links, in one run:

- bare:      fetch and parse every page, nothing else (the limit of a sequential walk);
- first:     the first walk, every link published as link_added, transactions on;
- nochange:  a walk where nothing changed (the common case);
- churn1pct: a walk after 1% of the links changed (adds, removes, updates);
- with ``--latency``: bare and nochange again with that many ms per request, and the
  no-change walk split by album, 8 albums at once (FEED_API__CONCURRENCY=8);

each as wall time, links per second, the ratio to the bare walk of the same run, peak
resident memory of the measuring process, and the state's size on disk. ``--latency``
repeats bare and nochange with that many ms added to every request.

Each measurement runs in a fresh process so that its peak RSS is its own.
Usage: python bench/walk_bench.py [--links 1000000] [--latency 20] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
API_KEY = "bench-key"


def measure(
    scenario: str, base_url: str, bootstrap: str, state: Path, topic: str, *, concurrency: int
) -> dict[str, Any]:
    """Run one scenario in this process and return its figures."""
    from feed.client import UpstreamClient
    from feed.engine import Feed
    from feed.settings import Settings
    from feed.walk import PageWalk

    settings = Settings(
        api={
            "base_url": base_url,
            "api_key": API_KEY,
            "requests_per_second": 1e6,
            "concurrency": concurrency,
        },
        state={"path": state},
        kafka={
            "bootstrap_servers": bootstrap,
            "topic": topic,
            "checkpoint_topic": f"{topic}.checkpoints",
            "watermark_topic": f"{topic}.watermarks",
            "dead_letter_topic": f"{topic}.dead",
            "transactional_id": topic,
        },
        metrics={"enabled": False},
        log={"level": "WARNING"},
    )
    began = time.perf_counter()
    if scenario == "bare":
        links = 0
        with UpstreamClient(settings.api) as client:
            for page in PageWalk(client):
                links += len(page.links)
        events: dict[str, int] = {}
    else:
        feed = Feed(settings)
        try:
            feed.open()
            report = feed.run_walk()
        finally:
            feed.close()
        links, events = report.rows, report.events
    seconds = time.perf_counter() - began
    return {
        "scenario": scenario,
        "seconds": round(seconds, 3),
        "links": links,
        "links_per_second": round(links / seconds) if seconds else 0,
        "events": events,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "state_mb": round(_size(state) / 2**20, 1),
    }


def _size(state: Path) -> int:
    return sum(p.stat().st_size for p in state.parent.glob(state.name + "*") if p.exists())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if out.returncode != 0:
        raise SystemExit(f"scenario {args[0]} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run(links: int, latency_ms: float, smoke: bool) -> list[dict[str, Any]]:
    bootstrap = (
        subprocess.run(
            [str(REPO / "scripts" / "kafka-local"), "start"],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    port = _free_port()
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "feed",
            "simulate",
            "--port",
            str(port),
            "--links",
            str(links),
            "--albums",
            str(max(1, links // 200)),
            "--api-key",
            API_KEY,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    results: list[dict[str, Any]] = []
    try:
        assert sim.stdout is not None
        sim.stdout.readline()  # "simulator on ...": the library is built
        base = f"http://127.0.0.1:{port}"
        admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"})
        with tempfile.TemporaryDirectory() as scratch:
            state = Path(scratch) / "state.sqlite3"
            topic = f"bench.{uuid.uuid4().hex[:8]}"
            common = [base, bootstrap, str(state), topic, "1"]
            for scenario in ("bare", "first", "nochange"):
                results.append(_run_child([scenario, *common]))
            admin.post(
                "/_sim/churn",
                json={
                    "adds": links // 300,
                    "removes": links // 300,
                    "updates": links // 100 - 2 * (links // 300),
                },
            )
            results.append(_run_child(["churn1pct", *common]))
            if latency_ms and not smoke:
                admin.post("/_sim/faults", json={"latency_seconds": latency_ms / 1000})
                for scenario in ("bare", "nochange"):
                    row = _run_child([scenario, *common])
                    row["scenario"] += f"+{latency_ms:g}ms"
                    results.append(row)
                # The same no-change walk split by album, 8 albums at a time.
                row = _run_child(["nochange", *common[:-1], "8"])
                row["scenario"] += f"+{latency_ms:g}ms/c8"
                results.append(row)
    finally:
        sim.terminate()
        sim.wait(30)
    return results


def report(results: list[dict[str, Any]], links: int) -> str:
    def suffix(name: str) -> str:
        return name.split("+", maxsplit=1)[1].split("/", maxsplit=1)[0] if "+" in name else ""

    bare = {
        suffix(r["scenario"]): r["seconds"]
        for r in results
        if r["scenario"] == "bare" or r["scenario"].startswith("bare+")
    }
    lines = [
        f"library: {links} links",
        f"{'scenario':<20}{'seconds':>9}{'links/s':>10}{'x bare':>8}{'peak MB':>9}"
        f"{'state MB':>10}  events",
    ]
    for r in results:
        base_seconds = bare.get(suffix(r["scenario"]))
        ratio = r["seconds"] / base_seconds if base_seconds else 0
        r["ratio_to_bare"] = round(ratio, 2)
        lines.append(
            f"{r['scenario']:<20}{r['seconds']:>9.2f}{r['links_per_second']:>10}"
            f"{ratio:>8.2f}{r['peak_rss_mb']:>9.1f}{r['state_mb']:>10.1f}  "
            f"{r['events'] or ''}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--links", type=int, default=100_000)
    parser.add_argument("--latency", type=float, default=20.0, help="ms added per request")
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI, no latency")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        scenario, base, bootstrap, state, topic, concurrency = args.child
        result = measure(
            scenario, base, bootstrap, Path(state), topic, concurrency=int(concurrency)
        )
        print(json.dumps(result))
        return
    links = 2_000 if args.smoke else args.links
    results = run(links, args.latency, args.smoke)
    print(report(results, links))
    os.makedirs(args.out, exist_ok=True)
    path = Path(args.out) / f"walk-{links}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({"links": links, "results": results}, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
