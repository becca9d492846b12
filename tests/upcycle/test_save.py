"""Saved folders never replace what they did not write: a user's folder or file at the output path survives every
save (Python API, training run folder, and ``hylo-search upcycle`` through a subprocess), and only a previous output
of the same kind is replaced, and only with ``overwrite``. Saved folders get normal permissions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from hylo_model import save_upcycled
from hylo_model.saving import MARKER, OutputPathError, saved_kind
from hylo_model.train.checkpoint import RunDir
from tests.helpers import tiny_model, tiny_teacher

UMASK = os.umask(0)
os.umask(UMASK)


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (hidden ones too) and the bytes of each file; the siblings of ``root`` as well."""
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    found = {str(p.relative_to(root.parent)): (p.read_bytes() if p.is_file() else None) for p in paths}
    found.update({f"sibling:{p.name}": None for p in root.parent.iterdir() if p != root})
    return found


def _user_folder(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "precious.txt").write_text("do not lose me\n")
    (path / "sub" / "notes.md").write_text("# notes\n")
    return path


@pytest.fixture(scope="module")
def student():
    return tiny_model("A,L24,M,G")


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("kind", ["user folder", "user file", "hidden file only", "link", "other kind"])
def test_save_refuses_what_it_did_not_write(tmp_path, student, kind, overwrite):
    out = tmp_path / "out"
    if kind == "user folder":
        _user_folder(out)
    elif kind == "user file":
        out.write_text("a file\n")
    elif kind == "hidden file only":
        out.mkdir()
        (out / ".keep").write_text("")
    elif kind == "link":
        _user_folder(tmp_path / "target")
        out.symlink_to(tmp_path / "target")
    else:
        _user_folder(out)
        (out / MARKER).write_text(json.dumps({"kind": "final"}))
    before = _snapshot(tmp_path)
    with pytest.raises(OutputPathError, match=rf"^{out}: .*(give a new or empty folder)") as caught:
        save_upcycled(student, out, overwrite=overwrite)
    assert "\n" not in str(caught.value)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("existing", ["absent", "empty folder", "missing parents"])
def test_save_writes_a_loadable_marked_folder_with_normal_permissions(tmp_path, student, existing):
    out = tmp_path / "a" / "b" / "out" if existing == "missing parents" else tmp_path / "out"
    if existing == "empty folder":
        out.mkdir()
    assert save_upcycled(student, out) == out
    assert saved_kind(out) == "upcycled"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_hylo.HyLoConfig",
                                  "AutoModelForCausalLM": "modeling_hylo.HyLoForCausalLM"}
    assert {"configuration_hylo.py", "modeling_hylo.py", "model.safetensors", MARKER} <= {p.name for p in
                                                                                         out.iterdir()}
    for path in [out, *out.rglob("*")]:
        want = (0o777 if path.is_dir() else 0o666) & ~UMASK
        assert stat.S_IMODE(path.stat().st_mode) == want, (path, oct(path.stat().st_mode))


def test_previous_output_is_replaced_only_with_overwrite(tmp_path, student):
    out = save_upcycled(student, tmp_path / "out")
    first = (out / "model.safetensors").read_bytes()
    other = tiny_model("A,L24,M,G", seed=1)
    with pytest.raises(OutputPathError, match="holds a previous upcycled model; pass --overwrite"):
        save_upcycled(other, out)
    assert (out / "model.safetensors").read_bytes() == first
    save_upcycled(other, out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


class _OneProcess(SimpleNamespace):
    is_main_process = True
    process_index = 0

    def wait_for_everyone(self) -> None:
        pass


def test_run_folder_replaces_only_its_own_final_and_checkpoints(tmp_path, student):
    run = RunDir(tmp_path / "run", _OneProcess())
    run.begin({"fingerprint": "x"}, "recipe: x\n")
    first = run.write_final(student, None, {"loss": 1.0})
    assert saved_kind(first) == "final" and (first / "modeling_hylo.py").is_file()
    run.write_final(student, None, {"loss": 0.5})  # a rerun killed before result.json rewrites its own final
    (first / MARKER).unlink()
    (first / "precious.txt").write_text("mine\n")
    before = _snapshot(first)
    with pytest.raises(OutputPathError, match="does not hold a previous trained model"):
        run.write_final(student, None, {"loss": 0.25})
    assert _snapshot(first) == before

    saved = run.save(0, "align", 10, student, {"step": 10})
    assert saved_kind(saved) == "checkpoint" and run.latest().path == saved
    run.save(0, "align", 10, student, {"step": 10, "stage_done": True})
    assert run.latest().state()["stage_done"]
    (saved / MARKER).unlink()
    (saved / "trainer_state.json").unlink()
    (saved / "notes.md").write_text("mine\n")
    with pytest.raises(OutputPathError, match="does not hold a previous training checkpoint"):
        run.save(0, "align", 10, student, {"step": 10})
    assert (saved / "notes.md").read_text() == "mine\n"


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher") / "qwen2"
    tiny_teacher("qwen2").save_pretrained(folder)
    return folder


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "hylo_search.cli", "upcycle", *args], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("kind", ["user folder", "user file"])
def test_upcycle_command_leaves_user_data_alone(tmp_path, teacher_dir, kind, overwrite):
    out = _user_folder(tmp_path / "out") if kind == "user folder" else tmp_path / "out"
    if kind == "user file":
        out.write_text("a file\n")
    before = _snapshot(tmp_path)
    done = _cli(str(teacher_dir), "--layout", "A,L16,M,G", "--qk-rope-head-dim", "8", "--out", str(out), *overwrite)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"hylo-search upcycle: error: {out}: ") and "Traceback" not in done.stderr
    assert _snapshot(tmp_path) == before


def test_upcycle_command_echoes_a_long_layout_cut(tmp_path, teacher_dir):
    layout = ",".join(["A", "G"] * 10_000)
    done = _cli(str(teacher_dir), "--layout", layout, "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and len(done.stderr) < 400, done.stderr
    assert "has more than 4096 layers" in done.stderr and not (tmp_path / "out").exists()


def test_upcycle_command_overwrites_its_own_output(tmp_path, teacher_dir):
    out = tmp_path / "out"
    args = [str(teacher_dir), "--layout", "A,L16,M,G", "--qk-rope-head-dim", "8", "--no-check", "--out", str(out)]
    assert _cli(*args).returncode == 0
    again = _cli(*args)
    assert again.returncode == 2 and "holds a previous upcycled model; pass --overwrite" in again.stderr
    assert _cli(*args, "--overwrite").returncode == 0
    assert saved_kind(out) == "upcycled" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
