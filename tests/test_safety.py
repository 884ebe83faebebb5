"""Safe as root (issue 11): names that become paths are checked, nothing on disk is
trusted, the lab gets neither /tmp plants nor the caller's secrets, results go back to
the user who ran sudo. Unit tests: no namespaces (a few need root to chown)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshstress import report, safefs
from meshstress.build import plan, state
from meshstress.cli import cli
from meshstress.errors import InputError, MeshstressError
from meshstress.lab import guest, qemu
from meshstress.lab import runner as lab_runner
from meshstress.model import names, scenario, topofile
from meshstress.model.topology import Link, Node, Segment, Topology

SCENARIO = """
[scenario]
name = {name}
duration = "2s"

[mesh]
generate = "line 2"
routing = "static"

[[traffic]]
name = "echo"
kind = "ping"
from = "n0"
to = "n1"
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown to SUDO_UID)")


# ---------------------------------------------------------------- 1. names


@pytest.mark.parametrize(
    "bad", ["../../../escaped", "a/b", "..", ".hidden", "-rf", "a b", "x" * 65, "é", ""]
)
def test_scenario_name_that_would_leave_results_is_refused(bad: str) -> None:
    with pytest.raises(InputError) as err:
        scenario.loads(SCENARIO.format(name=json.dumps(bad)), "s.toml")
    assert err.value.source == "s.toml" and err.value.field == "scenario.name"


@pytest.mark.parametrize(
    "stem, name",
    [("my scenario", "my_scenario"), ("..x", "x"), ("<scenario 1>", "scenario_1_"),
     ("...", "scenario"), ("ok-1.2", "ok-1.2")],
)  # fmt: skip
def test_scenario_name_from_a_file_name_is_made_safe(tmp_path: Path, stem: str, name: str) -> None:
    text = SCENARIO.replace("name = {name}\n", "")
    assert scenario.loads(text, str(tmp_path / f"{stem}.toml")).name == name


def test_cli_escaping_scenario_name_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text(SCENARIO.format(name='"../../../escaped"'))
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        for args in (["run", "--check", str(f)], ["run", "--where", "host", str(f)]):
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 2, result.output
            assert result.output.strip().splitlines() == [
                f"meshstress: {f}: scenario.name: '../../../escaped' must start with a letter "
                "or digit and hold only letters, digits, '.', '_', '-'"
            ]
    finally:
        os.chdir(cwd)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_run_folder_outside_results_is_refused() -> None:
    from meshstress.cli.run import run_folder

    assert run_folder("ok", "1", None) == Path("results").absolute() / "ok-1"
    with pytest.raises(MeshstressError, match="outside"):
        run_folder("../../x", "1", None)


def test_flow_and_process_names_are_file_names() -> None:
    for bad in ("../x", "a/b", ".", "..", "-x", "a\nb"):
        assert names.flow_problem(bad) is not None
        assert names.process_problem(bad) is not None
    assert names.flow_problem("cbr-1.a_b") is None
    with pytest.raises(InputError) as err:
        names.check("../x", "f.toml", "process[0].name", names.process_problem)
    assert str(err.value).startswith("f.toml: process[0].name: '../x' ")


def test_flow_name_with_a_slash_names_the_field() -> None:
    text = SCENARIO.format(name='"s"') + 'name = "../up"\n'
    text = text.replace('name = "echo"\n', "")
    with pytest.raises(InputError) as err:
        scenario.loads(text, "s.toml")
    assert err.value.field == "traffic[0].name"


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "-x", "a.b", "x" * 16])
def test_node_names_in_toml_and_meshnet_json_cannot_be_paths(bad: str) -> None:
    with pytest.raises(InputError) as err:
        topofile.loads_toml(f"nodes = [{json.dumps(bad)}, \"b\"]\n", "t.toml")
    assert err.value.field == "nodes[0]"
    data = {"nodes": [{"id": bad}, {"id": "b"}], "links": [{"source": bad, "target": "b"}]}
    with pytest.raises(InputError) as err:
        topofile.loads_meshnet_json(json.dumps(data), "t.json")
    assert err.value.source == "t.json" and err.value.field == "nodes[0].id"


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "-x"])
def test_plan_refuses_node_names_from_python_that_would_be_paths(bad: str) -> None:
    topo = Topology("t", [Node(bad), Node("b")], [Link(bad, "b")])
    with pytest.raises(ValueError, match="node name"):
        plan.make_plan(topo, "ab12")
    seg = Topology("t", [Node("a"), Node("b")], [], [Segment(bad, ["a", "b"])])
    with pytest.raises(ValueError, match="segment name"):
        plan.make_plan(seg, "ab12")


