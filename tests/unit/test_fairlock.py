"""The service's lock: reentrant, and handed to its waiters in the order they came."""

from __future__ import annotations

import threading

import pytest

from dssync.fairlock import FairLock


def _wait_for_waiters(lock: FairLock, n: int) -> None:
    for _ in range(100_000):
        if lock.waiting() >= n:
            return
        threading.Event().wait(0.001)
    raise AssertionError(f"{n} waiters never queued")


def test_a_thread_that_takes_the_lock_again_at_once_waits_behind_the_thread_already_waiting() -> None:
    lock = FairLock()
    order: list[str] = []

    def waiter() -> None:
        with lock:
            order.append("waiter")

    lock.acquire()
    t = threading.Thread(target=waiter)
    t.start()
    _wait_for_waiters(lock, 1)
    lock.release()
    with lock:  # the loop's next step: without the hand-over it almost always wins
        order.append("looper")
    t.join()
    assert order == ["waiter", "looper"]


def test_waiters_get_the_lock_in_the_order_they_came() -> None:
    lock = FairLock()
    order: list[int] = []

    def waiter(i: int) -> None:
        with lock:
            order.append(i)

    lock.acquire()
    threads = []
    for i in range(5):
        t = threading.Thread(target=waiter, args=(i,))
        t.start()
        _wait_for_waiters(lock, i + 1)
        threads.append(t)
    lock.release()
    for t in threads:
        t.join()
    assert order == [0, 1, 2, 3, 4]


def test_the_holder_takes_it_again_without_waiting_and_keeps_it_until_the_last_release() -> None:
    lock = FairLock()
    got: list[bool] = []
    with lock, lock:
        pass
    with lock:
        with lock:
            pass
        t = threading.Thread(target=lambda: got.append(lock.acquire(blocking=False)))
        t.start()
        t.join()
    assert got == [False]
    assert lock.acquire(blocking=False)
    lock.release()


def test_a_waiter_that_times_out_leaves_the_queue_and_the_lock_goes_to_the_next() -> None:
    lock = FairLock()
    results: dict[str, bool] = {}

    def patient() -> None:
        results["patient"] = lock.acquire()
        lock.release()

    lock.acquire()
    assert lock.acquire(blocking=False)  # reentrant even when not blocking
    lock.release()
    impatient = threading.Thread(target=lambda: results.update(impatient=lock.acquire(timeout=0.01)))
    impatient.start()
    impatient.join()
    assert results == {"impatient": False}
    assert lock.waiting() == 0
    t = threading.Thread(target=patient)
    t.start()
    _wait_for_waiters(lock, 1)
    lock.release()
    t.join()
    assert results["patient"]
    assert lock.acquire(blocking=False)
    lock.release()


def test_releasing_a_lock_this_thread_does_not_hold_raises() -> None:
    lock = FairLock()
    with pytest.raises(RuntimeError):
        lock.release()
    lock.acquire()
    t_err: list[BaseException] = []

    def other() -> None:
        try:
            lock.release()
        except RuntimeError as exc:
            t_err.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    lock.release()
    assert len(t_err) == 1


def test_many_threads_looping_over_the_lock_never_hold_it_together() -> None:
    lock = FairLock()
    inside = [0]
    overlaps = [0]
    done = [0]

    def loop() -> None:
        for _ in range(2_000):
            with lock:
                inside[0] += 1
                if inside[0] != 1:
                    overlaps[0] += 1
                inside[0] -= 1
                done[0] += 1

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [0]
    assert done == [8_000]
    assert lock.waiting() == 0
