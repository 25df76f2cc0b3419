"""Run manifests: a small JSON file per run, enough to finish or reproduce it.

``<db folder>/runs/<run_id>.manifest.json`` holds the resolved job (file text and hash), the
request version and model, the input files with fingerprints, the state, counts, cost so far and
the exact command that resumes the run. The same document is stored in the ``runs`` table.

:class:`Manifest` is the document, typed; the session is its one writer (``write_manifest``,
every couple of seconds while a run goes) and :func:`read_manifest` its one reader, for
``pipeline status``, ``runs``, ``resume``, ``rerun``, ``cancel`` and ``pipeline.run(resume=...)``.
The file is replaced atomically (a temporary file, then a rename), so a reader in another
terminal sees the old or the new one while DuckDB's single writer holds the database. It never
contains an API key: keys live in the environment only and nothing here reads the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError
from ..records import RunState, parse_run_state, run_state
from ..redact import redact, safe_url
from ..sources import Fingerprint, fingerprint

__all__ = [
    "SUFFIX",
    "ClusterRecord",
    "JobRecord",
    "Manifest",
    "changed_inputs",
    "check_run_id",
    "find_manifest",
    "latest_manifest",
    "manifest_path",
    "process_alive",
    "read_manifest",
    "resume_command",
    "runs_dir",
    "write_manifest",
]

SUFFIX = ".manifest.json"
PYTHON_ROWS = "<rows>"
"""The ``input_path`` of a run whose rows came from Python (``pipeline.run(rows=...)``)."""


RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""What a run id may be: it names files under the database's ``runs/`` folder."""


def check_run_id(run_id: str) -> None:
    """A run id names files under ``runs/``: letters, digits, ``.``, ``_`` and ``-`` only,
    starting with a letter or digit, no ``..`` (ConfigError otherwise), so that nothing is
    ever written outside that folder."""
    if not RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise ConfigError(
            f"run id {run_id!r} is not allowed: use letters, digits, '.', '_' and '-' (at most "
            "128, starting with a letter or digit, no '..')"
        )


def runs_dir(db: str | os.PathLike[str]) -> Path:
    """Where a database's run manifests, journals and logs live."""
    return Path(db).resolve().parent / "runs"


def manifest_path(db: str | os.PathLike[str], run_id: str) -> Path:
    return runs_dir(db) / f"{run_id}{SUFFIX}"


def resume_command(run_id: str, db: str) -> str:
    return f"pipeline resume {run_id} --db {db}"


@dataclass(frozen=True, slots=True)
class JobRecord:
    """The job a run was started with: its name, where it came from, and its text.

    ``format`` is ``toml`` for a job file, ``json`` for a job given to ``pipeline.run`` as a
    dict (its text is then the dict as JSON)."""

    name: str
    path: str
    hash: str
    text: str
    format: str = "toml"


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    """Where the run's online requests were sent from (``[cluster]``), when not this process."""

    engine: str
    workers: int
    address: str | None = None


