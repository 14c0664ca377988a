"""The ``healthmon`` command: one subcommand per process, plus ``up`` for all of them.

Every subcommand loads the one configuration (defaults, ``HEALTHMON_*``
variables, then ``--set NAME=VALUE`` and the subcommand's own flags); a bad
value stops it at once with a message that names the setting.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys

from healthmon.config import ConfigError, Settings, load_settings, settings_table


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", dest="data_dir", help="state directory (setting data_dir)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE", help="override any setting"
    )


def _day(text: str):
    """``--date``: a ``datetime.date`` from DD-MM-YYYY (argparse names the option in its error)."""
    from healthmon.report import parse_day  # matplotlib loads only for the report command

    try:
        return parse_day(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="healthmon", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start collector, speed job, scheduler and API (and mocks) on this machine")
    up.add_argument("--mock", action="store_true", help="also start mock services")
    up.add_argument("--mock-services", type=int, default=5,
                    help="number of steady mock services (with --mock), besides one per mock scenario")

    collect = sub.add_parser("collect", help="run the UDP collector")
    collect.add_argument("--host", dest="udp_host")
    collect.add_argument("--port", dest="udp_port", type=int)

    sub.add_parser("speed", help="run the Spark streaming job that keeps the real-time view")
    sub.add_parser("batch", help="run one batch build now (with a progress bar)")
    schedule = sub.add_parser("schedule", help="run the scheduler: batch builds, expiry, retention and alert evaluation")
    schedule.add_argument("--jobs", choices=("all", "batch", "alerts"), default="all",
                          help="batch: builds, expiry and retention (starts Spark); alerts: alert rules and webhooks (no Spark); "
                               "all (default): both")

    serve = sub.add_parser("serve", help="run the HTTP API and dashboard")
    serve.add_argument("--host", dest="api_host")
    serve.add_argument("--port", dest="api_port", type=int)
    serve.add_argument("--processes", dest="api_processes", type=int, help="server processes sharing the port (0: one per core)")

    mock = sub.add_parser("mock", help="send deterministic health messages from simulated services")
    from mock_services.sender import add_arguments

    add_arguments(mock)

    agent = sub.add_parser("agent", help="the real host agent: this host's health and per-device block latency over UDP")
    agent.add_argument("--interval", type=float, default=5.0, help="seconds between sends (default 5)")
    agent.add_argument("--source", choices=("auto", "bcc", "libbpf", "diskstats"), default="auto",
                       help="block latency source: auto tries bcc, libbpf, diskstats in this order")
    agent.add_argument("--target", default=None, help="host:port to send to (default: the collector's udp_host:udp_port)")
    agent.add_argument("--devices", default=None, help="comma-separated block devices to report (default: all)")
    from healthmon.signing import add_sender_arguments

    add_sender_arguments(agent)

    hdfs = sub.add_parser("hdfs", help="start, stop or show the local single-node HDFS (NameNode + DataNode)")
    hdfs.add_argument("action", choices=["up", "down", "status"], help="up: start and wait until ready; down: stop; status: exit 0 when up")

    report = sub.add_parser("report", help="write PNG charts of one UTC day per service and per drive, from the merged views")
    report.add_argument("--date", required=True, type=_day, metavar="DD-MM-YYYY", help="the UTC day to chart")
    report.add_argument("--service", default=None, help="only this service's chart (default: every service and drive)")
    report.add_argument("--out", default=None, help="output directory (default: reports/YYYY-MM-DD under the current directory)")

    top = sub.add_parser("top", help="live console view of the services, their status and current values")
    top.add_argument("--url", default=None, help="the API's base URL (default: http://<api_host>:<api_port>)")
    top.add_argument("--interval", type=_positive_float, default=1.0, help="seconds between refreshes (default 1)")
    top.add_argument("--once", action="store_true", help="print one frame, plain, and exit (1 when the API is unreachable)")
    top.add_argument("--iterations", type=_positive_int, default=None, help="stop the live view after this many frames")

    sub.add_parser("settings", help="print every setting, its environment variable, default and help")

    for p in sub.choices.values():
        _add_common(p)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    for item in args.overrides:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected NAME=VALUE")
        overrides[name.strip()] = value
    names = {row[0] for row in settings_table()}
    for name, value in vars(args).items():
        if name in names and value is not None:
            overrides[name] = value
    return load_settings(overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Libraries that log every WebHDFS call and every py4j callback at INFO: that would drown the parts' own lines.
    for noisy in ("hdfs", "py4j"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"healthmon: bad setting: {exc}", file=sys.stderr)
        return 2
    command = args.command
    if command == "settings":
        for name, env, default, help_text in settings_table():
            print(f"{name:26} {env:36} {default!r:>14}  {help_text}")
        return 0
    if command == "hdfs":
        from healthmon.hdfs_cluster import run

        return run(settings, args.action)
    if command == "collect":
        from ingest.collector import run
    elif command == "speed":
        from speed_jobs.stream import run
    elif command == "batch":
        from batch_jobs.build import run
    elif command == "schedule":
        from scheduler.service import run

        return run(settings, jobs=args.jobs) or 0
    elif command == "serve":
        from serving.server import run
    elif command == "agent":
        from agent.main import run

        return run(settings, args) or 0
    elif command == "report":
        from healthmon.report import run

        return run(settings, args)
    elif command == "top":
        from healthmon.top import run

        return run(settings, args)
    elif command == "mock":
        from mock_services.sender import run

        return run(settings, args) or 0
    else:  # up
        from healthmon.supervisor import run

        return run(settings, mock=args.mock, mock_services=args.mock_services) or 0
    return run(settings) or 0


if __name__ == "__main__":
    sys.exit(main())
