"""The merge rule: batch rows below the horizon, real-time rows at or above it, nothing twice, nothing missed.

Real DuckDB view files are built with ``healthmon.views.update_view`` from a
list of synthetic messages: a batch view with horizon H (plus stale rows at and
above H in its window and rollup tables) and a real-time view holding windows
>= H plus rows below H that are not expired yet.  The API's summary and series
answers must equal a plain-Python computation over the messages, for ranges
with whole days, whole hours (the rollup path) and partial hours, and must not
change when a new batch view moves the horizon while the real-time rows stay.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pytest

from healthmon.config import load_settings
from healthmon.schema import HEALTH_METRICS
from healthmon.views import BATCH_VIEW, HEALTH, HEALTH_COLUMNS, REALTIME_VIEW, update_view
from serving import queries
from serving.app import create_app
from serving.params import iso

W = 60
HOUR = 3600
DAY = 86400
T0 = 1704067200  # 2024-01-01T00:00:00Z, a day boundary
H1 = T0 + 26 * HOUR
H2 = T0 + 28 * HOUR
RT_FROM = T0 + 20 * HOUR  # the real-time view still holds windows from here (below H1 and H2: not expired)
END = T0 + 30 * HOUR


# ---------------------------------------------------------------- synthetic data and view building (also used by test_serving)


def make_messages(start: float, end: float, services=("api", "db", "web"), seed: int = 11, mean_gap: float = 50.0) -> list[dict]:
    """Random health messages (already derived metrics) per service in [start, end)."""
    rng = random.Random(seed)
    out = []
    for service in services:
        ts = start + rng.uniform(0, mean_gap)
        while ts < end:
            out.append(
                {
                    "service": service,
                    "ts": round(ts, 3),
                    "cpu_pct": round(rng.uniform(0, 100), 3),
                    "ram_used_pct": round(rng.uniform(10, 90), 3),
                    "disk_used_pct": round(rng.uniform(20, 80), 3),
                }
            )
            ts += rng.uniform(0.2, 2 * mean_gap)
    return out


def message(service: str, ts: float, cpu: float, ram: float = 50.0, disk: float = 50.0) -> dict:
    return {"service": service, "ts": float(ts), "cpu_pct": cpu, "ram_used_pct": ram, "disk_used_pct": disk}


def window_rows(messages: list[dict], window_s: int = W) -> list[dict]:
    """Window aggregates (the view's row format) of ``messages``, in plain Python."""
    # Keyed by the list itself (held, so its id cannot be reused by a new list) and its length.
    if _window_cache.get("messages") is not messages or _window_cache.get("key") != (len(messages), window_s):
        _window_cache.update(messages=messages, key=(len(messages), window_s), rows=_window_rows(messages, window_s))
    return _window_cache["rows"]


_window_cache: dict = {}


def _window_rows(messages: list[dict], window_s: int) -> list[dict]:
    rows: dict[tuple[str, int], dict] = {}
    for msg in messages:
        ws = int(msg["ts"] // window_s * window_s)
        row = rows.get((msg["service"], ws))
        if row is None:
            row = {"service": msg["service"], "window_start": ws, "count": 0, "last_ts": -math.inf}
            for m in HEALTH_METRICS:
                row.update({f"{m}_sum": 0.0, f"{m}_min": math.inf, f"{m}_max": -math.inf, f"{m}_last": None})
            rows[(msg["service"], ws)] = row
        row["count"] += 1
        for m in HEALTH_METRICS:
            v = msg[m]
            row[f"{m}_sum"] += v
            row[f"{m}_min"] = min(row[f"{m}_min"], v)
            row[f"{m}_max"] = max(row[f"{m}_max"], v)
        if msg["ts"] >= row["last_ts"]:
            row["last_ts"] = msg["ts"]
            for m in HEALTH_METRICS:
                row[f"{m}_last"] = msg[m]
    return sorted(rows.values(), key=lambda r: (r["service"], r["window_start"]))


def garbage_row(service: str, window_start: int) -> dict:
    """A row that would be visible in any answer it leaked into (count 1000, metrics 500)."""
    row = {"service": service, "window_start": window_start, "count": 1000, "last_ts": float(window_start)}
    for m in HEALTH_METRICS:
        row.update({f"{m}_sum": 500_000.0, f"{m}_min": 500.0, f"{m}_max": 500.0, f"{m}_last": 500.0})
    return row


def insert_table(con, table: str, columns: tuple[str, ...], rows: list[dict]) -> None:
    """Insert ``rows`` (dicts holding at least ``columns``) into ``table``."""
    if not rows:
        return
    con.register("_rows", pa.table({c: [r[c] for r in rows] for c in columns}))
    try:
        con.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(columns)} FROM _rows")
    finally:
        con.unregister("_rows")


def insert_rows(con, table: str, rows: list[dict]) -> None:
    insert_table(con, table, HEALTH_COLUMNS, rows)


def disk_window_rows(messages: list[dict], window_s: int = W) -> tuple[list[dict], list[dict]]:
    """``disk_latency_window`` and ``disk_latency_bucket`` rows of disk_latency ``messages``, in plain Python."""
    windows: dict[tuple, dict] = {}
    buckets: dict[tuple, int] = {}
    for m in messages:
        ws = int(m["ts"] // window_s * window_s)
        key = (m["host"], m["device"], m["op"])
        row = windows.setdefault((*key, ws), {"host": m["host"], "device": m["device"], "op": m["op"], "window_start": ws,
                                              "messages": 0, "count": 0, "sum_us": 0.0, "max_us": 0.0, "sketched_count": 0,
                                              "source": None, "last_ts": -math.inf})
        row["messages"] += 1
        row["count"] += m["count"]
        row["sum_us"] += m["sum_us"]
        row["max_us"] = max(row["max_us"], m["max_us"])
        row["sketched_count"] += m["count"] if m["buckets"] else 0
        if m["ts"] >= row["last_ts"]:
            row["source"], row["last_ts"] = m.get("source"), m["ts"]
        for b, c in m["buckets"]:
            buckets[(*key, b, ws)] = buckets.get((*key, b, ws), 0) + c
    bucket_rows = [{"host": h, "device": d, "op": o, "bucket": b, "window_start": ws, "count": c}
                   for (h, d, o, b, ws), c in buckets.items()]
    return list(windows.values()), bucket_rows


def rollup(con, table: str, unit: int, below: int) -> None:
    """Fill a rollup table (hour/day) from health_window rows below ``below``, as the batch layer does."""
    agg_cols = [c for c in HEALTH_COLUMNS if c not in ("service", "window_start")]
    con.execute(
        f"INSERT INTO {table} (service, window_start, {', '.join(agg_cols)}) "
        f"SELECT service, window_start // {unit} * {unit} AS ws, {HEALTH.merge_select()} FROM health_window "
        f"WHERE window_start < {below} GROUP BY service, ws"
    )


def publish_batch(views_dir: Path, messages: list[dict], horizon: int, stale: list[dict] = (), built_at: float | None = None) -> None:
    """A fresh batch view: windows of ``messages`` below ``horizon``, hour/day rollups, view_meta; plus ``stale`` rows."""
    rows = [r for r in window_rows(messages) if r["window_start"] < horizon]

    def change(con):
        insert_rows(con, "health_window", rows)
        rollup(con, "health_hour", HOUR, horizon)
        rollup(con, "health_day", DAY, horizon)
        for table, row in stale:
            insert_rows(con, table, [row])
        con.execute(
            "INSERT INTO view_meta VALUES (?, ?, ?, ?, ?, ?)",
            [horizon, built_at if built_at is not None else float(horizon + 600), W, f"build-{horizon}", 1, len(rows)],
        )

    update_view(Path(views_dir) / BATCH_VIEW, change, fresh=True)


def publish_realtime(
    views_dir: Path, messages: list[dict], keep_from: int, extra_rows: list[dict] = (), progress: tuple | None = None
) -> None:
    """A fresh real-time view: windows of ``messages`` with start >= ``keep_from``, plus ``extra_rows``."""
    rows = [r for r in window_rows(messages) if r["window_start"] >= keep_from] + list(extra_rows)

    def change(con):
        insert_rows(con, "health_window", rows)
        if progress is not None:
            con.execute("INSERT INTO speed_progress VALUES ('health', ?, ?, ?, ?, ?)", list(progress))

    update_view(Path(views_dir) / REALTIME_VIEW, change, fresh=True)


def expected_summary(messages: list[dict], frm: float, to: float) -> dict[str, dict]:
    """Per service: count, and avg/max of each metric over messages whose window starts in [frm, to)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for msg in messages:
        ws = msg["ts"] // W * W
        if frm <= ws < to:
            groups[msg["service"]].append(msg)
    out = {}
    for service, msgs in groups.items():
        item = {"count": len(msgs)}
        for m in HEALTH_METRICS:
            values = [x[m] for x in msgs]
            item[m] = {"avg": sum(values) / len(values), "max": max(values)}
        out[service] = item
    return out


def expected_series(messages: list[dict], service: str, frm: float, to: float, step: int) -> list[dict]:
    first = math.floor(frm / step) * step
    buckets: dict[int, list[dict]] = defaultdict(list)
    for msg in messages:
        ws = msg["ts"] // W * W
        if msg["service"] == service and frm <= ws < to:
            buckets[int(ws // step * step)].append(msg)
    points = []
    start = first
    while start < to:
        msgs = buckets.get(start, [])
        point = {"ts": start, "count": len(msgs)}
        for m in HEALTH_METRICS:
            values = [x[m] for x in msgs]
            point[m] = (
                {"avg": sum(values) / len(values), "min": min(values), "max": max(values)}
                if values
                else {"avg": None, "min": None, "max": None}
            )
        points.append(point)
        start += step
    return points


def assert_summary(answer: dict, expected: dict) -> None:
    got = {s["service"]: s for s in answer["services"]}
    assert sorted(got) == sorted(expected), (sorted(got), sorted(expected))
    assert [s["service"] for s in answer["services"]] == sorted(expected)
    for service, exp in expected.items():
        assert got[service]["count"] == exp["count"], service
        for m in HEALTH_METRICS:
            assert got[service][m]["avg"] == pytest.approx(exp[m]["avg"], rel=1e-9), (service, m)
            assert got[service][m]["max"] == pytest.approx(exp[m]["max"], rel=1e-12), (service, m)


def assert_series(answer: dict, expected: list[dict]) -> None:
    points = answer["points"]
    assert [p["ts"] for p in points] == [p["ts"] for p in expected]
    for got, exp in zip(points, expected, strict=True):
        assert got["start"] == iso(exp["ts"])
        assert got["count"] == exp["count"], got["start"]
        for m in HEALTH_METRICS:
            for agg in ("avg", "min", "max"):
                if exp[m][agg] is None:
                    assert got[m][agg] is None
                else:
                    assert got[m][agg] == pytest.approx(exp[m][agg], rel=1e-9), (got["start"], m, agg)


# ---------------------------------------------------------------- fixtures


def _messages() -> list[dict]:
    msgs = make_messages(T0 - 3 * HOUR, END, seed=5)
    # 'db' is silent for four hours (empty steps, left out of summaries of that range).
    msgs = [m for m in msgs if not (m["service"] == "db" and T0 + 10 * HOUR <= m["ts"] < T0 + 14 * HOUR)]
    msgs += [
        # Exactly on the horizons, just below them, on hour/day boundaries.
        message("api", H1, 11.0), message("web", H1, 12.0), message("api", H1 - 0.001, 13.0),
        message("api", H2, 14.0), message("db", H2 - 0.5, 15.0),
        message("api", T0, 16.0), message("web", T0 + DAY, 17.0),
        # A service seen only long ago: left out of recent summaries, still known.
        message("old", T0 - 2 * HOUR + 5, 42.0), message("old", T0 - 2 * HOUR + 65, 43.0),
    ]
    return msgs


MESSAGES = _messages()


def _stale_batch(horizon: int) -> list[tuple[str, dict]]:
    """Rows at/above the horizon that the batch view may still hold: never to be read."""
    return [
        ("health_window", garbage_row("api", horizon)),
        ("health_window", garbage_row("web", horizon + 5 * W)),
        ("health_window", garbage_row("ghost", horizon + HOUR)),
        ("health_hour", garbage_row("api", horizon)),
        ("health_hour", garbage_row("db", horizon + HOUR)),
        ("health_day", garbage_row("web", (horizon // DAY + 1) * DAY)),
    ]


def _stale_realtime() -> list[dict]:
    """Real-time rows far below every horizon (not expired yet); the true rows from RT_FROM are stale too."""
    return [garbage_row("api", T0 - HOUR), garbage_row("ghost2", T0 + 3 * HOUR)]


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("merge")
    settings = load_settings({"data_dir": str(data_dir)}, environ={})
    publish_realtime(settings.views_dir, MESSAGES, RT_FROM, _stale_realtime())
    return settings


_published: dict[str, int] = {}


def _set_horizon(settings, horizon: int) -> None:
    """Publish the batch view with ``horizon`` (unless it is already the published one)."""
    if _published.get(str(settings.views_dir)) != horizon:
        publish_batch(settings.views_dir, MESSAGES, horizon, _stale_batch(horizon))
        _published[str(settings.views_dir)] = horizon


@pytest.fixture(scope="module")
def client(views):
    return create_app(views, clock=lambda: END).test_client()


RANGES = [
    ("everything", T0 - 4 * HOUR, END + HOUR),
    ("multi-hour, partial hours at both ends, across both horizons", T0 + 3 * HOUR + 1000, T0 + 27 * HOUR + 2460),
    ("whole day and hours below H", T0 - 2 * HOUR, T0 + DAY + 90 * W),
    ("below H, partial hours", T0 + 5 * HOUR + 125.5, T0 + 9 * HOUR + 7.25),
    ("inside one hour", T0 + 7 * HOUR + 600, T0 + 7 * HOUR + 1800),
    ("only the window at H1", H1, H1 + W),
    ("one window each side of H1", H1 - W, H1 + W),
    ("the minute below H1", H1 - W, H1),
    ("hours between the horizons", H1, H2),
    ("from H2 on", H2, END),
    ("unaligned, around H2", H2 - 3599.5, H2 + 61.5),
    ("db silent", T0 + 10 * HOUR, T0 + 14 * HOUR),
    ("sub-window range", T0 + 5 * HOUR + 10, T0 + 5 * HOUR + 50),
]

SERIES = [
    ("api", T0 + 3 * HOUR + 1000, T0 + 27 * HOUR + 2460, "1h"),
    ("db", T0 + 3 * HOUR + 1000, T0 + 27 * HOUR + 2460, "1h"),
    ("web", T0 - 3 * HOUR, END, "1d"),
    ("api", H1 - 7 * W - 30, H1 + 13 * W, "60s"),
    ("db", T0 + 9 * HOUR, T0 + 15 * HOUR, "5m"),
    ("api", T0 + 25 * HOUR + 17, T0 + 29 * HOUR, "5m"),
    ("web", H2 - 2 * HOUR, END, "1h"),
    ("old", T0 - 3 * HOUR, T0, "60s"),
]


def _get(client, url: str, **params) -> dict:
    resp = client.get(url, query_string=params)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def assert_same(a, b, path="answer") -> None:
    """Equal answers: same structure, same ints and strings, floats equal to rounding."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-12), path
    else:
        assert a == b and type(a) is type(b), path


def _answers(client) -> list[dict]:
    out = []
    for _, frm, to in RANGES:
        out.append(_get(client, "/api/v1/summary", **{"from": frm, "to": to}))
    for service, frm, to, step in SERIES:
        out.append(_get(client, f"/api/v1/services/{service}/series", **{"from": frm, "to": to, "step": step}))
    out.append(_get(client, "/api/v1/services"))
    for answer in out:
        answer.pop("horizon", None)
    return out


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("name,frm,to", RANGES, ids=[r[0] for r in RANGES])
@pytest.mark.parametrize("horizon", [H1, H2], ids=["H1", "H2"])
def test_summary_equals_plain_python(views, client, horizon, name, frm, to):
    _set_horizon(views, horizon)
    answer = _get(client, "/api/v1/summary", **{"from": frm, "to": to})
    assert_summary(answer, expected_summary(MESSAGES, frm, to))


@pytest.mark.parametrize("service,frm,to,step", SERIES)
@pytest.mark.parametrize("horizon", [H1, H2], ids=["H1", "H2"])
def test_series_equals_plain_python(views, client, horizon, service, frm, to, step):
    _set_horizon(views, horizon)
    answer = _get(client, f"/api/v1/services/{service}/series", **{"from": frm, "to": to, "step": step})
    assert answer["step"] == step
    assert_series(answer, expected_series(MESSAGES, service, frm, to, answer["step_s"]))


def test_windows_at_the_horizon_counted_once(views, client):
    _set_horizon(views, H1)
    at_h1 = [m for m in MESSAGES if H1 <= m["ts"] < H1 + W]
    answer = _get(client, "/api/v1/summary", **{"from": H1, "to": H1 + W})
    assert sum(s["count"] for s in answer["services"]) == len(at_h1)
    below = [m for m in MESSAGES if H1 - W <= m["ts"] < H1]
    answer = _get(client, "/api/v1/summary", **{"from": H1 - W, "to": H1})
    assert sum(s["count"] for s in answer["services"]) == len(below)


def test_services_all_time_counts(views, client):
    for horizon in (H1, H2):
        _set_horizon(views, horizon)
        answer = _get(client, "/api/v1/services")
        counts = defaultdict(int)
        last = defaultdict(float)
        for m in MESSAGES:
            counts[m["service"]] += 1
            last[m["service"]] = max(last[m["service"]], m["ts"])
        assert [s["service"] for s in answer["services"]] == sorted(counts)
        for s in answer["services"]:
            assert s["count"] == counts[s["service"]]
            assert s["last_seen_ts"] == last[s["service"]]
            assert s["last_seen"] == iso(last[s["service"]])


def test_moving_the_horizon_changes_nothing(views, client):
    _set_horizon(views, H1)
    before = _answers(client)
    _set_horizon(views, H2)  # real-time rows in [H1, H2) are not expired: they must now be ignored
    assert_same(_answers(client), before)
    # And once the real-time rows below H2 are expired, still the same.
    publish_realtime(views.views_dir, MESSAGES, H2)
    assert_same(_answers(client), before)
    publish_realtime(views.views_dir, MESSAGES, RT_FROM, _stale_realtime())


def test_no_batch_yet_reads_only_realtime(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    publish_realtime(settings.views_dir, MESSAGES, 0)
    client = create_app(settings, clock=lambda: END).test_client()
    for _, frm, to in RANGES:
        assert_summary(_get(client, "/api/v1/summary", **{"from": frm, "to": to}), expected_summary(MESSAGES, frm, to))


def test_rollup_paths_are_taken():
    """The multi-hour ranges above really go through the hour and day rollups (and only below the horizon)."""
    segs = queries.plan(T0 + 3 * HOUR + 1000, T0 + 27 * HOUR + 2460, H1)
    tables = [s[0] for s in segs]
    assert tables == [queries.B_WINDOW, queries.B_HOUR, queries.RT_WINDOW]
    segs = queries.plan(T0 + 5 * HOUR + 126, T0 + 9 * HOUR + 8, H1)
    assert segs == [(queries.B_WINDOW, T0 + 5 * HOUR + 126, T0 + 6 * HOUR), (queries.B_HOUR, T0 + 6 * HOUR, T0 + 9 * HOUR),
                    (queries.B_WINDOW, T0 + 9 * HOUR, T0 + 9 * HOUR + 8)]
    segs = queries.plan(T0 - 2 * HOUR, T0 + DAY + 90 * W, H1)
    assert [s[0] for s in segs] == [queries.B_HOUR, queries.B_DAY, queries.B_HOUR, queries.B_WINDOW]
    # A series with a step finer than an hour reads minute windows only.
    assert {s[0] for s in queries.plan(T0, H1 + HOUR, H1, step=300)} == {queries.B_WINDOW, queries.RT_WINDOW}


@pytest.mark.parametrize("seed", range(20))
def test_plan_partitions_the_range_exactly(seed):
    rng = random.Random(seed)
    horizon = rng.choice([0, T0 + rng.randrange(0, 60) * HOUR])
    lo = T0 - DAY + rng.randrange(0, 4 * DAY // W) * W + rng.choice([0, 0, 17])
    hi = lo + rng.randrange(1, 4 * DAY)
    step = rng.choice([None, 60, 300, 3600, 86400])
    segs = queries.plan(lo, hi, horizon, step)
    # Contiguous, disjoint, covering [lo, hi).
    assert segs[0][1] == lo and segs[-1][2] == hi
    for (_, _, a_hi), (_, b_lo, _) in zip(segs, segs[1:], strict=False):
        assert a_hi == b_lo
    for table, s_lo, s_hi in segs:
        assert s_lo < s_hi
        if table.startswith("b."):
            assert s_hi <= horizon
        else:
            assert s_lo >= horizon
        unit = {queries.B_HOUR: HOUR, queries.B_DAY: DAY}.get(table)
        if unit:
            assert s_lo % unit == 0 and s_hi % unit == 0
            assert step is None or step % unit == 0
