"""emu.sim.sequential: model code run once, outside a schedule, by plain Python calls."""

from __future__ import annotations

import pytest
import trio

from emu.errors import EmuError
from emu.sim.sequential import Finding, Sequential


async def _transfer(ctx: Sequential, lock, books: dict[str, int], amount: int) -> int:
    async with lock:
        await ctx.point("read balance")
        if books["a"] < amount:
            return -1
        await ctx.yield_point("retry")
        books["a"] -= amount
        books["b"] += amount
    return 0


def test_call_runs_model_code_to_its_return_value():
    ctx = Sequential()
    lock = ctx.spinlock("books_lock")
    books = {"a": 5, "b": 0}
    assert ctx.call(_transfer(ctx, lock, books, 3)) == 0
    assert ctx.call(_transfer(ctx, lock, books, 3)) == -1
    assert books == {"a": 2, "b": 3}
    assert not lock.is_locked()


def test_a_lock_held_twice_is_a_self_deadlock():
    ctx = Sequential()
    lock = ctx.mutex("m")

    async def twice() -> None:
        await lock.lock()
        await lock.lock()

    with pytest.raises(EmuError, match="m is taken while already held"):
        ctx.call(twice())
    with pytest.raises(EmuError, match="released but was not held"):
        ctx.mutex("n").unlock()


def test_awaiting_anything_else_is_refused():
    async def sleeps() -> None:
        await trio.sleep(0)

    with pytest.raises(EmuError, match="suspended outside a schedule"):
        Sequential().call(sleeps())


def test_quirks_and_failures():
    ctx = Sequential(quirks=("q",), release="v6.16")
    assert ctx.quirk("q") and not ctx.quirk("r") and ctx.release == "v6.16"
    with pytest.raises(Finding, match="bug-on: BUG at handle_host_mem_abort") as found:
        ctx.fail("bug-on", "BUG at handle_host_mem_abort")
    assert found.value.kind == "bug-on"