@pytest.mark.parametrize("bad", ["../../etc/x", "AB", "a/b", "toolong7", ".."])
def test_run_ids_are_checked_before_they_become_paths(
    bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "STATE_DIR", str(tmp_path / "a" / "state"))
    (tmp_path / "a" / "state").mkdir(mode=0o700, parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "x.json").write_text(json.dumps({"run_id": "x", "topology": "t"}))
    with pytest.raises(InputError):
        state.state_path(bad)
    with pytest.raises(InputError):
        state.load(bad)
    result = CliRunner().invoke(cli, ["status", "--run", bad])
    assert result.exit_code == 2 and "--run: run:" in result.output


def test_a_state_file_claiming_another_id_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "STATE_DIR", str(tmp_path))
    (tmp_path / "ab.json").write_text(json.dumps({"run_id": "../../x", "topology": "t"}))
    (tmp_path / "cd.json").write_text(json.dumps({"run_id": "cd", "topology": "t"}))
    assert [r.run_id for r in state.all_runs()] == ["cd"]
    assert state.load("ab") is None


# ---------------------------------------------------------------- 1. safe writes


def test_report_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for name in ("summary.txt", "junit.xml", "results.json", "results.json.tmp"):
        (out / name).symlink_to(victim)
    report.write_all({"run": {"scenario": "s"}, "passed": True, "checks": []}, out)
    assert victim.read_text() == "precious"
    for name in ("summary.txt", "junit.xml", "results.json"):
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0
    assert json.loads((out / "results.json").read_text())["passed"] is True


def test_run_folder_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "run").symlink_to(elsewhere)
    with pytest.raises(MeshstressError, match="symbolic link"):
        report.write_all({"run": {}, "passed": True}, tmp_path / "run")
    with pytest.raises(MeshstressError, match="symbolic link"):
        safefs.write_file(tmp_path / "run", "x", "y")
    assert list(elsewhere.iterdir()) == []


def test_run_folder_writable_by_others_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(MeshstressError, match="writable by others"):
        safefs.make_dir(d)


# ---------------------------------------------------------------- 2. trust nothing on disk


def test_state_dir_someone_else_could_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "state"
    d.mkdir()
    d.chmod(0o777)
    (d / "ab12.json").write_text(json.dumps({"run_id": "ab12", "topology": "t",
                                             "files": ["/etc"]}))  # fmt: skip
    monkeypatch.setattr(state, "STATE_DIR", str(d))
    with pytest.raises(MeshstressError, match="writable by others"):
        state.all_runs()
    with pytest.raises(MeshstressError, match="writable by others"):
        state.load("ab12")
    with pytest.raises(MeshstressError, match="writable by others"):
        state.RunState("cd34", "t").save()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real")
    (tmp_path / "real").mkdir(mode=0o700)
    monkeypatch.setattr(state, "STATE_DIR", str(link))
    with pytest.raises(MeshstressError, match="symbolic link"):
        state.all_runs()


