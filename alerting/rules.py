"""Alert rules: the YAML file, its validation, and reloading it when it changes.

The file (``settings.alert_rules_path``; the bundled ``healthmon/alert_rules.yaml``
unless ``alert_rules_file`` names another) holds ``receivers`` (webhooks) and
``rules``::

    receivers:
      - {name: ops, url: "http://127.0.0.1:9000/hook"}
    rules:
      - name: HighCpu                # unique; [A-Za-z0-9_.:-]
        kind: metric                 # metric | liveness | drive
        metric: cpu_pct              # cpu_pct | ram_used_pct | disk_used_pct | disk_free_pct
        op: ">"                      # > >= < <=
        threshold: 90                # a percentage, 0..100
        over: 2m                     # trailing averaging period (default 2 * window_s, at least window_s)
        for: 5m                      # how long the condition must hold before firing (default 0s)
        severity: warning            # info | warning | critical (default warning)
        labels: {team: infra}        # added to the alert's labels
        summary: "{service}: CPU {value:.1f}% > {threshold:g}%"
        services: "web-*"            # glob over service names (default "*")

``liveness`` rules take ``target`` (``services`` or ``hosts``, default
``services``), ``status`` (``stale`` or ``missing``) and a ``services`` or
``hosts`` glob; ``drive`` rules take ``status`` (``warn`` or ``degraded``,
default ``degraded``) and a ``hosts`` glob.  A status rule holds for its status
*or a worse one* (``stale`` also holds for a ``missing`` service), so an alert
never resolves because things got worse.

Durations are ``30s``, ``5m``, ``1h``, ``1d``, combinations like ``1h30m``, or a
plain number of seconds.  A summary is a ``str.format`` template over the
fields of its kind (``TEMPLATE_FIELDS``); a field that the kind does not have
is an error at load.

``load_rules`` checks everything and raises ``RulesError`` whose message names
the file, the rule (index and name) and the field.  ``RulesWatcher`` reloads
the file when it changes (modification time, size or inode); a bad edit keeps
the previous rules and logs the error, so a running scheduler never runs
without rules.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

from healthmon.config import Settings

log = logging.getLogger(__name__)

KINDS = ("metric", "liveness", "drive")
METRICS = ("cpu_pct", "ram_used_pct", "disk_used_pct", "disk_free_pct")
OPS = (">", ">=", "<", "<=")
SEVERITIES = ("info", "warning", "critical")
LIVENESS_TARGETS = ("services", "hosts")
LIVENESS_STATUSES = ("stale", "missing")  # serving.liveness orders them up < stale < missing
DRIVE_STATUSES = ("warn", "degraded")  # serving.disk_health orders them ok < warn < degraded
RESERVED_LABELS = ("alertname", "severity", "service", "host", "device", "op")
"""Labels that healthmon sets itself; a rule's ``labels`` may not override them."""

RULE_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}\Z")
LABEL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_DURATION_RE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+\Z")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

_COMMON_FIELDS = ("name", "kind", "for", "severity", "labels", "summary")
KIND_FIELDS = {
    "metric": ("metric", "op", "threshold", "over", "services"),
    "liveness": ("target", "status", "services", "hosts"),
    "drive": ("status", "hosts"),
}
"""The fields a rule of each kind may have besides the common ones."""

_COMMON_TEMPLATE = ("rule", "subject", "severity", "value", "threshold")
TEMPLATE_FIELDS = {
    "metric": (*_COMMON_TEMPLATE, "service", "metric", "op"),
    "liveness:services": (*_COMMON_TEMPLATE, "service", "status", "expected_interval_s"),
    "liveness:hosts": (*_COMMON_TEMPLATE, "host", "status", "expected_interval_s"),
    "drive": (*_COMMON_TEMPLATE, "host", "device", "op", "status", "reason"),
}
"""The fields a summary template may use, by kind (``value`` and ``threshold`` are numbers, the rest text)."""

DEFAULT_SUMMARIES = {
    "metric": "{service}: {metric} {value:.1f} {op} {threshold:g}",
    "liveness:services": "service {service} is {status} (silent for {value:.0f} s)",
    "liveness:hosts": "host {host} is {status} (silent for {value:.0f} s)",
    "drive": "{host}/{device}: {reason}",
}
"""The summary of a rule that gives none."""

