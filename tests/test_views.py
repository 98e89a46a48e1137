"""End-of-run views: a machine offers named texts about its state (``Machine.view``), a run
carries them (``RunResult.views``), ``emu run --view NAME`` prints them. The nested machine
offers ``radix`` (the debugfs file, as ``debugfs_radix_read`` writes it) and ``rmap``."""

from __future__ import annotations

import pytest

import emu
from emu.actors.guest_code import Ld, Map, St
from emu.errors import EmuError, ScenarioError
from emu.kvm.nested_rmap import n_rmap_gpa, n_rmap_lpid
from emu.machines.nested import NestedMachine
from emu.scenarios.nested import EA, ENTER, common
from emu.sim import replay as replay_file


@pytest.fixture
def machines(monkeypatch):
    """The NestedMachine of every schedule the nested suite builds, newest last."""
    built: list[NestedMachine] = []

    class Recorded(NestedMachine):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(common, "NestedMachine", Recorded)
    return built


def _sections(radix: str) -> dict[int, list[str]]:
    """The radix file's tables by lpid (0: L1's), each its header and leaf lines."""
    out: dict[int, list[str]] = {}
    for block in radix.split("\nNested LPID "):
        lpid = 0 if block.startswith("pgdir: ") else int(block.split(":")[0])
        out[lpid] = block.splitlines()
    return out


def _leaf_lines(tree) -> list[str]:
    return [f" {leaf.gpa:x}: {leaf.pte:x} {leaf.shift}" for leaf in tree.leaves()]


def test_the_radix_view_of_tlbiel_migrate_lists_exactly_the_shadow_leaves(machines):
    """The API: every table of the file is exactly its tree's leaves, L1's table first and
    then each nested guest in ascending lpid; and every shadow leaf has its rmap entry."""
    result = emu.run("tlbiel-migrate", seed=0)
    assert result.ok and set(result.views) == {"radix", "rmap"}
    mach = machines[-1]
    sections = _sections(result.view("radix"))
    guests = sorted(mach.l1.idr.items())
    assert list(sections) == [0, *(lpid for lpid, _ in guests)] == [0, 1]
    assert sections[0] == [f"pgdir: {mach.mmu.pgtable.root:x}", *_leaf_lines(mach.mmu.pgtable)]
    for lpid, gp in guests:
        tree = gp.shadow_pgtable
        assert sections[lpid] == [f"{lpid}: pgdir: {tree.root:x}", *_leaf_lines(tree)]
        assert len(_leaf_lines(tree)) == 2  # EA's first page, then the page it was moved to
    shown = [(int(e.split()[0], 16), line.split(":")[0].strip())
             for line in result.view("rmap").splitlines()[1:]
             for e in line.split(": ", 1)[1].split("; ")]
    held = [(entry, f"gfn {slot.base_gfn + off:#x}") for slot, words in mach.mmu.rmap.items()
            for off, word in sorted(words.items()) for entry in word.kernel_walk()]
    assert shown == held
    assert sorted((n_rmap_lpid(e), n_rmap_gpa(e)) for e, _ in held) == sorted(
        (lpid, leaf.gpa) for lpid, gp in guests for leaf in gp.shadow_pgtable.leaves())


def test_the_snapshot_is_the_file_debugfs_radix_read_writes():
    """Read in the schedule (locks, scheduling points) and at its end (the view), the file is
    the same when nothing ran in between (here with two nested guests)."""
    seen: dict[str, str] = {}

    @emu.scenario("test-view-dump")
    def build(m):
        mach = NestedMachine(m, accept={"*": {0}, "H_ENTER_NESTED": ENTER})

        async def l1(h):
            await h.boot()
            for lpid in (1, 3):
                h.create_guest(lpid)
                await h.run(h.l2_vcpu(lpid, 0, [Map(EA, lpid << 16), St(EA, lpid),
                                                Ld(EA, lpid), Map(EA, 5 << 16), St(EA, 7)]))
            seen["read"] = await mach.radix_dump()

        mach.l1_vcpu(l1, 0)

    result = emu.run(build)
    assert result.ok and "\nNested LPID 3: pgdir: " in seen["read"]
    assert result.views["radix"] == seen["read"]


def test_views_are_taken_after_a_violation_and_by_a_hunt_that_finds_one():
    run = emu.run("tlbiel-migrate", seed=0, quirks=["no-prev-cpu-flush"])
    assert run.violation.kind == "integrity"
    assert "Nested LPID 1: pgdir:" in run.views["radix"]
    hunt = emu.hunt("tlbiel-migrate", schedules=20, quirks=["no-prev-cpu-flush"])
    assert hunt.found is not None and "Nested LPID 1: pgdir:" in hunt.found.views["radix"]


def test_an_unknown_view_is_a_clear_error():
    result = emu.run("tlbiel-migrate", seed=0)
    with pytest.raises(EmuError, match=r"offers no view 'radx' \(offered: radix, rmap\); did "
                                       r"you mean radix\?"):
        result.view("radx")
    with pytest.raises(EmuError, match=r"offers no view 'radix' \(offered: none\)"):
        emu.run("lost-update", seed=0).view("radix")


def test_a_broken_view_costs_nothing_but_its_text_and_names_are_unique():
    @emu.scenario("test-view-broken")
    def broken(m):
        m.view("ratio", lambda: f"{1 / 0}")
        m.spawn("idle", _idle)

    result = emu.run(broken)
    assert result.ok and result.views == {
        "ratio": "(the view failed: ZeroDivisionError: division by zero)\n"}

    @emu.scenario("test-view-twice")
    def twice(m):
        m.view("same", str)
        m.view("same", str)

    with pytest.raises(ScenarioError, match="two views named 'same'"):
        emu.run(twice)


async def _idle() -> None:
    pass


# ----------------------------------------------------------------------------- the command
def test_emu_run_view_prints_the_radix_file(cli):
    r = cli("run", "tlbiel-migrate", "--view", "radix")
    assert r.status == 0, r.err
    verdict, header, *dump = r.out.splitlines()
    assert verdict.endswith(": clean") and header == "view radix:"
    assert "\n".join(dump) + "\n" == emu.run("tlbiel-migrate", seed=0).views["radix"]
    assert "Nested LPID 1: pgdir: " in r.out


def test_emu_run_names_the_views_and_refuses_an_unknown_one_after_the_result(cli):
    plain = cli("run", "tlbiel-migrate")
    assert plain.status == 0 and "views: radix, rmap (--view NAME shows one)" in plain.out
    bad = cli("run", "tlbiel-migrate", "--view", "rmap", "--view", "radx")
    assert bad.status == 2
    assert bad.out.splitlines()[0] == plain.out.splitlines()[0]  # the run's result stays
    assert "view rmap:" in bad.out and "gfn 0x" in bad.out
    assert bad.err.strip() == ("emu: error: scenario tlbiel-migrate offers no view 'radx' "
                               "(offered: radix, rmap); did you mean radix?")
    none = cli("run", "lost-update", "--view", "radix")
    assert none.status == 2 and "(offered: none)" in none.err and "lost-update seed 0" in none.out


def test_emu_replay_view(cli, tmp_path):
    result = emu.run("tlbiel-migrate", seed=3, quirks=["no-prev-cpu-flush"])
    path = replay_file.save(tmp_path / "r.json", result)
    r = cli("replay", str(path), "--view", "rmap")
    assert r.status == (1 if result.violations else 0) and "matched" in r.out
    assert r.out.endswith("view rmap:\n" + result.views["rmap"])
