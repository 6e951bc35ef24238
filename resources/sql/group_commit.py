"""Group commit: work from concurrent callers, written in batches.

While one batch is being written the next one gathers, so a busy process writes one transaction
per batch instead of one per caller, and each caller still waits until its own item is durable.
The audit writer (``fhir_server/auditing.py``) and the HL7 listener (``hl7_bridge/listener.py``)
use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """``await group.submit(item)`` returns that item's result from ``run(batch)``.

    ``run`` gets the items gathered so far, in the order submitted (at most ``limit`` of them
    when a limit is set), and returns one result per item in the same order. If it raises,
    every caller in that batch gets the exception; the next batch runs all the same.
    ``concurrency`` batches may run at once (1: strictly one after the other, as SQLite's
    single writer wants; more lets PostgreSQL work on one batch while Python builds another).
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[list[R]]],
        *,
        limit: int = 0,
        concurrency: int = 1,
    ) -> None:
        self._run = run
        self._limit = limit
        self._concurrency = concurrency
        self._items: list[T] = []
        self._waiters: list[asyncio.Future[R]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def submit(self, item: T) -> R:
        waiter: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._items.append(item)
        self._waiters.append(waiter)
        # a drain that has left its loop is done before anyone can submit (no await between)
        self._tasks = [t for t in self._tasks if not t.done()]
        if len(self._tasks) < self._concurrency:
            self._tasks.append(asyncio.create_task(self._drain()))
        return await waiter

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let callers that are ready to submit join this batch
        while self._items:
            cut = self._limit or len(self._items)
            items, waiters = self._items[:cut], self._waiters[:cut]
            del self._items[:cut], self._waiters[:cut]
            try:
                results = await self._run(items)
                if len(results) != len(items):
                    raise RuntimeError(f"{len(items)} items gave {len(results)} results")
            except Exception as exc:  # noqa: BLE001 - handed to the callers, who decide
                for w in waiters:
                    if not w.done():
                        w.set_exception(exc)
            else:
                for w, result in zip(waiters, results, strict=True):
                    if not w.done():
                        w.set_result(result)
