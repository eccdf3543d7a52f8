"""`atp reload` waits for the verdicts of the server's workers, and only of those: a child process
that is no worker (a multiprocessing helper, anything a server might start) is not waited for."""
import multiprocessing
import os

from atp_server import reload


def _idle(stop):
    stop.wait(30)


def test_a_single_server_with_a_child_process_has_no_workers(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    child = ctx.Process(target=_idle, args=(stop,))
    child.start()
    try:
        assert reload.workers_of(tmp_path, os.getpid()) == []    # the child is no worker
    finally:
        stop.set()
        child.join()


def test_the_workers_are_the_ones_the_parent_recorded_and_alive(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    a, b = ctx.Process(target=_idle, args=(stop,)), ctx.Process(target=_idle, args=(stop,))
    a.start(), b.start()
    try:
        reload.write_workers(tmp_path, [a.pid, b.pid])
        assert sorted(reload.workers_of(tmp_path, os.getpid())) == sorted([a.pid, b.pid])
        assert reload.workers_of(tmp_path, os.getpid() + 1) == []    # another parent's record
        b.kill()
        b.join()
        assert reload.workers_of(tmp_path, os.getpid()) == [a.pid]   # a dead one is not waited for
    finally:
        stop.set()
        a.join()
