"""The `feed` command: run, once, status, snapshot, simulate, tail, config.

Exit codes: 0 success (and a clean stop on SIGTERM/SIGINT); 1 unexpected error;
2 invalid configuration or usage; 3 the upstream refused us (API key, permissions);
4 the walk ended incomplete (`once`); 5 the state file is unusable; 6 Kafka failed
(unreachable at start, or another publisher took over).
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from feed import __version__, logs, metrics
from feed.errors import (
    ConfigError,
    FatalUpstreamError,
    FeedError,
    ProducerFencedError,
    PublishError,
    StateError,
)
from feed.settings import Settings, load_settings, masked, settings_table

log = logging.getLogger("feed")

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_UPSTREAM, EXIT_INCOMPLETE, EXIT_STATE, EXIT_KAFKA = range(7)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        settings = load_settings(**_overrides(args))
    except ConfigError as exc:
        print(f"feed: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(args.log_level or settings.log.level, settings.log.format)
    try:
        return int(args.handler(settings, args))
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except FatalUpstreamError as exc:
        log.error("%s", exc)
        return EXIT_UPSTREAM
    except StateError as exc:
        log.error("%s", exc)
        return EXIT_STATE
    except sqlite3.Error as exc:
        # SQLite undoes the open transaction itself: the last checkpoint stands.
        log.error(
            "cannot write the state file %s (%s). The last checkpoint is intact; free disk "
            "space or fix the file's permissions (FEED_STATE__PATH), then start again.",
            settings.state.path,
            exc,
        )
        return EXIT_STATE
    except PublishError as exc:
        log.error("%s", exc)
        return EXIT_KAFKA
    except FeedError as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK


# -- commands ------------------------------------------------------------------------


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """Poll forever; stop cleanly on SIGTERM or SIGINT."""
    from feed.engine import Feed, Stopped
    from feed.health import HealthServer

    stop = _stop_on_signals()
    health = None
    if settings.metrics.enabled:
        health = HealthServer(
            settings.metrics.host,
            settings.metrics.port,
            lambda: metrics.LIVENESS.ready(settings.metrics.ready_after_seconds),
        ).start()
        log.info("metrics and health on http://%s:%d", settings.metrics.host, health.port)
    feed = Feed(settings, stop=stop)
    try:
        _open_with_retry(feed, stop)
        complete = 0
        while not stop.is_set():
            try:
                complete += feed.run_walk().outcome == "complete"
            except FatalUpstreamError as exc:
                metrics.LIVENESS.problem = f"upstream: {exc}"
                metrics.ERRORS.labels("upstream_fatal").inc()
                metrics.WALKS.labels("failed").inc()
                log.error("%s The service stays up and retries after the poll interval.", exc)
            if args.max_walks and complete >= args.max_walks:
                break
            pause = settings.poll.interval_seconds + random.uniform(0, settings.poll.jitter_seconds)
            stop.wait(pause)
    except Stopped:
        pass
    except ProducerFencedError as exc:
        log.error("%s", exc)
        return EXIT_KAFKA
    finally:
        feed.close()
        if health:
            health.stop()
    log.info("stopped cleanly")
    return EXIT_OK


def _open_with_retry(feed: Any, stop: threading.Event) -> None:
    from feed.engine import Stopped

    delay = 1.0
    while True:
        try:
            feed.open()
            return
        except PublishError as exc:
            metrics.LIVENESS.problem = f"Kafka: {exc}"
            log.warning("cannot start publishing yet: %s; retrying in %.0f s", exc, delay)
            if stop.wait(delay):
                raise Stopped from None
            delay = min(delay * 2, 30.0)


def cmd_once(settings: Settings, args: argparse.Namespace) -> int:
    """One walk, then exit; --dry-run prints the events and changes nothing."""
    from feed.engine import Feed, Stopped

    stop = _stop_on_signals()
    if args.dry_run:
        return _dry_run(settings, stop)
    feed = Feed(settings, stop=stop)
    try:
        feed.open()
        report = feed.run_walk()
    except Stopped:
        return EXIT_OK
    finally:
        feed.close()
    return EXIT_OK if report.outcome == "complete" else EXIT_INCOMPLETE


def _dry_run(settings: Settings, stop: threading.Event) -> int:
    import tempfile

    from feed.engine import Feed

    out = sys.stdout.buffer

    def emit(body: bytes) -> None:
        out.write(body + b"\n")

    with tempfile.TemporaryDirectory() as scratch:
        if not settings.state.path.exists():
            settings = settings.model_copy(deep=True)
            settings.state.path = Path(scratch) / "dry-run.sqlite3"
        feed = Feed(settings, stop=stop, dry_run=emit)
        try:
            feed.open()
            report = feed.run_walk()
        finally:
            feed.close()
        out.flush()
    return EXIT_OK if report.outcome == "complete" else EXIT_INCOMPLETE


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """What the checkpoint says: last walk, walk in progress, watermark, outbox."""
    from feed.store import SnapshotStore

    if not settings.state.path.exists():
        if args.json:
            print(orjson.dumps({"state_path": str(settings.state.path), "exists": False}).decode())
        else:
            print(f"no state at {settings.state.path}: no walk has run yet (FEED_STATE__PATH)")
        return EXIT_OK
    store = SnapshotStore(settings.state.path, settings.api.library_id or "default")
    try:
        walk = store.load_walk()
        watermark = store.get_meta("watermark")
        last = store.get_meta("last_walk")
        if last:
            last["started_at"] = _iso(last["started_at"])
        doc = {
            "state_path": str(settings.state.path),
            "exists": True,
            "library": store.library,
            "links": store.count_links(),
            "last_walk": last,
            "walk_in_progress": None
            if walk is None
            else {
                "walk": walk.walk_id,
                "started_at": _iso(walk.started_at),
                "pages": walk.pages,
                "rows": walk.rows,
                "position": walk.position(),
            },
            "watermark": _iso(watermark) if watermark else None,
            "watermark_age_seconds": round(time.time() - watermark, 1) if watermark else None,
            "outbox_pending": store.outbox_size(),
            "published_seq": store.get_meta("published_seq", 0),
        }
    finally:
        store.close()
    if args.json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_status(doc)
    return EXIT_OK


def _print_status(doc: dict[str, Any]) -> None:
    last = doc["last_walk"]
    print(f"state       {doc['state_path']} (library {doc['library']}, {doc['links']} links)")
    if last:
        print(
            f"last walk   #{last['walk']} {last['outcome']}, started {last['started_at']}, "
            f"{last['seconds']:.1f} s, {last['pages']} pages, {last['rows']} rows, "
            f"events: {_counts(last['events'])}"
        )
    else:
        print("last walk   none yet")
    progress = doc["walk_in_progress"]
    if progress:
        print(f"in progress #{progress['walk']}, {progress['pages']} pages, {progress['position']}")
    age = doc["watermark_age_seconds"]
    print(f"watermark   {doc['watermark'] or 'none'}" + (f" ({age:.0f} s ago)" if age else ""))
    print(f"outbox      {doc['outbox_pending']} records waiting for Kafka")


def cmd_snapshot(settings: Settings, args: argparse.Namespace) -> int:
    """Publish every known link again as link_snapshot events, for new consumers."""
    from feed.engine import Feed

    feed = Feed(settings, stop=_stop_on_signals())
    try:
        feed.open()
        count = feed.publish_snapshot()
    finally:
        feed.close()
    log.info("published %d link_snapshot events", count)
    return EXIT_OK


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    """Serve the simulated album-assets API until stopped."""
    from feed.simulator import Library, Simulator

    libraries = [
        Library(
            links=args.links,
            albums=args.albums,
            seed=args.seed + n,
            library_id=f"library_{n + 1}",
        )
        for n in range(args.libraries)
    ]
    sim = Simulator(
        libraries,
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        churn_per_second=args.churn_per_second,
        seed=args.seed,
    )
    sim.faults.deleted_cursor = args.deleted_cursor
    stop = _stop_on_signals()
    with sim:
        print(
            f"simulator on {sim.url} with {args.links} links per library in "
            f"{args.libraries} librar{'y' if args.libraries == 1 else 'ies'}; "
            f"API key {args.api_key!r}",
            flush=True,
        )
        print(
            f"try: curl -H 'Authorization: Bearer {args.api_key}' "
            f"'{sim.url}/api/album-assets?limit=2'",
            flush=True,
        )
        stop.wait()
    return EXIT_OK


def cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
    """Print events from the topic, readably."""
    from feed.tail import tail

    return tail(
        settings,
        from_beginning=args.from_beginning,
        album=args.album,
        asset=args.asset,
        limit=args.max,
        idle_timeout=args.idle_timeout,
        as_json=args.json,
        stop=_stop_on_signals(),
    )


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    """Print the effective configuration (secrets masked), or the settings table."""
    if args.table:
        print("| variable | default | meaning |\n| --- | --- | --- |")
        for env, default, meaning in settings_table():
            print(f"| `{env}` | `{default}` | {meaning} |")
        return EXIT_OK
    print(orjson.dumps(masked(settings), option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK


# -- plumbing --------------------------------------------------------------------------


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
    return stop


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "none"


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


_FLAG_SETTINGS = {
    "api_url": ("api", "base_url"),
    "api_key": ("api", "api_key"),
    "library_id": ("api", "library_id"),
    "limit": ("api", "limit"),
    "state": ("state", "path"),
    "bootstrap_servers": ("kafka", "bootstrap_servers"),
    "topic": ("kafka", "topic"),
    "metrics_port": ("metrics", "port"),
}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line flags, shaped like the settings; they win over env and .env."""
    result: dict[str, dict[str, Any]] = {}
    for flag, (group, name) in _FLAG_SETTINGS.items():
        value = getattr(args, flag, None)
        if value is not None and not (args.command == "simulate" and flag == "api_key"):
            result.setdefault(group, {})[name] = value
    if getattr(args, "no_transactions", False):
        result.setdefault("kafka", {})["transactions"] = False
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feed",
        description="Publish every change of Gumnut's album-asset links to Kafka.",
        epilog="Settings come from FEED_<GROUP>__<FIELD> variables and .env; flags win. "
        "Exit codes: 0 ok, 1 error, 2 configuration, 3 upstream refused, "
        "4 walk incomplete, 5 state unusable, 6 Kafka.",
    )
    parser.add_argument("--version", action="version", version=f"feed {__version__}")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api-url", help="upstream base URL (FEED_API__BASE_URL)")
    common.add_argument("--api-key", help="API key (FEED_API__API_KEY; prefer the variable)")
    common.add_argument("--library-id", help="library (FEED_API__LIBRARY_ID)")
    common.add_argument("--limit", type=int, help="rows per page, 1-200 (FEED_API__LIMIT)")
    common.add_argument("--state", help="state file (FEED_STATE__PATH)")
    common.add_argument("--bootstrap-servers", help="Kafka (FEED_KAFKA__BOOTSTRAP_SERVERS)")
    common.add_argument("--topic", help="events topic (FEED_KAFKA__TOPIC)")
    common.add_argument(
        "--no-transactions",
        action="store_true",
        help="at-least-once instead of transactions (FEED_KAFKA__TRANSACTIONS)",
    )

    run = sub.add_parser("run", parents=[common], help="poll forever")
    run.add_argument("--metrics-port", type=int, help="FEED_METRICS__PORT")
    run.add_argument("--max-walks", type=int, default=0, help="stop after N complete walks")
    run.set_defaults(handler=cmd_run)

    once = sub.add_parser("once", parents=[common], help="one walk, then exit")
    once.add_argument(
        "--dry-run",
        action="store_true",
        help="print the events as JSON lines; change neither Kafka nor state",
    )
    once.set_defaults(handler=cmd_once)

    status = sub.add_parser("status", parents=[common], help="what the checkpoint says")
    status.add_argument("--json", action="store_true", help="machine-readable")
    status.set_defaults(handler=cmd_status)

    snap = sub.add_parser(
        "snapshot",
        parents=[common],
        help="publish the whole known state again, for new consumers",
    )
    snap.set_defaults(handler=cmd_snapshot)

    sim = sub.add_parser(
        "simulate",
        help="serve a simulated upstream",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sim.add_argument("--host", default="127.0.0.1", help="listen address")
    sim.add_argument("--port", type=int, default=8600, help="listen port")
    sim.add_argument("--links", type=int, default=10_000, help="links per library")
    sim.add_argument("--albums", type=int, default=100, help="albums per library")
    sim.add_argument(
        "--libraries", type=int, default=1, help="libraries; above 1, requests must name library_id"
    )
    sim.add_argument("--seed", type=int, default=1, help="seed of the synthetic data")
    sim.add_argument(
        "--churn-per-second",
        type=float,
        default=0.0,
        help="links added, removed and updated per second, in thirds",
    )
    sim.add_argument("--api-key", default="sim-key", help="the bearer key it accepts")
    sim.add_argument(
        "--deleted-cursor",
        choices=["error404", "error400", "continue"],
        default="error404",
        help="how it answers a starting_after_id whose row was deleted",
    )
    sim.set_defaults(handler=cmd_simulate)

    tail_p = sub.add_parser("tail", parents=[common], help="print events from Kafka")
    tail_p.add_argument("--from-beginning", action="store_true")
    tail_p.add_argument("--album", help="only events of this album")
    tail_p.add_argument("--asset", help="only events of this asset")
    tail_p.add_argument("--max", type=int, default=0, help="stop after N events")
    tail_p.add_argument(
        "--idle-timeout",
        type=float,
        default=0,
        help="stop after this many seconds without an event",
    )
    tail_p.add_argument("--json", action="store_true", help="raw JSON lines")
    tail_p.set_defaults(handler=cmd_tail)

    config = sub.add_parser("config", parents=[common], help="print the effective settings")
    config.add_argument("--table", action="store_true", help="the settings reference table")
    config.set_defaults(handler=cmd_config)

    for choice in sub.choices.values():
        choice.description = choice.get_default("handler").__doc__
    return parser


if __name__ == "__main__":
    sys.exit(main())
