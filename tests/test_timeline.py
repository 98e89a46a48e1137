"""The explained timeline in kernel terms: every step of a detailed re-run names the requests
it serves (the hcall or ucall with its decoded arguments, the message a server received),
then the model function it runs in and its operation; an undetailed run is unchanged."""

from __future__ import annotations

import itertools
import re

import pytest

import emu
from emu.kvm.hvcall import (
    H_PAGE_IN_SHARED,
    H_SVM_INIT_DONE,
    H_SVM_PAGE_IN,
    H_SVM_PAGE_OUT,
    UV_ESM,
    UV_SHARE_PAGE,
    describe_hcall,
    describe_ucall,
)
from emu.sim.explain import entry, explain
from emu.sim.runner import detailed
from emu.sim.trace import DETAIL_WIDTH

HCALL = re.compile(r"H_SVM_PAGE_(IN|OUT)\(gfn=(0x[0-9a-f]+), flags=")
UCALL = re.compile(r"UV_PAGE_IN\(lpid=1, gfn=(0x[0-9a-f]+)\)$")


@pytest.fixture(scope="module")
def finding():
    """A known finding (page-out-lock-leak), and its detailed re-run."""
    found = emu.hunt("share-vs-pageout", quirks=["page-out-lock-leak"], schedules=20,
                     seed=0).found
    assert found is not None and found.violation.kind == "lock-leak"
    return found, detailed(found)


def steps_of(trace, actor_prefix):
    return [(s, op) for s, a, kind, op, _ in trace.events
            if kind == "step" and trace.actors[a].startswith(actor_prefix)]


def column(text: str, step: int, actor: str) -> str:
    """The cell of ``actor`` in ``step``'s row of a rendered timeline, its lines joined."""
    lines = text.splitlines()
    starts = {m.group(): m.start() for m in re.finditer(r"\S+", lines[0])}
    start = starts[actor]
    end = min([at for at in starts.values() if at > start], default=None)
    row = next(i for i, line in enumerate(lines) if line.startswith(f"{step:>4}  "))
    cell = [lines[row][start:end].strip()]
    for line in lines[row + 1:]:
        if line[:6].strip():  # the next step's row
            break
        cell.append(line[start:end].strip())
    return " ".join(c for c in cell if c)


def test_the_detailed_rerun_is_the_same_schedule_and_a_hunt_records_nothing(finding):
    found, again = finding
    assert again.trace_hash == found.trace_hash
    assert not found.trace.where and not found.trace.received
    assert again.trace.where and again.trace.received
    # the plain timeline is the operations alone, one line a step, as before
    plain = found.trace.timeline(10).splitlines()
    assert len(plain) == 3 + 10 and not any(" > " in line for line in plain)


def test_a_pcpu_step_names_the_hcall_with_its_gfn_and_the_kernel_function(finding):
    _, again = finding
    trace, requests = again.trace, again.trace.requests()
    seen = 0
    for step, _ in steps_of(trace, "pcpu"):
        where = trace.where[step]
        call = HCALL.search(" > ".join(requests[step]))
        gpa = re.match(r"kvmppc_h_svm_page_(in|out)\(gpa=(0x[0-9a-f]+), flags=0", where)
        if call and gpa:  # the hcall's decoded GFN is the page its kernel function gets
            assert call.group(1) == gpa.group(1).upper()
            assert int(call.group(2), 16) == int(gpa.group(2), 16) >> 16
            assert requests[step][0].startswith("vm1.vcpu")  # run for that vCPU
            seen += 1
    assert seen >= 4


def test_the_ultravisor_step_names_the_ucall_with_lpid_and_gfn(finding):
    _, again = finding
    trace, requests = again.trace, again.trace.requests()
    served = [(s, requests[s]) for s, op in steps_of(trace, "ultravisor")
              if op == "recv ucall" and UCALL.search(requests[s][-1])]
    assert len(served) >= 4
    for step, chain in served:
        gfn = UCALL.search(chain[-1]).group(1)
        assert chain[-2] == f"H_SVM_PAGE_IN(gfn={gfn}, flags=0)"  # the hcall that made it
        assert trace.received[step] == chain[-1]
    # the memory controller's copy names the page it copies, through the same chain
    copies = [requests[s] for s, op in steps_of(trace, "memctl") if op == "recv memctl"]
    assert copies and all(c[-1] == "page-in copy" and UCALL.search(c[-2]) for c in copies)


def test_the_rendered_cells_hold_request_function_and_operation_in_full(finding):
    _, again = finding
    trace, requests = again.trace, again.trace.requests()
    step = next(s for s, op in steps_of(trace, "ultravisor") if op == "recv ucall"
                and UCALL.search(requests[s][-1]))
    last = again.steps - step + 1
    text = trace.timeline(last)
    cell = column(text, step, "ultravisor")
    # wrapped, not cut: the requests, then the function and the operation, every character
    assert re.sub(r"\s+", "", cell) == re.sub(
        r"\s+", "", " > ".join(requests[step]) + f"{trace.where[step]}: recv ucall -> UV_PAGE_IN")
    assert cell.startswith("vm1.vcpu0 > UV_ESM(") and "serve(): recv ucall" in cell
    starts = [m.start() for m in re.finditer(r"\S+", text.splitlines()[0])][1:]
    assert max(b - a for a, b in itertools.pairwise(starts)) <= DETAIL_WIDTH + 2  # wrapped
    # only the actors that acted in the rows shown have a column
    acted = {trace.actors[a] for s, a, kind, _, _ in trace.events
             if kind == "step" and s > again.steps - last}
    assert set(text.splitlines()[0].split()[1:]) == acted


