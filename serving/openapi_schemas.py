"""JSON Schemas of the API's answers: the ``components/schemas`` of the OpenAPI description.

One schema per answer (``serving.openapi`` names them per path) plus the
pieces they share.  Objects whose fields are all known are closed
(``additionalProperties: false``) and list every field as required, so the
schemathesis test notices an answer that grew or lost a field without its
documentation; free-form parts (build records, state files, rule kind fields)
stay open.  A field that can be JSON ``null`` says so in its type.
"""

from __future__ import annotations

from healthmon.schema import DISK_OPS, HEALTH_METRICS
from serving.params import STEPS

TIME_DOC = "ISO-8601 UTC with 'Z' (whole seconds, or milliseconds)"
TS_DOC = "the same time in epoch seconds"
LIVENESS_STATUSES = ("up", "stale", "missing")
ALERT_STATES = ("pending", "firing", "resolved")
DISK_STATUSES = ("ok", "warn", "degraded")
TIERS = ("window", "hour", "day")
ERROR_CODES = ("bad_parameter", "bad_request", "not_found", "method_not_allowed", "internal_error", "unavailable")


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict) -> dict:
    """``schema`` or JSON null."""
    if "type" in schema and "$ref" not in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        out = {**schema, "type": [*types, "null"]}
        if "enum" in schema:
            out["enum"] = [*schema["enum"], None]
        return out
    return {"anyOf": [schema, {"type": "null"}]}


def closed(properties: dict, description: str | None = None, optional: tuple[str, ...] = ()) -> dict:
    """An object with exactly ``properties``, all required except ``optional``."""
    out = {
        "type": "object",
        "properties": properties,
        "required": [p for p in properties if p not in optional],
        "additionalProperties": False,
    }
    if description:
        out["description"] = description
    return out


def time(description: str = TIME_DOC) -> dict:
    return {"type": "string", "format": "date-time", "description": description}


def epoch(description: str = "epoch seconds") -> dict:
    return {"type": "number", "description": description}


def number(description: str) -> dict:
    return {"type": "number", "description": description}


def count(description: str) -> dict:
    return {"type": "integer", "minimum": 0, "description": description}


def text(description: str, **extra) -> dict:
    return {"type": "string", "description": description, **extra}


def enum(values, description: str) -> dict:
    return {"type": "string", "enum": list(values), "description": description}


def array(items: dict, description: str) -> dict:
    return {"type": "array", "items": items, "description": description}


def free_object(description: str) -> dict:
    return {"type": "object", "description": description, "additionalProperties": True}


def metrics_of(schema_name: str) -> dict:
    """One property per health metric, each of ``schema_name``."""
    return {m: ref(schema_name) for m in HEALTH_METRICS}


def range_properties() -> dict:
    """The range part of an answer (see ``serving.app.range_fields``)."""
    return {
        "from": time("start of the range (inclusive)"),
        "to": time("end of the range (exclusive)"),
        "from_ts": epoch("start of the range, epoch seconds"),
        "to_ts": epoch("end of the range, epoch seconds"),
        "horizon": nullable(time("the batch view's horizon: windows before it come from the batch view, the rest from the "
                                 "real-time view; null before the first batch build")),
    }


def tier_properties() -> dict:
    """Which retention tier the range reaches and the range actually counted (``serving.app.tier_fields``)."""
    return {
        "tier": enum(TIERS, "the finest tier retention has left for the start of the range"),
        "effective_from": time("start of the range counted: from, rounded down to an hour (a day) where minute windows "
                               "(hour rollups) are gone"),
        "effective_to": time("end of the range counted"),
        "effective_from_ts": epoch(TS_DOC),
        "effective_to_ts": epoch(TS_DOC),
    }


def step_properties() -> dict:
    return {
        "step": enum(STEPS, "the step used: the asked one (raised to 1h or 1d where finer tiers are gone), or the "
                            "smallest that gives at most 500 points"),
        "step_s": {"type": "integer", "enum": sorted(STEPS.values()), "description": "the step in seconds"},
        "step_requested": nullable(enum(STEPS, "the step asked for; null when defaulted")),
    }


def liveness_properties() -> dict:
    """Fields every liveness entry (service or host) has."""
    return {
        "last_seen": time("time of the newest message"),
        "last_seen_ts": epoch(TS_DOC),
        "status": enum(LIVENESS_STATUSES, "up; stale: silent for longer than its expected interval allows; "
                                          "missing: silent past liveness_missing_s"),
        "silent_s": number("seconds since the newest message"),
        "expected_interval_s": nullable(number("the sending interval learnt from its own history; null while unknown")),
        "stale_after_s": nullable(number("silence after which the status is stale; null without a learnt interval (never stale)")),
        "missing_after_s": number("silence after which the status is missing"),
    }


