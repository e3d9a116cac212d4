"""serve.settle_heap: the start-up heap leaves the collector's walks, and cyclic garbage is still collected."""

from __future__ import annotations

import gc
import weakref

from gateway.serve import settle_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector can free it


def test_settle_heap_freezes_start_up_objects_and_still_collects_cycles():
    threshold = gc.get_threshold()
    try:
        settle_heap()
        assert gc.isenabled()
        assert gc.get_freeze_count() > 1000  # what existed at start-up is out of every collection
        first = Node()
        dead = weakref.ref(first)
        del first
        for _ in range(
            30_000
        ):  # new cycles, as requests may leave: the young generation fills and is collected
            Node()
        assert dead() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