def test_requests_are_shown_where_they_change_and_explain_says_how_to_read_a_cell(finding):
    _, again = finding
    text = explain(again, last=again.steps)
    assert "a cell: the requests served, outermost first, where they change" in text
    trace, requests = again.trace, again.trace.requests()
    pcpu = steps_of(trace, "pcpu0")
    same = next(s for (p, _), (s, _) in itertools.pairwise(pcpu)
                if requests[s] == requests[p] and requests[s])
    cell = column(trace.timeline(again.steps), same, "pcpu0")
    assert cell.startswith(trace.where[same].split("(")[0]) and " > " not in cell


def test_hcalls_and_ucalls_are_decoded():
    assert describe_hcall(H_SVM_PAGE_IN, (0x50000, H_PAGE_IN_SHARED, 16)) == \
        "H_SVM_PAGE_IN(gfn=0x5, flags=H_PAGE_IN_SHARED)"
    assert describe_hcall(H_SVM_PAGE_OUT, (0x50000, 0, 16)) == "H_SVM_PAGE_OUT(gfn=0x5, flags=0)"
    # a page size the kernel refuses: the raw address and the shift
    assert describe_hcall(H_SVM_PAGE_IN, (0x50000, 2, 12)) == \
        "H_SVM_PAGE_IN(gpa=0x50000, flags=0x2, page_shift=12)"
    assert describe_hcall(H_SVM_INIT_DONE, ()) == "H_SVM_INIT_DONE()"
    assert describe_hcall(0xDC, (0, 1, 0x70000)) == "H_REGISTER_VPA(flags=0, vcpuid=1, vpa=0x70000)"
    assert describe_hcall(0x1234, (-1,)) == "hcall 0x1234(0xffffffffffffffff)"  # a register
    assert describe_ucall("UV_PAGE_IN", (1, 0x30000, 0x50000, 0, 16)) == \
        "UV_PAGE_IN(lpid=1, gfn=0x5)"
    assert describe_ucall("UV_REGISTER_MEM_SLOT", (1, 0x200000, 0x100000, 0, 2)) == \
        "UV_REGISTER_MEM_SLOT(lpid=1, gfn=0x20, npages=16, slot=2)"
    assert describe_ucall("UV_UNREGISTER_MEM_SLOT", (1, 2)) == \
        "UV_UNREGISTER_MEM_SLOT(lpid=1, slot=2)"
    assert describe_ucall(UV_SHARE_PAGE, (5, 1)) == "UV_SHARE_PAGE(gfn=0x5, npages=1)"
    assert describe_ucall(UV_ESM, (0, 4)) == "UV_ESM(gfn=0x0, npages=4)"
    assert describe_ucall(UV_ESM, (0, 4, 2, 1)) == \
        "UV_ESM(gfn=0x0, npages=4, share_gfn=0x2, share_npages=1)"
    assert describe_ucall(7, (1, 2)) == "ucall 0x7(0x1, 0x2)"


# --------------------------------------------------------------------------- the engine alone
calls: list[int] = []


@entry(lambda f: calls.append(f["n"]) or f"JOB({f['n']})")
async def job(m, work, n):
    await m.point(f"job {n}")
    await work.send(n)


def pipeline(m):
    """A producer whose ``job`` is an entry point; a consumer names what it receives."""
    work = m.channel("work", 2)

    async def producer():
        for n in range(2):
            await job(m, work, n)

    async def consumer():
        for _ in range(2):
            n = await work.receive()
            m.describe_received(lambda v: f"item {v}", n)
            await m.point(f"handle {n}")

    m.spawn("producer", producer)
    m.spawn("consumer", consumer)


def test_entry_points_and_messages_are_generic_and_cost_nothing_undetailed():
    sc = emu.scenario(name="timeline-pipeline")(pipeline)
    calls.clear()
    plain = emu.run(sc, seed=1)
    assert calls == [] and not plain.trace.where and not plain.trace.received
    again = detailed(plain)
    assert again.trace_hash == plain.trace_hash and calls
    requests, trace = again.trace.requests(), again.trace
    handled = {op: requests[s] for s, op in steps_of(trace, "consumer")}
    # a server serves what it received, named by the sender's request and the message
    assert handled["handle 0"] == ("JOB(0)", "item 0")
    assert handled["handle 1"] == ("JOB(1)", "item 1")
    assert all(requests[s] == (f"JOB({op[-1]})",) for s, op in steps_of(trace, "producer")
               if op.startswith("job "))


def test_a_broken_describer_does_not_end_the_rerun():
    @entry(lambda f: f["missing"])
    async def broken(m):
        await m.point("inside")

    def build(m):
        async def actor():
            await broken(m)
        m.spawn("a", actor)

    plain = emu.run(emu.scenario(name="timeline-broken")(build), seed=0)
    again = detailed(plain)
    assert again.trace_hash == plain.trace_hash and again.violation is None
    assert any(r == ("broken: KeyError: 'missing'",) for r in again.trace.requests().values())