NUMERIC_TEMPLATE_FIELDS = ("value", "threshold", "expected_interval_s")


class RulesError(ValueError):
    """The rules file cannot be used; the message names the file, the rule and the field."""


@dataclass(frozen=True)
class Receiver:
    """A webhook: every alert transition is POSTed to ``url``."""

    name: str
    url: str

    @property
    def public_url(self) -> str:
        """The URL with any password replaced by ``***`` (for the API and logs)."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Rule:
    """One alert rule, checked; ``for_s``/``over_s`` in seconds; unused kind fields are None."""

    name: str
    kind: str
    severity: str
    for_s: float
    labels: dict[str, str]
    summary: str
    metric: str | None = None
    op: str | None = None
    threshold: float | None = None
    over_s: float | None = None
    target: str | None = None
    status: str | None = None
    services: str | None = None
    hosts: str | None = None

    def matches(self, name: str, glob: str | None) -> bool:
        return fnmatch.fnmatchcase(name, glob or "*")

    def as_dict(self) -> dict:
        """The rule as ``GET /api/v1/rules`` shows it: common fields plus those of its kind."""
        out = {"name": self.name, "kind": self.kind, "severity": self.severity, "for_s": self.for_s,
               "labels": dict(self.labels), "summary": self.summary}
        if self.kind == "metric":
            out.update(metric=self.metric, op=self.op, threshold=self.threshold, over_s=self.over_s, services=self.services)
        elif self.kind == "liveness":
            out.update(target=self.target, status=self.status)
            out[self.target] = getattr(self, self.target)
        else:
            out.update(status=self.status, hosts=self.hosts)
        return out


@dataclass(frozen=True)
class RuleSet:
    """The checked content of one rules file."""

    path: Path
    rules: tuple[Rule, ...]
    receivers: tuple[Receiver, ...]
    signature: tuple | None = field(default=None, compare=False)  # (inode, mtime_ns, size) of the file read

    def as_dict(self) -> dict:
        return {
            "file": str(self.path),
            "rules": [r.as_dict() for r in self.rules],
            "receivers": [{"name": r.name, "url": r.public_url} for r in self.receivers],
        }


def parse_duration(raw) -> float:
    """Seconds from ``30s``/``5m``/``1h``/``1d``/``1h30m``/``250ms`` or a number; ValueError otherwise."""
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not a duration")
    if isinstance(raw, int | float):
        seconds = float(raw)
    elif isinstance(raw, str) and _DURATION_RE.match(raw.strip()):
        seconds = sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION_PART_RE.findall(raw.strip()))
    else:
        raise ValueError(f"{raw!r} is not a duration (like 30s, 5m, 1h, 1d, 1h30m or seconds)")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{raw!r} must be a finite duration >= 0")
    return seconds


class _Where:
    """Builds error messages that name the file, the item and the field."""

    def __init__(self, path: Path, item: str) -> None:
        self.path = path
        self.item = item

    def error(self, field_name: str | None, problem: str) -> RulesError:
        where = f"{self.item}: {field_name}" if field_name else self.item
        return RulesError(f"alert rules {self.path}: {where}: {problem}")


def _choice(where: _Where, spec: dict, name: str, choices: tuple[str, ...], default: str | None = None) -> str:
    value = spec.get(name, default)
    if value is None:
        raise where.error(name, f"required (one of {', '.join(choices)})")
    if value not in choices:
        raise where.error(name, f"{value!r} is not one of {', '.join(choices)}")
    return value


def _glob(where: _Where, spec: dict, name: str) -> str:
    value = spec.get(name, "*")
    if not isinstance(value, str) or not value:
        raise where.error(name, f"{value!r} is not a glob pattern (like \"*\" or \"web-*\")")
    return value


def _template(where: _Where, raw, kind: str) -> str:
    template = DEFAULT_SUMMARIES[kind] if raw is None else raw
    if not isinstance(template, str):
        raise where.error("summary", f"{template!r} is not text")
    allowed = TEMPLATE_FIELDS[kind]
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise where.error("summary", f"bad template: {exc}") from None
    for name in names:
        if name not in allowed:
            raise where.error("summary", f"unknown field {{{name}}} (this kind has: {', '.join(allowed)})")
    try:
        render(template, {n: (1.0 if n in NUMERIC_TEMPLATE_FIELDS else "x") for n in allowed})
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise where.error("summary", f"bad template: {exc}") from None
    return template


def render(template: str, fields: dict) -> str:
    """A summary from its template; ``None`` numbers show as ``nan``."""
    values = {k: (math.nan if v is None and k in NUMERIC_TEMPLATE_FIELDS else v) for k, v in fields.items()}
    return template.format_map(values)


def _rule(where: _Where, spec, settings: Settings) -> Rule:
    if not isinstance(spec, dict):
        raise where.error(None, "a rule is a mapping (name: ..., kind: ...)")
    name = spec.get("name")
    if not isinstance(name, str) or not RULE_NAME_RE.match(name):
        raise where.error("name", f"{name!r} is not a rule name ([A-Za-z0-9_.:-], 1-128 characters)")
    where.item += f" ({name})"
    kind = _choice(where, spec, "kind", KINDS)
    known = (*_COMMON_FIELDS, *KIND_FIELDS[kind])
    for key in spec:
        if key not in known:
            raise where.error(str(key), f"unknown field for a {kind} rule (known: {', '.join(known)})")
    try:
        for_s = parse_duration(spec.get("for", 0))
    except ValueError as exc:
        raise where.error("for", str(exc)) from None
    severity = _choice(where, spec, "severity", SEVERITIES, "warning")
    labels = spec.get("labels") or {}
    if not isinstance(labels, dict):
        raise where.error("labels", "a mapping of label names to text")
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_NAME_RE.match(key):
            raise where.error(f"labels.{key}", "not a label name ([A-Za-z_][A-Za-z0-9_]*)")
        if key in RESERVED_LABELS:
            raise where.error(f"labels.{key}", f"set by healthmon itself (reserved: {', '.join(RESERVED_LABELS)})")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise where.error(f"labels.{key}", f"{value!r} is not text")
    labels = {k: str(v) for k, v in labels.items()}
    fields: dict = {}
    if kind == "metric":
        fields["metric"] = _choice(where, spec, "metric", METRICS)
        fields["op"] = _choice(where, spec, "op", OPS)
        threshold = spec.get("threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise where.error("threshold", f"{threshold!r}: required, a number (a percentage)")
        if not 0 <= threshold <= 100:
            raise where.error("threshold", f"{threshold!r} is not a percentage (0..100)")
        fields["threshold"] = float(threshold)
        try:
            over_s = parse_duration(spec.get("over", 2 * settings.window_s))
        except ValueError as exc:
            raise where.error("over", str(exc)) from None
        if over_s < settings.window_s:
            raise where.error("over", f"{over_s:g} s is shorter than one window (window_s={settings.window_s})")
        fields["over_s"] = over_s
        fields["services"] = _glob(where, spec, "services")
    elif kind == "liveness":
        target = fields["target"] = _choice(where, spec, "target", LIVENESS_TARGETS, "services")
        other = "hosts" if target == "services" else "services"
        if other in spec:
            raise where.error(other, f"a liveness rule with target {target} selects with '{target}', not '{other}'")
        fields["status"] = _choice(where, spec, "status", LIVENESS_STATUSES)
        fields[target] = _glob(where, spec, target)
    else:
        fields["status"] = _choice(where, spec, "status", DRIVE_STATUSES, "degraded")
        fields["hosts"] = _glob(where, spec, "hosts")
    template_kind = f"liveness:{fields['target']}" if kind == "liveness" else kind
    summary = _template(where, spec.get("summary"), template_kind)
    return Rule(name=name, kind=kind, severity=severity, for_s=for_s, labels=labels, summary=summary, **fields)


def _receiver(where: _Where, spec) -> Receiver:
    if not isinstance(spec, dict):
        raise where.error(None, "a receiver is a mapping (name: ..., url: ...)")
    for key in spec:
        if key not in ("name", "url"):
            raise where.error(str(key), "unknown field for a receiver (known: name, url)")
    name = spec.get("name")
    if not isinstance(name, str) or not RULE_NAME_RE.match(name):
        raise where.error("name", f"{name!r} is not a receiver name ([A-Za-z0-9_.:-], 1-128 characters)")
    where.item += f" ({name})"
    url = spec.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise where.error("url", f"{url!r} is not an http:// or https:// URL")
    return Receiver(name=name, url=url)


def parse_rules(text: str, path: Path, settings: Settings) -> RuleSet:
    """The checked rules of a file's text; ``RulesError`` naming the file, item and field."""
    path = Path(path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(f"alert rules {path}: not valid YAML: {exc}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise RulesError(f"alert rules {path}: the file must be a mapping with 'rules' (and 'receivers')")
    for key in doc:
        if key not in ("rules", "receivers"):
            raise RulesError(f"alert rules {path}: {key}: unknown top-level field (known: rules, receivers)")
    raw_rules = doc.get("rules") or []
    raw_receivers = doc.get("receivers") or []
    if not isinstance(raw_rules, list):
        raise RulesError(f"alert rules {path}: rules: must be a list")
    if not isinstance(raw_receivers, list):
        raise RulesError(f"alert rules {path}: receivers: must be a list")
    rules = [_rule(_Where(path, f"rules[{i}]"), spec, settings) for i, spec in enumerate(raw_rules)]
    receivers = [_receiver(_Where(path, f"receivers[{i}]"), spec) for i, spec in enumerate(raw_receivers)]
    for items, what in ((rules, "rules"), (receivers, "receivers")):
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.name in seen:
                raise RulesError(f"alert rules {path}: {what}[{i}] ({item.name}): name: used twice")
            seen.add(item.name)
    return RuleSet(path=path, rules=tuple(rules), receivers=tuple(receivers))


def load_rules(path: Path, settings: Settings) -> RuleSet:
    """Read and check a rules file; ``RulesError`` (naming the file) when it is missing or bad."""
    path = Path(path)
    try:
        signature = file_signature(path)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"alert rules {path}: cannot read: {exc}") from None
    ruleset = parse_rules(text, path, settings)
    return RuleSet(path=ruleset.path, rules=ruleset.rules, receivers=ruleset.receivers, signature=signature)


def file_signature(path: Path) -> tuple[int, int, int]:
    """(inode, mtime_ns, size): changes when the file is edited in place or replaced."""
    st = Path(path).stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


class RulesWatcher:
    """The rules in force: loaded at construction (``RulesError`` if bad), reloaded when the file changes.

    "Changes" means its modification time, size or inode (an editor that
    replaces the file) differ from the version last read.  A file caught
    while it is being rewritten in place is not taken: an empty file (just
    truncated; write ``rules: []`` for no rules) and a file that changed while
    it was read are looked at again at the next call.  Replacing the file
    (write a new one, then rename it over) avoids both.

    A reload that fails keeps the previous rules; the error is logged once per
    change of the file and kept in ``error`` until a good version is loaded.
    """

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = Path(path)
        self.settings = settings
        self.ruleset = load_rules(self.path, settings)
        self.error: str | None = None
        self._seen = self.ruleset.signature

    def current(self) -> RuleSet:
        """The rules in force, after reloading the file if it changed."""
        try:
            signature = file_signature(self.path)
        except OSError:
            signature = None
        if signature == self._seen or (signature is not None and signature[2] == 0):
            return self.ruleset
        try:
            ruleset = load_rules(self.path, self.settings)
        except RulesError as exc:
            self._seen = signature
            self.error = str(exc)
            log.error("%s (keeping the previous rules)", exc)
            return self.ruleset
        try:
            if file_signature(self.path) != ruleset.signature:
                return self.ruleset  # it changed while it was read: read it again next time
        except OSError:
            return self.ruleset
        self._seen = ruleset.signature
        self.ruleset = ruleset
        self.error = None
        log.info("alert rules reloaded from %s: %d rules, %d receivers", self.path, len(ruleset.rules), len(ruleset.receivers))
        return ruleset