def test_state_dir_of_ours_is_made_and_kept_0700(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "state"
    monkeypatch.setattr(state, "STATE_DIR", str(d))
    state.RunState("ab12", "t").save()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    d.chmod(0o755)
    assert [r.run_id for r in state.all_runs()] == ["ab12"]
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_teardown_keeps_only_what_carries_the_run_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "STATE_DIR", str(tmp_path))
    st = state.RunState(
        "ab12",
        "t",
        namespaces=["ms-ab12-n0", "ms-ab12-~s", "other", "ms-cd34-n0", "ms-ab12-", "ms-ab12-/../x"],
        host_links=["ms-ab12-w", "eth0", "ms-cd34-w"],
        files=[str(tmp_path / "ms-ab12-files"), "/", "/etc", str(tmp_path / "ms-ab12-files/.."),
               str(tmp_path / "ms-cd34-files"), str(tmp_path / "lab")],
    )  # fmt: skip
    nss, links, files, problems = state.removable(st)
    assert nss == ["ms-ab12-n0", "ms-ab12-~s"]
    assert links == ["ms-ab12-w"]
    assert files == [str(tmp_path / "ms-ab12-files")]
    assert len(problems) == 4 + 2 + 5 and all(p.startswith("refusing") for p in problems)


def test_lab_state_dir_planted_in_tmp_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not root: /tmp/meshstress-lab-UID made by someone else (here: world-writable, a
    symlink) is not trusted; a fresh private directory is used instead."""
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 4242 if os.getuid() else 4242)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(lab_runner, "_FALLBACK", {}, raising=False)
    planted = tmp_path / f"meshstress-lab-{os.geteuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    d = lab_runner.state_dir()
    assert d != planted and d.parent == tmp_path
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and not d.is_symlink()


def test_lab_state_dir_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    for bad_uid in (os.geteuid() + 1,):
        st = os.lstat(d)
        fake = os.stat_result((st.st_mode, *st[1:4], bad_uid, *st[5:]))
        assert "belongs to uid" in (safefs.dir_problem(fake, {os.geteuid()}) or "")
    link = tmp_path / "l"
    link.symlink_to(d)
    with pytest.raises(MeshstressError, match="symbolic link"):
        safefs.private_dir(link)


def test_kvm_probe_cache_lives_in_the_checked_lab_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab_runner, "_FALLBACK", {os.geteuid(): tmp_path}, raising=False)
    assert qemu._probe_cache() == tmp_path / "kvm-probe.json"
    assert not str(qemu._probe_cache()).startswith("/tmp/meshstress-kvm-probe")


def test_kvm_probe_cache_write_does_not_follow_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab_runner, "_FALLBACK", {os.geteuid(): tmp_path}, raising=False)
    monkeypatch.delenv("MESHSTRESS_LAB_ACCEL", raising=False)
    monkeypatch.setattr(qemu.os, "access", lambda p, mode: True)
    monkeypatch.setattr(qemu, "_probe_kvm", lambda exe: False)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "kvm-probe.json").symlink_to(tmp_path / "missing")
    assert qemu.kvm_usable("qemu") is False
    assert json.loads((tmp_path / "kvm-probe.json").read_text()) == {"kvm": False}
    assert not (tmp_path / "kvm-probe.json").is_symlink() and not (tmp_path / "missing").exists()


class _K:
    def bind_mounts(self) -> list[tuple[str, str]]:
        return []


def test_lab_guest_gets_only_allow_listed_environment(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "LC_ALL": "C", "TERM": "xterm",
        "MESHSTRESS_REQUIRE": "1", "PYTHONPATH": "/src", "PYTEST_ADDOPTS": "-x", "CI": "true",
        "VIRTUAL_ENV": "/v", "GITHUB_TOKEN": "ghp_secret", "AWS_SECRET_ACCESS_KEY": "k",
        "SSH_AUTH_SOCK": "/tmp/agent", "MESHSTRESS_API_TOKEN": "t", "DBUS_SESSION_BUS_ADDRESS": "x",
        "SUDO_COMMAND": "/bin/sh", "LD_PRELOAD": "/evil.so",
    }  # fmt: skip
    run = lab_runner._Run(tmp_path, tmp_path / "s.json", None)
    lab_runner._prepare(run, ["true"], "/", env, _K(), None)  # type: ignore[arg-type]
    text = (run.xchg / "env").read_text()
    got = {line.split("=", 1)[0].removeprefix("export ") for line in text.splitlines()}
    assert got == {"PATH", "HOME", "LANG", "LC_ALL", "TERM", "MESHSTRESS_REQUIRE", "PYTHONPATH",
                   "PYTEST_ADDOPTS", "CI", "VIRTUAL_ENV",
                   guest.GUEST_ENV}  # fmt: skip  (the lab's own mark: it runs in the lab)
    assert f"export {guest.GUEST_ENV}='1'" in text or f"export {guest.GUEST_ENV}=1" in text
    assert "secret" not in text and "evil" not in text
    assert guest.env_file({"A": "b"})  # the quoting itself is unchanged


# ---------------------------------------------------------------- 4. give results back


@needs_root
def test_run_folder_and_new_results_dir_go_back_to_the_sudo_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sudo meshstress run`: results/ (made by meshstress) and the run folder, with every
    file in it, belong to SUDO_UID/SUDO_GID afterwards. The run itself is faked (it needs
    namespaces; tests/test_safety_host.py runs a real one)."""
    from meshstress import runner

    def fake_run(sc, out_dir, say=None, probes=None):  # type: ignore[no-untyped-def]
        (out_dir / "raw").mkdir(parents=True)  # as runner.run does
        (out_dir / "raw" / "echo.ping.txt").write_text("x")
        results = {"run": {"scenario": sc.name}, "passed": True, "checks": []}
        report.write_all(results, out_dir)
        return results

    monkeypatch.setattr(runner, "run", fake_run)
    monkeypatch.setenv("SUDO_UID", "4321")
    monkeypatch.setenv("SUDO_GID", "4322")
    f = tmp_path / "s.toml"
    f.write_text(SCENARIO.format(name='"mine"'))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["run", "--where", "host", str(f)])
    assert result.exit_code == 0, result.output
    entries = [tmp_path / "results", *(tmp_path / "results").rglob("*")]
    assert len(entries) >= 6  # results/, the folder, raw/, a raw file, results.json, ...
    assert {(os.lstat(p).st_uid, os.lstat(p).st_gid) for p in entries} == {(4321, 4322)}
    assert os.lstat(tmp_path).st_uid == 0  # not above results/


