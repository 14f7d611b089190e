"""The collector's garbage-collection policy: frozen heap, cyclic garbage still reclaimed."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Iterator

import pytest

from collector.heap import keep_collections_small


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cycle collector frees it


@pytest.fixture
def policy() -> Iterator[threading.Event]:
    stop = threading.Event()
    worker = threading.Thread(
        target=keep_collections_small, args=(stop, 0.01, 1.5), name="gc-test", daemon=True
    )
    worker.start()
    yield stop
    stop.set()
    worker.join(5)
    gc.unfreeze()


def wait_until(probe: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if probe():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_the_heap_is_frozen_and_cyclic_garbage_still_goes(policy: threading.Event) -> None:
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage

    def frozen() -> bool:
        # Frozen objects are in no generation: gc.get_objects() no longer lists them.
        node = gone()
        return node is not None and not any(o is node for o in gc.get_objects())

    assert wait_until(frozen, 5), "the heap was never frozen"
    # Frozen, it is out of every ordinary collection, a full one included ...
    gc.collect()
    assert gone() is not None, "a frozen cycle was collected"
    # ... until the periodic full collection, which unfreezes first.
    assert wait_until(lambda: gone() is None, 10), "cyclic garbage was never reclaimed"


def test_objects_without_cycles_are_freed_at_once_while_frozen(policy: threading.Event) -> None:
    assert wait_until(lambda: gc.get_freeze_count() > 0, 5)
    kept = [object() for _ in range(3)]
    held = Node.__new__(Node)  # no cycle
    ref = weakref.ref(held)
    time.sleep(0.05)  # frozen with the rest
    del held
    assert ref() is None
    assert len(kept) == 3
