"""docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine.

1. The compose file validates against the Compose Specification's JSON schema
   (vendored in tests/data/, provenance in tests/data/README.md).
2. Its wiring holds: every part of the pipeline is there; the collector publishes
   UDP 3500 and serving 5555, on ports and addresses their settings really use;
   every ``HEALTHMON_*`` name in the file is a setting that healthmon/config.py
   reads, and each healthmon container's environment loads as valid Settings;
   every address (landing, WebHDFS, Spark master, the mock's target) names a
   service of the file; each healthmon command parses with the real CLI; every
   ``depends_on`` target exists and those waited on as ``service_healthy`` have
   a health check; the views volume is shared by speed, scheduler and serving;
   the HDFS name and data directories live on volumes; the Spark image is the
   pyspark version; the Dockerfile builds a non-root image whose entrypoint is
   ``healthmon``.
3. The checker is itself tested: each check is shown to catch a broken copy.
4. The health-check commands are run here against stand-ins (state files, a
   small HTTP server), so a typo in them fails a test rather than a deployment.
"""

from __future__ import annotations

import copy
import fnmatch
import http.server
import importlib.metadata
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from healthmon.cli import build_parser
from healthmon.config import ConfigError, load_settings, settings_table
from healthmon.state import write_state
from tests.procs import healthmon_env

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"

PIPELINE = ("namenode", "datanode", "spark-master", "spark-worker", "collector", "speed", "scheduler", "serving", "mock")
PARTS = {"collector": "collect", "speed": "speed", "scheduler": "schedule", "serving": "serve", "mock": "mock"}
VIEW_SHARERS = ("speed", "scheduler", "serving")
# Long-running services that need no health check, and why.
NO_HEALTHCHECK = {"mock": "a load generator with no listener and no state"}
MUST_IGNORE = (".venv", "var", ".git", ".hadoop", "**/__pycache__")
SETTING_ENV = {row[1] for row in settings_table()}


# ---------------------------------------------------------------- reading compose


def as_dict(value) -> dict:
    """A compose list-or-dict (environment, depends_on) as a dict."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    out = {}
    for item in value:
        key, _, val = str(item).partition("=")
        out[key] = val
    return out


def env_of(service: dict) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in as_dict(service.get("environment")).items()}


def published(service: dict) -> set[tuple[int, str]]:
    """(container port, protocol) of every published port, short or long syntax."""
    out = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published") not in (None, ""):
                out.add((int(port["target"]), str(port.get("protocol", "tcp"))))
            continue
        spec, _, proto = str(port).partition("/")
        parts = spec.split(":")
        if len(parts) >= 2:  # a bare "5555" only exposes a random host port
            out.add((int(parts[-1]), proto or "tcp"))
    return out


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of every volume mount; source is '' for an anonymous volume."""
    out = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            out.append((str(vol.get("source", "")), str(vol["target"])))
        else:
            parts = str(vol).split(":")
            out.append(("", parts[0]) if len(parts) == 1 else (parts[0], parts[1]))
    return out


def named_mounts(service: dict) -> dict[str, str]:
    """target -> named volume."""
    return {t: s for s, t in mounts(service) if s and not s.startswith(("/", ".", "~"))}