@dataclass(frozen=True, slots=True)
class Manifest:
    """One run's manifest. The first group of fields is fixed when the run starts; the rest
    (state, counts, cost, ...) follow the run and are rewritten while it goes.

    ``state`` / ``reason``: how the run stands (``RunState``; the file holds the text
    ``stopped: <reason>``). ``pid``: the process writing it, so that ``pipeline status`` can
    tell a live run from a killed one. ``inputs``: the fingerprint of every input file (for
    rows from Python, their count only). ``batches``: the run's batch parts."""

    run_id: str
    job: JobRecord
    provider: str
    model: str
    mode: str
    db: str
    input_path: str
    resume_command: str
    started_at: float
    base_url: str | None = None
    inputs: tuple[Fingerprint, ...] = ()
    price_source: str | None = None
    fake: bool = False
    rerun_of: str | None = None
    cluster: ClusterRecord | None = None
    resumed_at: tuple[float, ...] = ()
    # -- live ---------------------------------------------------------------------------------
    state: RunState = RunState.RUNNING
    reason: str | None = None
    pid: int | None = None
    updated_at: float = 0.0
    prompt_hash: str = ""
    budget_usd: float | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    tokens: Mapping[str, int] = field(default_factory=dict)
    cost_usd: float | None = None
    fallback: Mapping[str, Any] | None = None
    documents: Mapping[str, int] | None = None
    batches: tuple[Mapping[str, Any], ...] = ()

    @property
    def status(self) -> str:
        """The state as the file and the ``runs`` table hold it: ``stopped: signal``."""
        return run_state(self.state, self.reason)

    @property
    def python_rows(self) -> bool:
        """Whether the run's rows came from Python rather than from files."""
        return self.input_path == PYTHON_ROWS

    def rows_done(self) -> int:
        c = self.counts
        return sum(int(c.get(k, 0)) for k in ("ok", "failed", "input_error", "invalid"))

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON data, every text redacted (``pipeline.redact``: nothing shaped
        like a key, no URL credentials) and the base URL without user, query or fragment."""
        out = asdict(self)
        out["state"] = self.status
        del out["reason"]
        for name in ("cluster", "fallback", "documents"):
            if out[name] is None:
                del out[name]
        if out["base_url"]:
            out["base_url"] = safe_url(out["base_url"])
        scrubbed: dict[str, Any] = _scrub(out)
        return scrubbed

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, where: str = "the manifest") -> Manifest:
        """A manifest from its JSON object (older files lack the newer fields: they take their
        defaults). Raises ConfigError when it is not a run manifest."""
        try:
            job = doc["job"]
            values: dict[str, Any] = {
                f.name: doc[f.name] for f in fields(cls) if f.name in doc and f.name != "reason"
            }
            values["job"] = JobRecord(
                name=str(job["name"]),
                path=str(job.get("path", "<inline>")),
                hash=str(job.get("hash", "")),
                text=str(job.get("text", "")),
                format=str(job.get("format", "toml")),
            )
            values["state"], values["reason"] = parse_run_state(str(doc.get("state", "running")))
            cluster = doc.get("cluster")
            values["cluster"] = None if not cluster else ClusterRecord(**cluster)
            for name in ("inputs", "resumed_at", "batches"):
                if name in values:
                    values[name] = tuple(values[name] or ())
            for name in ("run_id", "provider", "model", "mode", "db", "input_path"):
                values[name] = str(doc[name])
            check_run_id(values["run_id"])
            values.setdefault("resume_command", resume_command(values["run_id"], values["db"]))
            values.setdefault("started_at", 0.0)
            return cls(**values)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(
                f"{where} is not a run manifest this pipeline can read ({exc})"
            ) from exc

    def live(self, **changes: Any) -> Manifest:
        """This manifest with its live fields changed (``state``, ``counts``, ...)."""
        return replace(self, **changes)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def process_alive(pid: object) -> bool:
    """Whether process ``pid`` (another one than this) is still there: a manifest that says
    ``running`` and whose process is gone belongs to a run that was killed."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Replace the manifest at ``path`` atomically: a reader sees the old or the new one.
    Raises OSError (a full disk, a folder that cannot be written); no partial file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(orjson.dumps(manifest.to_dict(), option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_manifest(path: Path) -> Manifest:
    """The manifest at ``path``; ConfigError naming the file when it is missing or unreadable."""
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no run manifest at {path}") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read run manifest {path}: {exc}") from exc
    if not isinstance(data, dict) or "run_id" not in data:
        raise ConfigError(f"{path} is not a run manifest")
    return Manifest.from_dict(data, where=str(path))


def find_manifest(run: str, db: str | os.PathLike[str]) -> Path:
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


def latest_manifest(db: str | os.PathLike[str]) -> Path | None:
    folder = runs_dir(db)
    manifests = sorted(folder.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
    return manifests[-1] if manifests else None


def changed_inputs(recorded: Sequence[Mapping[str, Any]]) -> list[str]:
    """Descriptions of the recorded input files that are not what they were.

    Size and modification time are compared first; a file whose times changed but whose
    content hash did not (it was copied or touched) counts as unchanged. Rows that came from
    Python (no path) are not checked.
    """
    changes = []
    for old in recorded:
        if "path" not in old:
            continue
        path = Path(str(old["path"]))
        if not path.exists():
            changes.append(f"{path} is gone")
            continue
        stat = path.stat()
        if stat.st_size == old.get("size") and stat.st_mtime_ns == old.get("mtime_ns"):
            continue
        now = fingerprint(path)
        if now["sha256"] != old.get("sha256"):
            changes.append(f"{path} changed (size {old.get('size', 0):,} → {now['size']:,} bytes)")
    return changes