@needs_root
def test_give_back_changes_symlinks_not_their_targets(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("x")
    run = tmp_path / "run"
    run.mkdir()
    (run / "link").symlink_to(victim)
    (run / "f").write_text("y")
    assert safefs.give_back(run, (4321, 4322)) == 3
    assert os.lstat(run / "link").st_uid == 4321 and os.lstat(run / "f").st_uid == 4321
    assert victim.stat().st_uid == 0


@needs_root
def test_lab_share_output_made_by_root_goes_back_since_the_start(tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "out.xml").write_text("guest")
    os.chown(tmp_path / "new", 1000, 1000)  # already the user's: left as it is
    newest = os.lstat(tmp_path / "new" / "out.xml").st_ctime
    # made before `since`: not ours to give (no sleep: `since` lies past every ctime)
    assert safefs.give_back_new(tmp_path, newest + 1.0, (4321, 4322)) == 0
    assert os.lstat(tmp_path / "new" / "out.xml").st_uid == 0
    changed = safefs.give_back_new(tmp_path, newest - 1.0, (4321, 4322))
    assert changed == 1 and os.lstat(tmp_path / "new" / "out.xml").st_uid == 4321
    assert os.lstat(tmp_path / "new").st_uid == 1000


def test_no_sudo_no_give_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SUDO_UID", raising=False)
    assert safefs.sudo_owner() is None and safefs.give_back(tmp_path) == 0


def test_state_dir_inside_a_directory_others_can_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever can write to the parent can swap a good state dir for their own."""
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o777)  # no sticky bit
    (parent / "state").mkdir(mode=0o700)
    monkeypatch.setattr(state, "STATE_DIR", str(parent / "state"))
    with pytest.raises(MeshstressError, match="others can write"):
        state.all_runs()
    parent.chmod(0o1777)  # sticky, like /tmp: others cannot rename our entries
    assert state.all_runs() == []