def schemas() -> dict[str, dict]:
    """Every component schema, by name."""
    return {
        "Error": closed(
            {"error": closed({"code": text(f"machine-readable: {', '.join(ERROR_CODES)} (see each error answer)",
                                           examples=["bad_parameter"]),
                              "message": text("what was wrong, for a human", examples=["step='7m': must be one of 60s, 5m, 1h, 1d"])})},
            "The one error shape of the API (serving/errors.py).",
        ),
        "Healthz": closed(
            {"status": {"type": "string", "const": "ok"},
             "views": closed({"batch": {"type": "boolean", "description": "the batch view file exists"},
                              "realtime": {"type": "boolean", "description": "the real-time view file exists"}})},
            "The API process answers; which view files exist.",
        ),
        "OpenApiDocument": {
            "type": "object", "required": ["openapi", "info", "paths"], "additionalProperties": True,
            "properties": {"openapi": {"type": "string"}, "info": {"type": "object"}, "paths": {"type": "object"}},
            "description": "This OpenAPI 3.1 description.",
        },
        "AvgMax": closed({"avg": nullable(number("mean")), "max": nullable(number("maximum"))}, "A metric over a range."),
        "AvgMinMax": closed(
            {"avg": nullable(number("mean; null in an empty bucket")), "min": nullable(number("minimum")),
             "max": nullable(number("maximum"))},
            "A metric over one bucket.",
        ),
        "CurrentValues": closed(
            {m: nullable(number(f"last {m} received; null if none")) for m in HEALTH_METRICS},
            "The last value of each health metric.",
        ),
        "Services": closed(
            {
                "now": time("the server's now"),
                "now_ts": epoch(TS_DOC),
                "services": array(closed({
                    "service": text("service name"),
                    "count": count("messages ever received (merged views)"),
                    **liveness_properties(),
                    "current": ref("CurrentValues"),
                }), "every service ever seen, sorted by name"),
            },
            "Every service with its liveness status and current values.",
        ),
        "Hosts": closed(
            {
                "now": time("the server's now"),
                "now_ts": epoch(TS_DOC),
                "hosts": array(closed({
                    "host": text("host name"),
                    **liveness_properties(),
                    "devices": array(text("device name"), "the host's drives"),
                }), "every host that sent drive latency, sorted by name"),
            },
            "Every host (sender of disk_latency messages) with its liveness status.",
        ),
        "Summary": closed(
            {
                **range_properties(),
                **tier_properties(),
                "services": array(closed({
                    "service": text("service name"),
                    "count": count("messages in the range"),
                    "last_seen": time("time of the newest message in the range"),
                    **metrics_of("AvgMax"),
                }), "services with a message in the range, sorted by name"),
            },
            "Per service: message count and each metric's mean and maximum over the range.",
        ),
        "Series": closed(
            {
                "service": text("service name"),
                **step_properties(),
                **range_properties(),
                **tier_properties(),
                "points": array(closed({
                    "start": time("start of the bucket"),
                    "ts": {"type": "integer", "description": "start of the bucket, epoch seconds"},
                    "count": count("messages in the bucket; 0 for an empty bucket (its metrics are null)"),
                    **metrics_of("AvgMinMax"),
                }), "one point per bucket of the step, from the bucket holding from to the one holding to"),
            },
            "One service's metrics per bucket of a step.",
        ),
        "Pipeline": closed(
            {
                "now": time("the server's now"),
                "horizon": nullable(time("the batch view's horizon; null before the first build")),
                "horizon_ts": nullable(epoch(TS_DOC)),
                "batch": closed({
                    "last_builds": array(free_object("a batch build record (build_id, status, horizon, duration_s...)"),
                                         "newest first, at most 10"),
                    "built_at": nullable(time("when the batch view was built")),
                    "built_at_ts": nullable(epoch(TS_DOC)),
                    "meta": nullable(free_object("the batch view's view_meta row")),
                    "view_rows": ref("ViewRows"),
                }),
                "speed": closed({
                    "batch_id": nullable({"type": "integer", "description": "last committed micro-batch"}),
                    "committed_at": nullable(time("when it was committed")),
                    "committed_at_ts": nullable(epoch(TS_DOC)),
                    "input_rows": nullable(count("rows of that micro-batch")),
                    "max_event_ts": nullable(epoch("newest event time seen, epoch seconds")),
                    "max_event": nullable(time("newest event time seen")),
                    "horizon_ts": nullable(epoch("batch horizon the speed layer last saw")),
                    "lag_s": nullable(number("now - committed_at")),
                    "view_rows": ref("ViewRows"),
                    "state": free_object("state/speed.json, when present"),
                }, optional=("state",)),
                "collectors": {"type": "object", "additionalProperties": free_object("a collector's counters"),
                               "description": "counters of each collector (state/collector-*.json), by name"},
            },
            "Status of the batch and speed layers and the collectors.",
        ),
        "ViewRows": {"type": "object", "additionalProperties": count("rows"), "description": "row count per table of a view"},
        "Disks": closed(
            {"disks": array(closed({
                "host": text("host name"),
                "device": text("device name"),
                "ops": array(enum(DISK_OPS, "op"), "ops seen"),
                "count": count("I/Os ever measured"),
                "source": nullable(text("how the newest interval was measured (bcc, diskstats, mock...)")),
                "last_seen": time("time of the newest interval"),
                "last_seen_ts": epoch(TS_DOC),
            }), "every (host, device) ever seen, sorted")},
            "Every drive ever seen.",
        ),
        "DiskHealth": closed(
            {
                "now": time("the server's now"),
                "recent_from": time("start of the recent period judged"),
                "baseline_from": time("start of the device's baseline period"),
                "warn_ratio": number("ratio at which a device is warn"),
                "degraded_ratio": number("ratio at which a device is degraded"),
                "devices": array(closed({
                    "host": text("host name"),
                    "device": text("device name"),
                    "op": enum(DISK_OPS, "op"),
                    "status": enum(DISK_STATUSES, "verdict"),
                    "score": number("the larger of the two ratios (0 when neither is known)"),
                    "reason": text("the verdict in words"),
                    "recent_p99_us": number("p99 latency of the recent period, microseconds"),
                    "baseline_p99_us": nullable(number("p99 of the device's own baseline; null without one")),
                    "fleet_p99_us": nullable(number("median recent p99 of the other devices; null without peers")),
                }), "one verdict per device and op seen in the recent period"),
            },
            "Each drive's recent p99 latency judged against its own baseline and the fleet.",
        ),
        "DiskLatency": closed(
            {
                "host": text("host name"),
                "device": text("device name"),
                "op": enum((*DISK_OPS, "all"), "the op asked for, or all"),
                **step_properties(),
                **range_properties(),
                **tier_properties(),
                "points": array(closed({
                    "start": time("start of the bucket"),
                    "ts": {"type": "integer", "description": "start of the bucket, epoch seconds"},
                    "count": count("I/Os in the bucket"),
                    "sketched_count": count("the part of count with latency buckets (not mean-only)"),
                    "mean_us": nullable(number("mean latency, microseconds")),
                    "max_us": nullable(number("maximum latency, microseconds")),
                    "p50_us": nullable(number("median latency, microseconds (from the sketch)")),
                    "p95_us": nullable(number("p95 latency, microseconds")),
                    "p99_us": nullable(number("p99 latency, microseconds")),
                }), "one point per bucket of the step"),
            },
            "One drive's latency per bucket of a step.",
        ),
        "Alerts": closed(
            {
                "now": time("the server's now"),
                "now_ts": epoch(TS_DOC),
                "alerts": array(ref("Alert"), "firing first, then pending, then resolved; newest first within"),
            },
            "Active (and with state=all, recently resolved) alerts.",
        ),
        "Alert": closed(
            {
                "id": {"type": ["integer", "string"], "description": "the alert's id"},
                "rule": text("name of the rule that raised it"),
                "subject": text("what it is about (a service, host/device...)"),
                "severity": text("the rule's severity"),
                "state": enum(ALERT_STATES, "pending -> firing -> resolved"),
                "labels": {"type": "object", "additionalProperties": {"type": "string"}, "description": "the rule's labels"},
                "summary": text("the alert in words"),
                "value": nullable(number("the value that was last judged")),
                "threshold": nullable(number("the rule's threshold")),
                "started_at": time("when the condition first held"),
                "started_at_ts": epoch(TS_DOC),
                "fired_at": nullable(time("when it fired; null while pending")),
                "fired_at_ts": nullable(epoch(TS_DOC)),
                "resolved_at": nullable(time("when it resolved; null while active")),
                "resolved_at_ts": nullable(epoch(TS_DOC)),
                "transitions": array(closed({
                    "state": enum(ALERT_STATES, "the state entered"),
                    "at": time("when"),
                    "at_ts": epoch(TS_DOC),
                    "value": nullable(number("the value then")),
                }), "every state change, oldest first"),
            },
            "One alert and its history.",
        ),
        "Rules": closed(
            {
                "file": text("the rules file in use"),
                "rules": array({
                    "type": "object", "required": ["name", "kind", "severity", "for_s", "labels", "summary"],
                    "additionalProperties": True,
                    "properties": {
                        "name": text("rule name"),
                        "kind": text("what it watches (threshold on a metric, drive degraded, service missing...)"),
                        "severity": text("severity of its alerts"),
                        "for_s": number("how long the condition must hold before the alert fires"),
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "summary": text("template of the alerts' summary"),
                    },
                    "description": "a rule; the other fields depend on its kind",
                }, "the rules, in file order"),
                "receivers": array(closed({"name": text("receiver name"), "url": text("webhook URL")}),
                                   "webhooks every transition is sent to"),
            },
            "The alert rules in use and the webhook receivers.",
        ),
    }
