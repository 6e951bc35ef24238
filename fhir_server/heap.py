"""Garbage-collector settings for the long-running processes (``serve``, ``hl7 listen``)."""

from __future__ import annotations

import gc

__all__ = ["settle_heap"]


def settle_heap() -> None:
    """Hide what start-up built (models, routes, table metadata: about 150,000 objects) from
    the cyclic garbage collector before serving. Otherwise every full collection walks all of
    it, stalling the event loop for about 100 ms every couple of seconds under load (measured
    with the read-by-id benchmark: p99 95 ms before, 23 ms after). For long-lived server
    processes only: what is frozen is never collected, so tests and commands do not call it."""
    gc.collect()
    gc.freeze()
