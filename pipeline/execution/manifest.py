"""Run manifests: a small JSON file per run, enough to finish or reproduce it.

``<db folder>/runs/<run_id>.manifest.json`` holds the resolved job (file text and hash), the
request version and model, the input files with fingerprints, the state, counts, cost so far and
the exact command that resumes the run. The same document is stored in the ``runs`` table.

The file is rewritten atomically (write a temporary file, then rename) every couple of seconds
while a run is going, so ``pipeline status`` can read it from another terminal while DuckDB's
single writer holds the database. It never contains an API key: keys live in the environment
only and nothing here reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError
from ..sources import Fingerprint, fingerprint

__all__ = [
    "changed_inputs",
    "find_manifest",
    "latest_manifest",
    "manifest_path",
    "read_manifest",
    "resume_command",
    "write_manifest",
]

SUFFIX = ".manifest.json"


def runs_dir(db: str | os.PathLike[str]) -> Path:
    """Where a database's run manifests and logs live."""
    return Path(db).resolve().parent / "runs"


def manifest_path(db: str | os.PathLike[str], run_id: str) -> Path:
    return runs_dir(db) / f"{run_id}{SUFFIX}"


def resume_command(run_id: str, db: str) -> str:
    return f"pipeline resume {run_id} --db {db}"


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    """Replace the manifest at ``path`` atomically: a reader sees the old or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no run manifest at {path}") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read run manifest {path}: {exc}") from exc
    if not isinstance(data, dict) or "run_id" not in data:
        raise ConfigError(f"{path} is not a run manifest")
    return data


def find_manifest(run: str, db: str) -> Path:
    """A manifest from what the user typed: a path to one, or a run id next to ``db``."""
    candidate = Path(run)
    if candidate.suffix == ".json" or candidate.exists():
        return candidate
    path = manifest_path(db, run)
    if not path.exists():
        raise ConfigError(
            f"no run {run!r} next to {db} (looked for {path}); "
            "pass the run id shown by 'pipeline runs', or the manifest's path, and --db"
        )
    return path


def latest_manifest(db: str) -> Path | None:
    folder = runs_dir(db)
    manifests = sorted(folder.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
    return manifests[-1] if manifests else None


def fingerprints(files: Sequence[Path]) -> list[Fingerprint]:
    """Size, modification time and content hash of every input file (reads each once)."""
    return [fingerprint(path) for path in files]


def changed_inputs(recorded: Sequence[Mapping[str, Any]]) -> list[str]:
    """Descriptions of the recorded input files that are not what they were.

    Size and modification time are compared first; a file whose times changed but whose
    content hash did not (it was copied or touched) counts as unchanged.
    """
    changes = []
    for old in recorded:
        path = Path(str(old["path"]))
        if not path.exists():
            changes.append(f"{path} is gone")
            continue
        stat = path.stat()
        if stat.st_size == old["size"] and stat.st_mtime_ns == old["mtime_ns"]:
            continue
        now = fingerprint(path)
        if now["sha256"] != old["sha256"]:
            changes.append(f"{path} changed (size {old['size']:,} → {now['size']:,} bytes)")
    return changes
