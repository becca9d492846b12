"""The ``builtin:small`` corpus: Python source of the standard library and of a fixed list of installed packages.

:func:`build_corpus` walks each source's folder, sorts the files by their path inside the package, skips tests,
caches and undecodable files (listed in the manifest with the reason), and writes::

    OUT/manifest.json          python version, per package: version, split, files [{path, sha256, bytes}];
                               per shard: file name, documents, sha256
    OUT/train/NNNN.jsonl       {"text", "path", "package"} per line, shards of <= shard_bytes of text
    OUT/heldout/NNNN.jsonl     the same for the held-out packages (:data:`HELDOUT`)

Train / held-out is by package, so the held-out perplexity measures code the model never saw from any file of
the same project. The output is a pure function of the installed files and the arguments: the same machine (same
Python and package versions, both recorded) gives identical bytes, which the manifest's hashes show.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import sys
import sysconfig
from pathlib import Path

from ..paths import atomic_write_text

STDLIB = "stdlib"
# Installed in the project's environment (pyproject's dependencies and extras); import name -> distribution name.
PACKAGES: dict[str, str] = {
    STDLIB: "",
    "numpy": "numpy", "scipy": "scipy", "optuna": "optuna", "pydantic": "pydantic", "sqlalchemy": "SQLAlchemy",
    "pyarrow": "pyarrow", "networkx": "networkx", "alembic": "alembic",
    "rich": "rich", "jinja2": "Jinja2", "click": "click", "yaml": "PyYAML", "packaging": "packaging",
}
HELDOUT = ("rich", "jinja2", "click", "yaml", "packaging")  # ~2.8 MB of source: ~1M tokens, one 5 MB split
SKIP_DIRS = {"test", "tests", "testing", "__pycache__", "site-packages", "idlelib", "lib2to3", "turtledemo"}
MAX_FILE_BYTES = 400_000  # generated tables (unicode data, big test vectors) teach little code


def package_root(name: str) -> Path:
    """The folder holding ``name``'s source (the standard library's for :data:`STDLIB`)."""
    if name == STDLIB:
        return Path(sysconfig.get_paths()["stdlib"])
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed (the small teacher's corpus lists it)")
    return Path(list(spec.submodule_search_locations)[0])


def package_version(name: str) -> str:
    if name == STDLIB:
        return sys.version.split()[0]
    return importlib.metadata.version(PACKAGES[name])


def source_files(name: str) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """``([(relative path, text)], [skipped {path, reason}])`` of one package, sorted by path."""
    root = package_root(name)
    kept, skipped = [], []
    for file in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        relative = file.relative_to(root).as_posix()
        if SKIP_DIRS & set(file.relative_to(root).parts[:-1]) or file.name.startswith("test_"):
            continue
        data = file.read_bytes()
        if len(data) > MAX_FILE_BYTES:
            skipped.append({"path": relative, "reason": f"over {MAX_FILE_BYTES} bytes"})
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            skipped.append({"path": relative, "reason": "not UTF-8"})
            continue
        if text.strip():
            kept.append((relative, text))
    return kept, skipped


def build_corpus(out: Path, packages: list[str] | None = None, heldout: tuple[str, ...] = HELDOUT,
                 shard_bytes: int = 8_000_000) -> dict:
    """Write the corpus of ``packages`` (default: all of :data:`PACKAGES`) into ``out``; returns the manifest.
    Shards are written before the manifest, each atomically, so a folder with a manifest is complete."""
    names = list(PACKAGES) if packages is None else list(packages)
    if unknown := [n for n in names if n not in PACKAGES]:
        raise ValueError(f"unknown corpus package {unknown[0]!r}; allowed: {', '.join(PACKAGES)}")
    out = Path(out)
    manifest: dict = {"python": sys.version.split()[0], "heldout": [n for n in names if n in heldout],
                      "packages": {}, "shards": {"train": [], "heldout": []}}
    documents: dict[str, list[dict[str, str]]] = {"train": [], "heldout": []}
    for name in names:
        split = "heldout" if name in heldout else "train"
        kept, skipped = source_files(name)
        files = []
        for path, text in kept:
            files.append({"path": path, "sha256": hashlib.sha256(text.encode()).hexdigest(), "bytes": len(text)})
            documents[split].append({"text": text, "path": f"{name}/{path}", "package": name})
        manifest["packages"][name] = {"version": package_version(name), "split": split, "files": files,
                                      "skipped": skipped}
    for split, docs in documents.items():
        shard: list[str] = []
        size = 0
        for doc in docs + [None]:
            if doc is not None:
                shard.append(json.dumps(doc, ensure_ascii=False, sort_keys=True))
                size += len(doc["text"])
            if shard and (doc is None or size >= shard_bytes):
                text = "\n".join(shard) + "\n"
                file = f"{split}/{len(manifest['shards'][split]):04d}.jsonl"
                (out / split).mkdir(parents=True, exist_ok=True)
                atomic_write_text(out / file, text)
                manifest["shards"][split].append({"file": file, "documents": len(shard),
                                                  "sha256": hashlib.sha256(text.encode()).hexdigest()})
                shard, size = [], 0
    manifest["sha256"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def read_documents(corpus: Path, split: str) -> list[dict[str, str]]:
    """The documents of one split, in manifest order."""
    manifest = json.loads((Path(corpus) / "manifest.json").read_text())
    docs = []
    for shard in manifest["shards"][split]:
        docs += [json.loads(line) for line in (Path(corpus) / shard["file"]).read_text().splitlines() if line]
    return docs
