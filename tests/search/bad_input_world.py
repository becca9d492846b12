"""The shared ground of the bad-input tests: teachers good and bad, data files, the user's own files and folders, a
finished study, a folder nobody can write in; and the one check every case makes (exit 2, one line, no traceback,
every folder as it was)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from hylo_search.cli import main
from hylo_search.define.teachers import teacher_directory

from .helpers import BASE_STUDY, merge


@dataclass
class World:
    """Folders shared by every case (module scope): teachers good and bad, data files, the user's own files, a
    finished study, and a folder this process cannot write in."""

    root: Path
    teacher: Path
    study: Path
    complete: int  # a completed trial of the study
    pruned: int  # an infeasible trial of the study
    unwritable: Path


def unwritable_folder(root: Path) -> Path:
    """A folder without write permission; root ignores permissions, so for root: sysfs, which nobody writes in."""
    folder = root / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return folder
    os.close(fd)
    os.unlink(name)
    return Path("/sys/kernel")



def build_world(root: Path) -> World:
    """The shared folders under ``root``; :func:`release_world` undoes its permission change."""
    teacher = teacher_directory("builtin:tiny-random", root / "cache")
    for name in ("t_noweights", "t_truncated", "t_garbage", "t_noconfig"):
        shutil.copytree(teacher, root / name)
    (root / "t_noweights" / "model.safetensors").unlink()
    weights = (teacher / "model.safetensors").read_bytes()
    (root / "t_truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (root / "t_garbage" / "model.safetensors").write_bytes(hashlib.sha512(b"garbage").digest() * 64)
    (root / "t_noconfig" / "config.json").unlink()
    (root / "user").mkdir()
    (root / "user" / "precious.txt").write_text("the user's own file\n")
    (root / "user" / "sub").mkdir()
    (root / "user" / "sub" / "notes.md").write_text("notes\n")
    (root / "afile").write_text("a file of the user's\n")
    (root / "precious.json").write_text('{"mine": true}\n')
    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("  \n\n\t\n")
    (root / "notext.jsonl").write_text('{"body": "no text field"}\n')
    (root / "nodata").mkdir()
    (root / "nodata" / "readme.md").write_text("not a .txt or .jsonl file\n")
    (root / "layout_no_teacher.yaml").write_text("layout: {code: 'A,G,A,G'}\n")
    (root / "layout_bad_upcycle.yaml").write_text(f"layout: A,G,A,G\nteacher: {teacher}\nupcycle: 5\n")
    (root / "layout_bad_code.yaml").write_text("layout: {code: 'A,Q,A,G'}\n")
    (root / "layout_good.yaml").write_text(f"layout: A,G,A,G\nteacher: {teacher}\nupcycle: {{qk_rope_head_dim: 8}}\n")
    (root / "layout_malformed.yaml").write_text("layout: [unclosed\n")
    (root / "bad_manifest").mkdir()
    (root / "bad_manifest" / "manifest.json").write_text(json.dumps(dict(
        name="x", storage="nonsense", fingerprint="", objectives=[], teacher="", upcycle={}, version="")))
    (root / "garbage_manifest").mkdir()
    (root / "garbage_manifest" / "manifest.json").write_text("{not json")
    study_file = write_study_file(root, {"name": "done"})
    folder = root / "done_study"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["study", str(study_file), "--trials", "2", "--out", str(folder)]) == 0
    import optuna
    from optuna.trial import TrialState

    trials = optuna.load_study(study_name="done", storage=f"sqlite:///{folder / 'study.db'}").trials
    complete = next(t.number for t in trials if t.state == TrialState.COMPLETE)
    pruned = next(t.number for t in trials if t.state == TrialState.PRUNED)
    unwritable = unwritable_folder(root)
    return World(root, teacher, folder, complete, pruned, unwritable)


def release_world(world: World) -> None:
    (world.root / "readonly").chmod(0o755)


def write_study_file(folder: Path, overrides: dict, drop: tuple[str, ...] = (), name: str | None = None) -> Path:
    data = merge(BASE_STUDY, overrides)
    for key in drop:
        data.pop(key)
    path = folder / f"{name or data.get('name', 'bad')}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def snapshot(*folders: Path) -> dict[str, str]:
    """Every path under ``folders`` with a digest of its contents (folders as '/')."""
    seen = {}
    for folder in folders:
        if not folder.exists():
            continue
        for path in sorted(folder.rglob("*")):
            seen[str(path)] = "/" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return seen



def expect_one_line(argv: list[str], expected: list[str], folders: list[Path], capsys) -> str:
    capsys.readouterr()
    before = snapshot(*folders)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (argv, code, out, err)
    assert len(lines) == 1 and lines[0].startswith("hylo-search") and ": error: " in lines[0], err
    assert "Traceback" not in out + err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert snapshot(*folders) == before
    return lines[0]


def argv_of(template: str, world: World, case: Path) -> list[str]:
    names = dict(root=world.root, teacher=world.teacher, done=world.study, unwritable=world.unwritable, case=case,
                 study=case / "t4.yaml", complete=world.complete, pruned=world.pruned)
    return [part.format(**names) for part in template.split()]

