"""Atomic writes under fault injection: a write interrupted halfway leaves the old file (or folder) as it was.

Each writer first saves an "old" version normally, then saves a "new" one while a fault stops its first write to
the target's folder halfway: the data is cut in half and flushed to disk, then either an ``OSError`` (ENOSPC, as a
full disk gives) is raised, or, in a forked child process, the writer hangs there and is killed with SIGKILL. Either way the
old bytes must still be at the target's path. A writer that wrote in place would leave half of the new file there;
merely looking for leftover temporary files (which an in-place writer never leaves) cannot tell.

Faults are injected at the lowest Python call that writes the bytes: ``open`` for files written from Python
(patched for paths inside the test folder only), ``safetensors.torch.save_file`` and ``pyarrow.parquet.write_table``
for the files they write natively.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import select
import signal
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import pytest

from hylo_search import paths

from .helpers import write_study

HALFWAY = b"halfway"  # what a hanging writer sends its parent once half of its data is on disk


def _raise():
    raise OSError(errno.ENOSPC, "No space left on device (injected halfway through a write)")


class _Torn:
    """A file object whose first write puts half of the data on disk, then calls ``on_half``."""

    def __init__(self, handle, on_half):
        self._handle, self._on_half = handle, on_half

    def write(self, data):
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._on_half()

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()
        return False


@contextmanager
def torn_writes(root: Path, on_half):
    """Every write inside ``root`` stops halfway (see the module docstring); ``on_half`` raises or hangs."""
    root = Path(root).resolve()
    real_open = io.open

    def torn_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        inside = isinstance(file, (str, os.PathLike)) and Path(file).resolve().is_relative_to(root)
        return _Torn(handle, on_half) if inside and any(c in mode for c in "wax+") else handle

    def native(real, path_of):
        def write(*args, **kwargs):
            real(*args, **kwargs)
            path = Path(path_of(*args, **kwargs))
            with real_open(path, "rb") as handle:
                data = handle.read()
            with real_open(path, "wb") as handle:
                handle.write(data[: len(data) // 2])
                os.fsync(handle.fileno())
            on_half()
        return write

    import pyarrow.parquet
    import safetensors.torch

    import hylo_search.worker.converted  # noqa: F401  (imported unpatched: it binds save_file at import)

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(io, "open", torn_open))
        stack.enter_context(mock.patch.object(builtins, "open", torn_open))
        stack.enter_context(mock.patch.object(pyarrow.parquet, "write_table", native(
            pyarrow.parquet.write_table, lambda table, where, *a, **k: where)))
        save_file = native(safetensors.torch.save_file, lambda tensors, filename, *a, **k: filename)
        stack.enter_context(mock.patch.object(safetensors.torch, "save_file", save_file))
        stack.enter_context(mock.patch("hylo_search.worker.converted.save_file", save_file))
        yield


# ------------------------------------------------------------------------------------------------ the writers
# Each takes the folder and "old" or "new", writes that version with the package's own writer and returns the
# target path (a file, or a folder for saved models).

def write_helper(folder: Path, version: str) -> Path:
    return paths.atomic_write_text(folder / "notes.json", json.dumps({"version": version, "pad": "x" * 4096}))


def write_manifest(folder: Path, version: str) -> Path:
    from hylo_search.search.storage import Manifest

    Manifest(name=version, storage="sqlite:///study.db", fingerprint=version * 8,
             objectives=[{"metric": "proxy_kl", "direction": "minimize"}], teacher="builtin:tiny-random",
             upcycle={}, version="0").write(folder)
    return folder / paths.MANIFEST


def write_trials_table(folder: Path, version: str) -> Path:
    import optuna
    from optuna.trial import create_trial

    from hylo_search.search.trials import write_trials_table as write

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize"])
    for k in range(2 if version == "old" else 3):
        study.add_trial(create_trial(values=[float(k)], user_attrs={"layout": "A,G,G,G"}))
    return write(study, folder / "trials.parquet", ["proxy_kl"])


def write_layout_export(folder: Path, version: str) -> Path:
    from hylo_search.define.layout_files import write_layout

    return write_layout(paths.export_path(folder, 1), "A,G,G,G" if version == "old" else "A,A,G,G",
                        teacher="builtin:tiny-random", note=version * 200)


def write_converted_mixer(folder: Path, version: str) -> Path:
    import torch

    from hylo_search.worker.converted import save_mixer

    torch.manual_seed(0 if version == "old" else 1)
    path = folder / "cache" / "layers" / "ab" / "ab12.safetensors"
    save_mixer(torch.nn.Linear(16, 16), path)
    return path


def write_probe_results(folder: Path, version: str) -> Path:
    from hylo_search.probes.io import save_results
    from hylo_search.probes.runner import ProbeResults

    records = [{"task": "niah_single_1", "length": 512, "index": i, "score": float(version == "new"), "seconds": 0.1,
                "prediction": version} for i in range(8)]
    json_path, _ = save_results(ProbeResults(records, "generate", {"version": version}), folder / "probes")
    return json_path


def write_saved_model(folder: Path, version: str) -> Path:
    """A saved upcycled model (hylo_model.saving's folder writes), replaced with ``overwrite=True``."""
    from hylo_model.upcycle.save import save_upcycled
    from tests.helpers import tiny_model

    student = tiny_model("A,G" if version == "old" else "G,A")
    return save_upcycled(student, folder / "student", tokenizer=None, overwrite=True)


WRITERS = {
    "hylo_model.atomic": write_helper,
    "manifest": write_manifest,
    "trials.parquet": write_trials_table,
    "layout export": write_layout_export,
    "converted mixer": write_converted_mixer,
    "probe results": write_probe_results,
    "saved model folder": write_saved_model,
}


def snapshot(target: Path) -> dict[str, bytes]:
    """Every byte at ``target``: the file, or each file under the folder by relative path."""
    if target.is_dir():
        return {str(p.relative_to(target)): p.read_bytes() for p in sorted(target.rglob("*")) if p.is_file()}
    return {"": target.read_bytes()}


def hidden(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith(".")}


# ------------------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("name", list(WRITERS))
def test_a_write_that_fails_halfway_leaves_the_old_file(tmp_path, name):
    writer = WRITERS[name]
    target = writer(tmp_path, "old")
    before, leftovers = snapshot(target), hidden(target.parent)
    with torn_writes(tmp_path, _raise), pytest.raises(OSError, match="injected halfway"):
        writer(tmp_path, "new")
    assert snapshot(target) == before
    assert hidden(target.parent) == leftovers  # a failed write removes its temporary file or folder
    assert snapshot(writer(tmp_path, "new")) != before  # unfaulted, the same call does replace it


def kill_halfway(root: Path, write) -> None:
    """Run ``write()`` in a forked child (the modules are already imported: no start-up cost) under
    :func:`torn_writes`; the child tells the parent through a pipe once half of its data is on disk, and the parent
    kills it there with SIGKILL."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            os.close(read_end)
            with torn_writes(root, lambda: (os.write(write_end, HALFWAY), time.sleep(300))):
                write()
            os.write(write_end, b"finished without a fault")
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 120)
        assert ready and os.read(read_end, 100) == HALFWAY
    finally:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(read_end)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_writer_killed_halfway_leaves_the_old_file(tmp_path, name):
    writer = WRITERS[name]
    target = writer(tmp_path, "old")
    before = snapshot(target)
    kill_halfway(tmp_path, lambda: writer(tmp_path, "new"))
    assert snapshot(target) == before


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_resumed_study_removes_what_a_killed_driver_left_half_written(tmp_path):
    from hylo_search.search.run import options_for, run_study
    from hylo_search.study import load_study

    loaded = load_study(write_study(tmp_path, trials=1))
    options = options_for(loaded, out=str(tmp_path / "run"))
    run_study(loaded, options)
    folder = options.folder
    before = {name: (folder / name).read_bytes() for name in (paths.TRIALS_TABLE, paths.MANIFEST)}
    kill_halfway(folder, lambda: write_trials_table(folder, "new"))
    kill_halfway(folder, lambda: write_manifest(folder, "new"))
    assert len(hidden(folder) - {paths.DRIVER_LOCK}) == 2  # the two half-written temporary files
    assert {name: (folder / name).read_bytes() for name in before} == before
    run_study(loaded, options)  # the resume has nothing left to run, and cleans up
    assert hidden(folder) - {paths.DRIVER_LOCK} == set()


def test_the_helper_keeps_the_old_file_when_the_writer_raises_after_writing(tmp_path):
    """An error inside ``atomic_path``'s block, after the data is all written, and a failed rename: both leave the
    old file and no temporary one."""
    from hylo_model.atomic import atomic_path, atomic_write_text

    target = atomic_write_text(tmp_path / "table.parquet", "old")
    with pytest.raises(RuntimeError, match="after writing"):
        with atomic_path(target) as tmp:
            tmp.write_text("new, complete")
            raise RuntimeError("after writing, before renaming")
    with mock.patch("os.replace", side_effect=OSError(errno.EXDEV, "injected rename failure")):
        with pytest.raises(OSError, match="injected rename failure"):
            atomic_write_text(target, "new, complete")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["table.parquet"]