def strings(node) -> list[str]:
    """Every string key and value in a loaded YAML document."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*strings(k), *strings(v))]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [node] if isinstance(node, str) else []


def within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def strictly_within(path: str, root: str) -> bool:
    return path != root.rstrip("/") and within(path, root)


def has_healthcheck(service: dict) -> bool:
    hc = service.get("healthcheck")
    return bool(hc) and not hc.get("disable") and hc.get("test") not in (None, ["NONE"], "NONE")


def command_of(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def image_version(image: str) -> str:
    """'apache/spark:4.3.0-scala2.13-java17-ubuntu' -> '4.3.0'."""
    tag = image.rpartition(":")[2]
    m = re.match(r"\d+(\.\d+)*", tag)
    return m.group(0) if m else ""


def bundled_hadoop_version() -> str:
    """Version of the Hadoop client jars that pyspark ships."""
    import pyspark

    jars = sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    return jars[0].stem.removeprefix("hadoop-client-api-") if jars else ""


def dockerfile_env() -> dict[str, str]:
    """HEALTHMON_* defaults that the image itself sets (ENV lines of the Dockerfile)."""
    out = {}
    for kind, args in instructions(DOCKERFILE.read_text()):
        if kind == "ENV":
            for key, val in re.findall(r"(\S+?)=(\S+)", args):
                out[key] = val
    return out


# ---------------------------------------------------------------- the compose checker


def compose_problems(text: str) -> list[str]:
    """Everything wrong with a docker-compose.yml text; empty when it is right."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"not YAML: {exc}"]
    problems = [f"schema: /{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in schema_errors(doc)]
    if problems or not isinstance(doc, dict):
        return problems or ["not a mapping"]
    services: dict[str, dict] = doc.get("services") or {}
    declared_volumes = set(doc.get("volumes") or {})

    # Compose interpolates $VAR and ${VAR} in every value; this file uses none ($$ is a literal $).
    for value in strings(doc):
        if "$" in value.replace("$$", ""):
            problems.append(f"a '$' that Compose would interpolate (write $$ for a literal $): {value[:60]!r}")

    for name in PIPELINE:
        if name not in services:
            problems.append(f"missing service {name}")

    # Setting names: every HEALTHMON_* anywhere in the file must be one that config.py reads.
    for var in sorted(set(re.findall(r"HEALTHMON_[A-Z0-9_]+", text))):
        if var not in SETTING_ENV:
            problems.append(f"{var} is not a setting (healthmon.config.settings_table)")

    # The project's own image: built from ./Dockerfile.
    built = {s.get("image") for s in services.values() if s.get("build")}
    ours = {n for n, s in services.items() if s.get("build") or (s.get("image") and s.get("image") in built)}
    for name, svc in services.items():
        if name in ours:
            build = svc.get("build")
            if isinstance(build, dict) and Path(build.get("context", ".")) / build.get("dockerfile", "Dockerfile") != Path(
                "./Dockerfile"
            ):
                problems.append(f"{name}: not built from ./Dockerfile")
            elif isinstance(build, str) and Path(build) != Path("."):
                problems.append(f"{name}: not built from ./Dockerfile")

    image_env = dockerfile_env()
    settings = {}
    for name, sub in PARTS.items():
        svc = services.get(name)
        if svc is None:
            continue
        if name not in ours:
            problems.append(f"{name}: does not run the project's image (built from ./Dockerfile)")
            continue
        argv = command_of(svc)
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            problems.append(f"{name}: command {argv} is not a valid healthmon command")
            args = None
        if args is not None and args.command != sub:
            problems.append(f"{name}: runs 'healthmon {args.command}', expected 'healthmon {sub}'")
        env = {k: v for k, v in image_env.items() if k.startswith("HEALTHMON_")}
        env.update({k: v for k, v in env_of(svc).items() if k.startswith("HEALTHMON_")})
        try:
            settings[name] = load_settings(environ=env)
        except ConfigError as exc:
            problems.append(f"{name}: its environment does not load: {exc}")
        if args is not None and name == "mock" and getattr(args, "target", None):
            host, _, port = args.target.rpartition(":")
            if host not in services:
                problems.append(f"mock: --target {args.target}: {host!r} is no service of this file")
            elif "collector" in settings and port != str(settings["collector"].udp_port):
                problems.append(f"mock: --target {args.target}: the collector listens on {settings['collector'].udp_port}")

    # Listeners reachable from other containers, on the ports that are published.
    for name, attr_host, attr_port, proto in (("collector", "udp_host", "udp_port", "udp"), ("serving", "api_host", "api_port", "tcp")):
        s = settings.get(name)
        if s is None:
            continue
        if ipaddress.ip_address(getattr(s, attr_host)).is_loopback:
            problems.append(f"{name}: {attr_host}={getattr(s, attr_host)} is unreachable from outside its container")
        if (getattr(s, attr_port), proto) not in published(services[name]):
            problems.append(f"{name}: does not publish {getattr(s, attr_port)}/{proto}")
    if "collector" in services and (3500, "udp") not in published(services["collector"]):
        problems.append("collector: does not publish 3500/udp")
    if "serving" in services and (5555, "tcp") not in published(services["serving"]):
        problems.append("serving: does not publish 5555")

    # Addresses: each part finds the others by service name.
    hadoop_fs = env_of(services.get("namenode", {})).get("CORE-SITE.XML_fs.defaultFS", "")
    for name, s in settings.items():
        if name == "mock":
            continue
        landing = urlparse(s.landing_url)
        if landing.scheme == "hdfs":
            if landing.hostname not in services:
                problems.append(f"{name}: landing {s.landing_url}: {landing.hostname!r} is no service of this file")
            if hadoop_fs and f"{landing.scheme}://{landing.netloc}" != hadoop_fs.rstrip("/"):
                problems.append(f"{name}: landing {s.landing_url} is not the namenode's fs.defaultFS {hadoop_fs}")
            if urlparse(s.webhdfs).hostname not in services:
                problems.append(f"{name}: WebHDFS {s.webhdfs}: host is no service of this file")
        elif name in VIEW_SHARERS + ("collector",):
            problems.append(f"{name}: landing {s.landing_url} is not the HDFS of this file")
        if name in ("speed", "scheduler"):
            master = urlparse(s.spark_master)
            if master.scheme != "spark" or master.hostname not in services:
                problems.append(f"{name}: spark_master {s.spark_master} is not the Spark master of this file")

    # depends_on and health checks.
    for name, svc in services.items():
        for target, cond in as_dict(svc.get("depends_on")).items():
            if target not in services:
                problems.append(f"{name}: depends_on unknown service {target}")
                continue
            condition = (cond or {}).get("condition", "service_started") if isinstance(cond, dict) else "service_started"
            if condition == "service_healthy" and not has_healthcheck(services[target]):
                problems.append(f"{name}: waits for {target} to be healthy, but {target} has no healthcheck")
        if not has_healthcheck(svc) and name not in NO_HEALTHCHECK:
            problems.append(f"{name}: long-running service without a healthcheck")

    # Volumes: declared, the views shared, HDFS on volumes.
    for name, svc in services.items():
        for source in named_mounts(svc).values():
            if source not in declared_volumes:
                problems.append(f"{name}: volume {source} is not declared under top-level volumes")
    shared = set()
    for name in VIEW_SHARERS:
        if name not in services or name not in settings:
            continue
        views = str(Path(settings[name].data_dir) / "views")
        holders = [(t, v) for t, v in named_mounts(services[name]).items() if within(views, t)]
        if not holders:
            problems.append(f"{name}: its views directory {views} is not on a named volume")
        else:  # (volume, where the views are inside it): the same for all three when they share them
            target, volume = max(holders, key=lambda tv: len(tv[0]))
            shared.add((volume, str(Path(views).relative_to(target))))
    if len(shared) > 1:
        problems.append(f"speed, scheduler and serving do not share one views volume: {sorted(shared)}")
    for node, key in (("namenode", "HDFS-SITE.XML_dfs.namenode.name.dir"), ("datanode", "HDFS-SITE.XML_dfs.datanode.data.dir")):
        svc = services.get(node)
        if svc is None:
            continue
        env = env_of(svc)
        path = urlparse(env.get(key, "")).path if env.get(key) else ""
        if not path:
            problems.append(f"{node}: {key} is not set")
            continue
        if not any(strictly_within(path, t) for t in named_mounts(svc)):
            problems.append(f"{node}: {path} is not inside a named volume (and not the mount point itself)")
        if node == "namenode" and env.get("ENSURE_NAMENODE_DIR") != path:
            problems.append(f"namenode: ENSURE_NAMENODE_DIR={env.get('ENSURE_NAMENODE_DIR')!r} must be the name dir {path}")

    # Images: Spark is the driver's version; HDFS speaks the bundled client's major version.
    for name in ("spark-master", "spark-worker"):
        image = str(services.get(name, {}).get("image", ""))
        if name in services and image_version(image) != importlib.metadata.version("pyspark"):
            problems.append(f"{name}: {image} is not Spark {importlib.metadata.version('pyspark')} (pyproject.toml's pyspark)")
    hadoop_major = bundled_hadoop_version().split(".")[0]
    for name in ("namenode", "datanode"):
        image = str(services.get(name, {}).get("image", ""))
        if name in services and (not image.startswith("apache/hadoop:") or image_version(image).split(".")[0] != hadoop_major):
            problems.append(f"{name}: {image} is not an official Hadoop {hadoop_major}.x image (pyspark's client is {hadoop_major}.x)")
    return problems


_VALIDATOR = None


def schema_errors(doc) -> list[jsonschema.ValidationError]:
    global _VALIDATOR
    if _VALIDATOR is None:
        schema = json.loads(SCHEMA.read_text())  # "$schema": draft-07
        jsonschema.Draft7Validator.check_schema(schema)
        _VALIDATOR = jsonschema.Draft7Validator(schema)
    return list(_VALIDATOR.iter_errors(doc))


# ---------------------------------------------------------------- the Dockerfile checker


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue
        current += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            kind, _, args = current.strip().partition(" ")
            out.append((kind.upper(), args.strip()))
            current = ""
    return out


def copied_sources() -> list[str]:
    return [src for kind, args in instructions(DOCKERFILE.read_text()) if kind == "COPY" for src in args.split()[:-1]]


def dockerfile_problems(text: str) -> list[str]:
    problems = []
    instr = instructions(text)
    pyproject = tomllib.loads(PYPROJECT.read_text())
    froms = [a for k, a in instr if k == "FROM"]
    if not froms or froms[-1].split()[0] != "python:3.11-slim-bookworm":
        problems.append(f"FROM {froms[-1:]}: expected python:3.11-slim-bookworm (the final stage)")
    entry = [a for k, a in instr if k == "ENTRYPOINT"]
    try:
        entrypoint = json.loads(entry[-1]) if entry else None
    except json.JSONDecodeError:
        entrypoint = entry[-1]
    if entrypoint != ["healthmon"]:
        problems.append(f"ENTRYPOINT {entrypoint!r}: expected [\"healthmon\"] (exec form)")
    if "healthmon" not in pyproject["project"].get("scripts", {}):
        problems.append("pyproject.toml has no 'healthmon' console script for the ENTRYPOINT")
    users = [a for k, a in instr if k == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the image runs as root (no USER, or USER root)")
    runs = " ".join(a for k, a in instr if k == "RUN")
    java = [int(v) for v in re.findall(r"openjdk-(\d+)-jre", runs)]
    if not java or max(java) < 17:
        problems.append("no Java 17+ installed (Spark needs it)")
    if not re.search(r"pip install [^&;|]*\s\.(\s|$)", runs):
        problems.append("the project is not installed with `pip install .`")
    exposed = " ".join(a for k, a in instr if k == "EXPOSE").split()
    if "3500/udp" not in exposed:
        problems.append("EXPOSE lacks 3500/udp")
    if not {"5555", "5555/tcp"} & set(exposed):
        problems.append("EXPOSE lacks 5555")
    sources = {src.rstrip("/") for k, a in instr if k == "COPY" for src in a.split()[:-1]}
    needed = ["pyproject.toml", "README.md", *pyproject["tool"]["setuptools"]["packages"]]
    for item in needed:
        if "." not in sources and item not in sources:
            problems.append(f"{item} is not copied into the image")
    for kind, args in instr:
        for var in re.findall(r"HEALTHMON_[A-Z0-9_]+", args):
            if var not in SETTING_ENV:
                problems.append(f"{kind} {var}: not a setting")
    return problems


def dockerignore_problems(text: str) -> list[str]:
    patterns = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    problems = [f"{p} is not excluded from the build context" for p in MUST_IGNORE if p not in patterns]
    for src in copied_sources():
        src = src.rstrip("/")
        for pat in patterns:
            if not pat.startswith("!") and (fnmatch.fnmatch(src, pat.rstrip("/")) or fnmatch.fnmatch(src, pat.removeprefix("**/"))):
                problems.append(f"{src} is copied by the Dockerfile but excluded by .dockerignore ({pat})")
    return problems


# ---------------------------------------------------------------- the real files


def test_compose_file_matches_the_compose_spec_schema():
    doc = yaml.safe_load(COMPOSE.read_text())
    errors = schema_errors(doc)
    assert not errors, "\n".join(f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_vendored_schema_is_the_compose_specification():
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    assert {"services", "volumes", "networks"} <= set(schema["properties"])
    assert "start_interval" in schema["definitions"]["healthcheck"]["properties"]


def test_compose_wiring():
    assert compose_problems(COMPOSE.read_text()) == []


def test_dockerfile():
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_dockerignore():
    assert dockerignore_problems(DOCKERIGNORE.read_text()) == []


# ---------------------------------------------------------------- the checker catches broken copies


def _set(path: str, value) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


def _delete(path: str) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


def _rename_env(service: str, old: str, new: str) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        env = doc["services"][service]["environment"]
        env[new] = env.pop(old)

    return mutate


def _other_image(doc: dict) -> None:
    del doc["services"]["serving"]["build"]
    doc["services"]["serving"]["image"] = "python:3.11"


def _views_elsewhere_on_the_volume(doc: dict) -> None:
    doc["services"]["serving"]["volumes"] = ["healthmon-data:/srv"]
    doc["services"]["serving"]["environment"]["HEALTHMON_DATA_DIR"] = "/srv/serving"


def _other_views_volume(doc: dict) -> None:
    doc["volumes"]["other-data"] = None
    doc["services"]["serving"]["volumes"] = ["other-data:/var/lib/healthmon"]


COMPOSE_BREAKS = {
    "no mock service": (_delete("services.mock"), "missing service mock"),
    "no spark worker": (_delete("services.spark-worker"), "missing service spark-worker"),
    "misspelt setting": (_rename_env("collector", "HEALTHMON_UDP_HOST", "HEALTHMON_UDP_ADDR"), "HEALTHMON_UDP_ADDR is not a setting"),
    "unknown setting added": (_set("services.speed.environment.HEALTHMON_SPARK_URL", "x"), "HEALTHMON_SPARK_URL is not"),
    "bad setting value": (_set("services.serving.environment.HEALTHMON_API_PORT", "http"), "serving: its environment does not load"),
    "collector on loopback": (_set("services.collector.environment.HEALTHMON_UDP_HOST", "127.0.0.1"), "unreachable from outside"),
    "api on loopback": (_delete("services.serving.environment.HEALTHMON_API_HOST"), "api_host=127.0.0.1"),
    "collector port is tcp": (_set("services.collector.ports", ["3500:3500"]), "does not publish 3500/udp"),
    "serving not published": (_delete("services.serving.ports"), "does not publish 5555"),
    "port setting drifts": (_set("services.collector.environment.HEALTHMON_UDP_PORT", "3600"), "does not publish 3600/udp"),
    "namenode without healthcheck": (_delete("services.namenode.healthcheck"), "waits for namenode to be healthy"),
    "healthcheck disabled": (_set("services.spark-worker.healthcheck", {"disable": True}), "spark-worker: long-running service without"),
    "depends on a ghost": (_set("services.speed.depends_on.hdfs", {"condition": "service_started"}), "depends_on unknown service hdfs"),
    "views not shared": (_other_views_volume, "do not share one views volume"),
    "views elsewhere on the volume": (_views_elsewhere_on_the_volume, "do not share one views volume"),
    "views off the volume": (_set("services.scheduler.environment.HEALTHMON_DATA_DIR", "/tmp/hm"), "scheduler: its views directory"),
    "undeclared volume": (_delete("volumes.healthmon-data"), "volume healthmon-data is not declared"),
    "namenode dir not on a volume": (_delete("services.namenode.volumes"), "namenode: /data/namenode is not inside a named volume"),
    "datanode dir not on a volume": (_delete("services.datanode.volumes"), "datanode: /data/datanode is not inside"),
    "namenode dir is the mount point": (
        lambda d: d["services"]["namenode"]["environment"].update(
            {"HDFS-SITE.XML_dfs.namenode.name.dir": "file:///data", "ENSURE_NAMENODE_DIR": "/data"}
        ),
        "not the mount point itself",
    ),
    "format guard elsewhere": (_set("services.namenode.environment.ENSURE_NAMENODE_DIR", "/tmp/x"), "ENSURE_NAMENODE_DIR"),
    "spark version drift": (_set("services.spark-worker.image", "apache/spark:4.0.1"), "is not Spark"),
    "hadoop not official": (_set("services.datanode.image", "bde2020/hadoop-datanode:latest"), "not an official Hadoop"),
    "landing elsewhere": (_set("services.speed.environment.HEALTHMON_LANDING", "hdfs://nn:8020/x"), "'nn' is no service"),
    "landing local": (_set("services.scheduler.environment.HEALTHMON_LANDING", "file:///tmp/l"), "is not the HDFS of this file"),
    "spark master elsewhere": (_set("services.scheduler.environment.HEALTHMON_SPARK_MASTER", "local[*]"), "not the Spark master"),
    "mock target typo": (_set("services.mock.command", ["mock", "--target", "colector:3500"]), "'colector' is no service"),
    "mock target port": (_set("services.mock.command", ["mock", "--target", "collector:3501"]), "the collector listens on 3500"),
    "bad command": (_set("services.collector.command", ["colect"]), "not a valid healthmon command"),
    "wrong part": (_set("services.speed.command", ["serve"]), "expected 'healthmon speed'"),
    "not our image": (_other_image, "serving: does not run"),
    "schema: unknown key": (_set("services.collector.imagee", "x"), "schema:"),
    "schema: bad type": (_set("services.serving.ports", {"5555": "5555"}), "schema:"),
    "schema: bad healthcheck": (_set("services.namenode.healthcheck.test", 42), "schema:"),
    "interpolation": (_set("services.mock.command", ["mock", "--target", "${TARGET}"]), "Compose would interpolate"),
}


@pytest.mark.parametrize("name", list(COMPOSE_BREAKS))
def test_compose_checker_catches(name):
    mutate, expected = COMPOSE_BREAKS[name]
    doc = yaml.safe_load(COMPOSE.read_text())
    mutate(doc)
    problems = compose_problems(yaml.safe_dump(doc, sort_keys=False))
    assert any(expected in p for p in problems), f"{name}: expected a problem with {expected!r}, got {problems}"


def test_compose_checker_passes_an_unchanged_round_trip():
    """The mutations above go through yaml.safe_dump; an unmutated round trip is clean."""
    doc = yaml.safe_load(COMPOSE.read_text())
    assert compose_problems(yaml.safe_dump(copy.deepcopy(doc), sort_keys=False)) == []


DOCKERFILE_BREAKS = {
    "entrypoint": (('ENTRYPOINT ["healthmon"]', 'ENTRYPOINT ["python", "-m", "healthmon.cli"]'), "ENTRYPOINT"),
    "shell-form entrypoint": (('ENTRYPOINT ["healthmon"]', "ENTRYPOINT healthmon"), "ENTRYPOINT"),
    "base image": (("FROM python:3.11-slim-bookworm", "FROM python:3.12-slim"), "FROM"),
    "root": (("USER healthmon", "USER root"), "runs as root"),
    "no java": (("openjdk-17-jre-headless", "openjdk-11-jre-headless"), "Java 17+"),
    "package left out": (("COPY serving/ serving/\n", ""), "serving is not copied"),
    "no udp": (("EXPOSE 3500/udp 5555", "EXPOSE 3500 5555"), "3500/udp"),
    "no api port": (("EXPOSE 3500/udp 5555", "EXPOSE 3500/udp"), "EXPOSE lacks 5555"),
    "not installed": (("pip install --no-deps .", "pip install --no-deps -r /dev/null"), "pip install ."),
    "unknown setting": (("ENV HEALTHMON_DATA_DIR=", "ENV HEALTHMON_DATADIR="), "HEALTHMON_DATADIR: not a setting"),
}


@pytest.mark.parametrize("name", list(DOCKERFILE_BREAKS))
def test_dockerfile_checker_catches(name):
    (old, new), expected = DOCKERFILE_BREAKS[name]
    text = DOCKERFILE.read_text()
    assert old in text, f"{name}: the Dockerfile no longer contains {old!r}; update this test"
    problems = dockerfile_problems(text.replace(old, new))
    assert any(expected in p for p in problems), f"{name}: expected {expected!r}, got {problems}"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (".venv\n", "", ".venv is not excluded"),
        (".hadoop\n", "", ".hadoop is not excluded"),
        ("var\n", "var\nREADME.md\n", "README.md is copied"),
        ("var\n", "var\ningest\n", "ingest is copied"),
    ],
)
def test_dockerignore_checker_catches(old, new, expected):
    text = DOCKERIGNORE.read_text()
    assert old in text
    problems = dockerignore_problems(text.replace(old, new, 1))
    assert any(expected in p for p in problems), problems


# ---------------------------------------------------------------- the health checks run


def healthcheck(service: str) -> list[str]:
    test = yaml.safe_load(COMPOSE.read_text())["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD", f"{service}: exec-form health check expected"
    return [sys.executable if arg == "python" else arg for arg in test[1:]]


def run_check(argv: list[str], env: dict[str, str]) -> int:
    return subprocess.run(argv, env=healthmon_env(env), capture_output=True, timeout=30).returncode


def container_env(service: str, data_dir: Path) -> dict[str, str]:
    env = env_of(yaml.safe_load(COMPOSE.read_text())["services"][service])
    return {**{k: v for k, v in env.items() if k.startswith("HEALTHMON_")}, "HEALTHMON_DATA_DIR": str(data_dir)}


def test_collector_healthcheck(tmp_path):
    env = container_env("collector", tmp_path)
    s = load_settings(environ=env)
    name = f"collector-{s.collector_id}"
    assert run_check(healthcheck("collector"), env) == 1  # no counters yet
    write_state(s.state_dir, name, {"state": "running", "updated_at": time.time()})
    assert run_check(healthcheck("collector"), env) == 0
    write_state(s.state_dir, name, {"state": "running", "updated_at": time.time() - 600})
    assert run_check(healthcheck("collector"), env) == 1  # receive loop stuck
    write_state(s.state_dir, name, {"state": "stopping", "updated_at": time.time()})
    assert run_check(healthcheck("collector"), env) == 1


def test_speed_healthcheck(tmp_path):
    env = container_env("speed", tmp_path)
    state_dir = load_settings(environ=env).state_dir
    assert run_check(healthcheck("speed"), env) == 1
    write_state(state_dir, "speed", {"state": "streaming", "started_at": time.time(), "restarts": 0})
    assert run_check(healthcheck("speed"), env) == 0
    write_state(state_dir, "speed", {"state": "restarting", "restarts": 1, "last_error": "x"})
    assert run_check(healthcheck("speed"), env) == 1


def test_scheduler_healthcheck(tmp_path):
    env = container_env("scheduler", tmp_path)
    s = load_settings(environ=env)
    runs = s.state_dir / "batch_runs.jsonl"
    assert run_check(healthcheck("scheduler"), env) == 1
    s.state_dir.mkdir(parents=True)
    runs.write_text(json.dumps({"started_at": time.time() - 5, "duration_s": 2.0, "status": "ok"}) + "\n")
    assert run_check(healthcheck("scheduler"), env) == 0
    with runs.open("a") as fh:
        fh.write(json.dumps({"started_at": time.time() - 5, "duration_s": 2.0, "status": "error", "error": "x"}) + "\n")
    assert run_check(healthcheck("scheduler"), env) == 1
    runs.write_text(json.dumps({"started_at": time.time() - 10 * s.batch_interval_s, "duration_s": 2.0, "status": "ok"}) + "\n")
    assert run_check(healthcheck("scheduler"), env) == 1  # overdue


class _Stub(http.server.BaseHTTPRequestHandler):
    status = 200
    body = b"{}"
    paths: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).paths.append(self.path)
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_http():
    """A small HTTP server on 127.0.0.1 whose status and body a test sets."""
    handler = type("Stub", (_Stub,), {"status": 200, "body": b"{}", "paths": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield handler, server.server_address[1]
    server.shutdown()
    server.server_close()


def test_serving_healthcheck(tmp_path, stub_http):
    handler, port = stub_http
    env = {**container_env("serving", tmp_path), "HEALTHMON_API_PORT": str(port)}
    handler.body = b'{"status": "ok"}'
    assert run_check(healthcheck("serving"), env) == 0
    assert handler.paths == ["/healthz"]
    handler.status = 500
    assert run_check(healthcheck("serving"), env) == 1


@pytest.mark.parametrize(
    ("service", "port", "good", "bad"),
    [
        ("spark-master", 8080, b'{"url" : "spark://spark-master:7077", "status" : "ALIVE"}', b'{"status" : "STANDBY"}'),
        ("spark-worker", 8081, b'{"masterurl" : "spark://spark-master:7077", "cores" : 2}', b'{"masterurl" : "", "cores" : 2}'),
    ],
)
def test_spark_healthchecks(stub_http, service, port, good, bad):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    handler, stub_port = stub_http
    argv = [a.replace(f"127.0.0.1/{port}", f"127.0.0.1/{stub_port}") for a in healthcheck(service)]
    assert argv != healthcheck(service), f"{service}: the check no longer asks 127.0.0.1:{port}"
    handler.body = good
    assert run_check(argv, {}) == 0
    assert handler.paths == ["/json/"]
    handler.body = bad
    assert run_check(argv, {}) == 1


@pytest.mark.parametrize(("service", "port"), [("namenode", 9870), ("datanode", 9864)])
def test_hdfs_healthchecks(stub_http, service, port):
    if shutil.which("curl") is None:
        pytest.skip("no curl")
    handler, stub_port = stub_http
    argv = [a.replace(f"localhost:{port}", f"127.0.0.1:{stub_port}") for a in healthcheck(service)]
    assert argv != healthcheck(service), f"{service}: the check no longer asks localhost:{port}"
    assert run_check(argv, {}) == 0
    assert handler.paths[0].startswith(("/webhdfs/v1/", "/jmx"))
    handler.status = 503
    assert run_check(argv, {}) != 0
