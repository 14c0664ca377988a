"""The local single-node HDFS (healthmon/hdfs_cluster.py): real NameNode and DataNode JVMs on free ports.

The cluster tests share one cluster (module fixture, formatted once) and need
the Hadoop jars that ``make setup`` fetches into ``.hadoop/lib``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from hdfs import InsecureClient

from healthmon import hdfs_cluster
from healthmon.config import load_settings
from tests.procs import HDFS_PORT_SETTINGS, HEALTHMON, free_hdfs_ports, healthmon_env


def hdfs_settings(data_dir: Path, **extra):
    return load_settings({"data_dir": str(data_dir), **free_hdfs_ports(), **extra}, environ={})


def cli(settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``healthmon hdfs <args>`` against the cluster of ``settings``."""
    env = healthmon_env({"HEALTHMON_DATA_DIR": str(settings.data_dir)})
    env.update({f"HEALTHMON_{name.upper()}": str(getattr(settings, name)) for name in HDFS_PORT_SETTINGS})
    return subprocess.run([*HEALTHMON, "hdfs", *args], env=env, capture_output=True, text=True, timeout=timeout)


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


# --------------------------------------------------------------------------- without a cluster


def test_conf_binds_every_listener_to_the_configured_host_and_ports(tmp_path):
    settings = hdfs_settings(tmp_path)
    conf = hdfs_cluster.write_conf(settings)
    site = (conf / "hdfs-site.xml").read_text()
    for name in HDFS_PORT_SETTINGS:
        assert f"127.0.0.1:{getattr(settings, name)}<" in site, name
    assert "<name>dfs.replication</name><value>1</value>" in site
    assert "<name>dfs.permissions.enabled</name><value>false</value>" in site
    assert f"<value>hdfs://127.0.0.1:{settings.hdfs_rpc_port}</value>" in (conf / "core-site.xml").read_text()
    assert (conf / "webapps" / "hdfs").is_dir()
    assert str(tmp_path) in hdfs_cluster.hdfs_site(settings)["dfs.namenode.name.dir"]


def test_missing_jars_say_run_make_setup(tmp_path, monkeypatch):
    monkeypatch.setattr(hdfs_cluster, "LIB_DIR", tmp_path / "nothing")
    with pytest.raises(hdfs_cluster.HdfsError, match="run make setup"):
        hdfs_cluster.start_namenode(hdfs_settings(tmp_path))


def test_status_of_a_cluster_never_started_is_down(tmp_path):
    settings = hdfs_settings(tmp_path)
    st = hdfs_cluster.status(settings)
    assert not st.up and st.namenode_pid is None and st.datanode_pid is None
    done = cli(settings, "status")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "HDFS down" in done.stdout


# --------------------------------------------------------------------------- a real cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running local HDFS in a fresh data dir on free ports; stopped at the end of the module."""
    settings = hdfs_settings(tmp_path_factory.mktemp("hdfs-data"))
    started = time.monotonic()
    hdfs_cluster.up(settings, timeout=180)
    print(f"HDFS formatted, started and ready in {time.monotonic() - started:.1f} s")
    yield settings
    hdfs_cluster.down(settings)


def client(settings) -> InsecureClient:
    return InsecureClient(hdfs_cluster.webhdfs_url(settings), user=settings.hdfs_user, timeout=30)


@pytest.mark.hdfs
@pytest.mark.slow
def test_webhdfs_write_rename_list_read(cluster):
    hdfs = client(cluster)
    data = b"".join(b'{"service": "svc-%d", "cpu_pct": %d}\n' % (i, i % 100) for i in range(20000))
    hdfs.write("/healthmon/raw/_segment.jsonl", data=data)  # creates the parent directories
    hdfs.rename("/healthmon/raw/_segment.jsonl", "/healthmon/raw/segment.jsonl")
    assert hdfs.list("/healthmon/raw") == ["segment.jsonl"]
    assert hdfs.status("/healthmon/raw/segment.jsonl")["length"] == len(data)
    with hdfs.read("/healthmon/raw/segment.jsonl") as reader:
        assert reader.read() == data
    assert hdfs.status("/healthmon/raw/_segment.jsonl", strict=False) is None


@pytest.mark.hdfs
@pytest.mark.slow
def test_status_reports_up_and_up_again_is_a_no_op(cluster):
    st = hdfs_cluster.status(cluster)
    assert st.up, st
    assert st.live_datanodes == 1 and st.safe_mode is False and st.capacity_bytes > 0
    assert st.fs_url == f"hdfs://127.0.0.1:{cluster.hdfs_rpc_port}"

    pids = (st.namenode_pid, st.datanode_pid)
    again = hdfs_cluster.up(cluster, timeout=30)
    assert (again.namenode_pid, again.datanode_pid) == pids

    done = cli(cluster, "status")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "HDFS up" in done.stdout and "1 live" in done.stdout
    done = cli(cluster, "up")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already running" in done.stdout


@pytest.mark.hdfs
@pytest.mark.slow
def test_stop_both_and_start_again_keeps_the_data(cluster):
    hdfs = client(cluster)
    hdfs.write("/healthmon/keep/a.jsonl", data=b"kept across a restart\n", overwrite=True)
    before = hdfs_cluster.status(cluster)

    assert hdfs_cluster.stop_datanode(cluster)
    assert hdfs_cluster.stop_namenode(cluster)
    assert gone(before.namenode_pid) and gone(before.datanode_pid)
    st = hdfs_cluster.status(cluster)
    assert not st.up and st.namenode_pid is None and st.datanode_pid is None
    assert cli(cluster, "status").returncode == 1

    started = time.monotonic()
    hdfs_cluster.start_namenode(cluster)
    hdfs_cluster.start_datanode(cluster)
    st = hdfs_cluster.wait_ready(cluster, timeout=120)
    print(f"HDFS restarted and ready in {time.monotonic() - started:.1f} s")
    assert st.up and st.namenode_pid != before.namenode_pid
    with hdfs.read("/healthmon/keep/a.jsonl") as reader:
        assert reader.read() == b"kept across a restart\n"
    assert "segment.jsonl" in hdfs.list("/healthmon/raw")


@pytest.mark.hdfs
@pytest.mark.slow
def test_down_stops_both_processes(cluster):
    st = hdfs_cluster.status(cluster)
    assert st.up
    done = cli(cluster, "down")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stopped" in done.stdout
    deadline = time.monotonic() + 10
    while not (gone(st.namenode_pid) and gone(st.datanode_pid)) and time.monotonic() < deadline:
        hdfs_cluster.status(cluster)  # reaps our children, as a long-lived caller would
        time.sleep(0.1)
    assert gone(st.namenode_pid) and gone(st.datanode_pid)
    assert not list((cluster.hdfs_dir / "run").glob("*.pid"))
    assert not hdfs_cluster.status(cluster).up
    assert cli(cluster, "down").stdout.strip() == "HDFS was not running"
