"""The view store's writer lock: updates of one view never interleave, whoever makes them."""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pytest

from healthmon.views import BATCH_VIEW, REALTIME_VIEW, ViewReader, update_view, writer_lock


def _hold_lock(view, held, release) -> None:
    with writer_lock(view):
        held.set()
        release.wait(30)


def test_a_writer_waits_for_the_writer_in_another_process(tmp_path):
    view = tmp_path / BATCH_VIEW
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(view, held, release))
    holder.start()
    assert held.wait(30)
    order: list[str] = []
    writer = threading.Thread(target=lambda: update_view(view, lambda con: order.append("update")))
    writer.start()
    writer.join(0.5)
    assert writer.is_alive() and order == []  # blocked while the other process holds the lock
    order.append("released")
    release.set()
    writer.join(30)
    holder.join(30)
    assert order == ["released", "update"]


def test_a_failed_update_leaves_the_published_view_and_no_temporary_file(tmp_path):
    view = tmp_path / BATCH_VIEW
    update_view(view, lambda con: con.execute("INSERT INTO view_meta VALUES (3600, 0, 60, 'a', 0, 0)"))

    def broken(con):
        con.execute("INSERT INTO view_meta VALUES (7200, 0, 60, 'b', 0, 0)")
        raise RuntimeError("build died")

    try:
        update_view(view, broken)
    except RuntimeError:
        pass
    con = duckdb.connect(str(view), read_only=True)
    assert con.execute("SELECT build_id FROM view_meta").fetchall() == [("a",)]
    con.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [BATCH_VIEW, f"{BATCH_VIEW}.lock"]


def test_reader_recovers_after_a_damaged_view_file(tmp_path):
    """A view file that cannot be attached fails the request; once a good file is published, reads work again."""
    good = tmp_path / BATCH_VIEW
    update_view(good, lambda con: None, fresh=True)
    reader = ViewReader(tmp_path)
    try:
        assert reader.connection().execute("SELECT count(*) FROM b.health_window").fetchone() == (0,)
        damaged = tmp_path / "damaged.tmp"
        damaged.write_bytes(b"not a duckdb file" * 100)
        os.replace(damaged, good)
        with pytest.raises(duckdb.Error):
            reader.connection()
        with pytest.raises(duckdb.Error):
            reader.connection()  # still the damaged file: the same error, not a DETACH of nothing
        good.unlink()
        update_view(good, lambda con: con.execute("INSERT INTO health_window (service, window_start, count) VALUES ('a', 0, 3)"),
                    fresh=True)
        assert reader.connection().execute("SELECT sum(count) FROM b.health_window").fetchone() == (3,)
    finally:
        reader.close_all()


def test_reader_threads_share_one_attach_and_each_keeps_its_files_until_released(tmp_path):
    """A publication is attached once for every thread; a thread that still reads keeps the files it started with."""
    realtime = tmp_path / REALTIME_VIEW
    update_view(tmp_path / BATCH_VIEW, lambda con: None, fresh=True)

    def publish(rows: int) -> None:
        update_view(realtime, lambda con: con.execute(f"INSERT INTO health_window (service, window_start, count) "
                                                      f"SELECT 'a', i * 60, 1 FROM range({rows}) t(i)"), fresh=True)

    def seen(con) -> tuple[int, int]:
        """(rows of the real-time view, the database oid of its attach) through ``con``."""
        (rows,) = con.execute("SELECT count(*) FROM rt.health_window").fetchone()
        (oid,) = con.execute("SELECT database_oid FROM duckdb_databases() WHERE database_name = 'rt'").fetchone()
        return rows, oid

    def read():
        """What this thread sees on a new request, and the cursor it got (pinned until its next request)."""
        con = reader.connection()
        return (*seen(con), reader.identity("rt")), con

    reader = ViewReader(tmp_path)
    one, two = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    try:
        publish(1)
        first, first_con = one.submit(read).result()
        assert first[0] == 1
        publish(2)
        second, _ = two.submit(read).result()
        assert second[0] == 2
        assert read()[0][:2] == second[:2]  # a third thread reads the same attach of the new file: attached once
        # thread one has not released: a later query of its request still reads the file it started with, named the same
        assert one.submit(lambda: (seen(first_con), reader.identity("rt"))).result() == (first[:2], first[2])
        publish(3)
        assert read()[0][0] == 2  # the spare instance is still read by thread one: the newest file waits, the pair before is read
        one.submit(reader.release).result()
        assert read()[0][0] == 3
        assert two.submit(read).result()[0][0] == 3
    finally:
        one.shutdown()
        two.shutdown()
        reader.close_all()


def test_a_following_reader_switches_only_once_the_new_files_are_prepared(tmp_path):
    """``follow(prepare)``: requests read the pair before until the new files are attached and prepared (``prepare`` sees
    them pinned, named by ``identity``); then requests read them."""
    realtime = tmp_path / REALTIME_VIEW
    update_view(tmp_path / BATCH_VIEW, lambda con: None, fresh=True)

    def publish(rows: int) -> None:
        update_view(realtime, lambda con: con.execute(f"INSERT INTO health_window (service, window_start, count) "
                                                      f"SELECT 'a', i * 60, 1 FROM range({rows}) t(i)"), fresh=True)

    def rows(con) -> int:
        return con.execute("SELECT count(*) FROM rt.health_window").fetchone()[0]

    def request() -> int:
        try:
            return rows(reader.connection())
        finally:
            reader.release()

    reader = ViewReader(tmp_path)
    other = ThreadPoolExecutor(1)
    prepared: list = []

    def prepare(con) -> None:
        prepared.append((rows(con), reader.identity("rt")))
        prepared.append(other.submit(request).result())  # meanwhile a request reads the pair before

    try:
        reader.follow(prepare, interval_s=None)
        publish(1)
        assert request() == 1  # nothing attached yet: the first request attaches
        publish(2)
        assert request() == 1  # following: requests do not look for new files
        assert reader.switch_to_newest()
        assert prepared == [(2, ViewReader._file_identity(realtime)), 1]
        assert request() == 2
        assert not reader.switch_to_newest()  # nothing new
    finally:
        other.shutdown()
        reader.close_all()
