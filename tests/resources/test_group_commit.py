"""GroupCommit: concurrent callers' items run in batches, each caller gets its own result."""

from __future__ import annotations

import asyncio

import pytest

from resources.sql.group_commit import GroupCommit

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_callers_ready_together_share_a_batch_and_get_their_own_results() -> None:
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        batches.append(list(items))
        await release.wait()  # while this batch is written, the next one gathers
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(run)
    first = [asyncio.create_task(group.submit(i)) for i in (1, 2, 3)]
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(group.submit(i)) for i in (4, 5)]
    await asyncio.sleep(0.01)
    assert batches == [[1, 2, 3]]
    release.set()
    assert await asyncio.gather(*first, *later) == [10, 20, 30, 40, 50]
    assert batches == [[1, 2, 3], [4, 5]]


async def test_a_limit_caps_the_batch() -> None:
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        batches.append(list(items))
        return items

    group: GroupCommit[int, int] = GroupCommit(run, limit=2)
    assert await asyncio.gather(*(group.submit(i) for i in range(5))) == [0, 1, 2, 3, 4]
    assert batches == [[0, 1], [2, 3], [4]]


async def test_a_failed_batch_fails_its_callers_only() -> None:
    async def run(items: list[str]) -> list[str]:
        if "bad" in items:
            raise ValueError("refused")
        return [s.upper() for s in items]

    group: GroupCommit[str, str] = GroupCommit(run, limit=2)
    results = await asyncio.gather(
        *(group.submit(s) for s in ("bad", "x", "y", "z")), return_exceptions=True
    )
    assert [type(r).__name__ if isinstance(r, Exception) else r for r in results] == [
        "ValueError",
        "ValueError",
        "Y",
        "Z",
    ]


async def test_a_run_that_loses_results_fails_loudly() -> None:
    async def run(items: list[int]) -> list[int]:
        return items[:-1]

    group: GroupCommit[int, int] = GroupCommit(run)
    with pytest.raises(RuntimeError, match="2 items gave 1 results"):
        await asyncio.gather(group.submit(1), group.submit(2))


async def test_with_concurrency_a_second_batch_starts_while_the_first_runs() -> None:
    running: list[list[int]] = []
    release = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        running.append(list(items))
        await release.wait()
        return items

    group: GroupCommit[int, int] = GroupCommit(run, concurrency=2)
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0.01)
    second = [asyncio.create_task(group.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0.01)
    third = asyncio.create_task(group.submit(4))  # both slots busy: it waits for a batch to end
    await asyncio.sleep(0.01)
    assert running == [[1], [2, 3]]
    release.set()
    assert await asyncio.gather(first, *second, third) == [1, 2, 3, 4]
    assert running == [[1], [2, 3], [4]]
