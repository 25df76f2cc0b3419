"""Job files: load a TOML job once, check every key, and fail with one clear message.

A job file is a user-facing contract; the keys and their meaning are documented in README.md
(``tests/test_docs.py`` keeps the two in step with ``JOB_KEYS`` below).
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from ..errors import ConfigError

if TYPE_CHECKING:
    from .pricing import Price

__all__ = [
    "BATCH_LIMITS",
    "ENGINES",
    "FALLBACK_WHEN",
    "JOB_KEYS",
    "MAX_CONCURRENCY",
    "MAX_FORMAT_WIDTH",
    "PROVIDERS",
    "BatchSpec",
    "ClusterSpec",
    "FallbackSpec",
    "InputSpec",
    "Job",
    "LimitsSpec",
    "OutputSpec",
    "RequestSpec",
    "check_url",
    "default_attachments_root",
    "default_base_url",
    "format_spec_problem",
    "job_from_mapping",
    "load_job",
    "parse_job",
]

PROVIDERS = ("openai", "anthropic", "gemini")
MODES = ("online", "batch")
ON_UNFINISHED = ("online", "record")
ENGINES = ("local", "ray")
DEFAULT_CONTEXT = {"openai": 128_000, "anthropic": 200_000, "gemini": 1_048_576}
# Where each provider's API is when neither the job nor the command line says: the official SDKs'
# environment variable, else the real API.
BASE_URL_ENV = {
    "openai": ("OPENAI_BASE_URL", "https://api.openai.com/v1"),
    "anthropic": ("ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
    "gemini": ("GOOGLE_GEMINI_BASE_URL", "https://generativelanguage.googleapis.com"),
}
# The error types (``results.error_type``) after which a row goes to [request.fallback]: what
# the retry machinery records for an overloaded, slow or broken provider, and the planner's
# ``context_exceeded`` (a prompt longer than the primary model's context).
FALLBACK_WHEN = (
    "overloaded",
    "timeout",
    "server_error",
    "bad_gateway",
    "rate_limited",
    "connection_error",
    "context_exceeded",
)
DEFAULT_FALLBACK_WHEN = ("overloaded", "timeout", "server_error")

# Upper bounds of the numbers that size memory, tasks or waits (README, "Job file keys"). A job
# above one is refused in one line rather than left to run out of memory or wait forever.
MAX_CONCURRENCY = 10_000
"""Requests in flight at most: each holds a connection (a file descriptor) and a task."""
MAX_WORKERS = 256
"""Ray workers at most: each is a process of its own."""
MAX_ATTEMPTS = 100
MAX_SECONDS = 86_400.0
"""A day: the longest timeout, poll interval or cooldown a job may set."""
MAX_OUTPUT_TOKENS = 1_000_000
MAX_CONTEXT_TOKENS = 100_000_000
MAX_INVALID_RETRIES = 10
MAX_DOCUMENTS_IN_FLIGHT_MB = 4_096.0
MAX_REQUESTS_PER_MINUTE = 1e9
MAX_TOKENS_PER_MINUTE = 1e12
# (requests, bytes) a batch may hold at most, by provider: OpenAI's and Anthropic's documented
# limits; Gemini documents no count limit, and its Files API takes 2 GB a file.
BATCH_LIMITS: dict[str, tuple[int, int]] = {
    "openai": (50_000, 200_000_000),
    "anthropic": (100_000, 256_000_000),
    "gemini": (100_000, 2_000_000_000),
}
MAX_SCHEMA_BYTES = 10_000_000
MAX_FORMAT_WIDTH = 100_000
"""The largest width or precision a template's format spec may give (``{text:.2000}``)."""

# Every key a job file may hold, by table, with a one-line description (also used by the docs test).
JOB_KEYS: dict[str, dict[str, str]] = {
    "": {"name": "job name; results are grouped under it"},
    "input": {
        "path": "a .jsonl, .jsonl.gz or .parquet file, or a glob of them (relative to the cwd); "
        "not needed when the rows come from Python",
        "id": "column holding a stable row id; without it a hash of the row's content is used",
        "attachments_root": "the folder every attached file must be in (default: the input "
        "file's folder, or the documents folder)",
        "allow_any_path": "true: attached files may be anywhere on this machine (default false)",
    },
    "request": {
        "provider": "openai | anthropic | gemini",
        "model": "model name, as the provider spells it",
        "system": "system prompt (optional)",
        "prompt": "user message template; {field} is replaced by the row's field",
        "max_tokens": "cap on output tokens per row (required by Anthropic, default 1024)",
        "temperature": "sampling temperature (optional)",
        "base_url": "provider URL; else OPENAI_BASE_URL / ANTHROPIC_BASE_URL / "
        "GOOGLE_GEMINI_BASE_URL, else the real API",
        "context_window": "model context in tokens; longer rows fail (default 128000 / 200000 "
        "/ 1048576)",
        "mode": "online (default) | batch: the provider's batch endpoints, at half price",
        "schema": "JSON Schema the answer must match: a .json file path (relative to the cwd) "
        "or an inline table",
        "schema_mode": "enforce (default): the provider is made to follow the schema | json: "
        "the model is asked for JSON, for schemas a provider cannot enforce",
        "examples": "few-shot pairs [{ input = ..., output = ... }] sent before the row",
        "invalid_retries": "follow-up turns telling the model why its answer was invalid "
        "(default 2)",
        "attachments": "templates of files (PDF, PNG, JPEG, GIF, WebP) or http(s) URLs sent "
        'before the prompt, e.g. ["{path}"]',
        "image_detail": "OpenAI image detail: low | high | auto (default: not sent, auto)",
    },
    "request.fallback": {
        "provider": "openai | anthropic | gemini (default: the job's provider)",
        "model": "the model rows go to when the primary fails them (required in the table)",
        "when": "error types that send a row to the fallback (default: overloaded, timeout, "
        "server_error)",
        "base_url": "the fallback provider's URL (default: the job's when the provider is the "
        "same, else its environment variable, else the real API)",
        "context_window": "the fallback model's context in tokens (default: the provider's)",
        "cooldown_s": "seconds the primary is left alone once it keeps failing (default 60)",
    },
    "limits": {
        "concurrency": "requests in flight at most (default 64)",
        "requests_per_minute": "request budget per minute (default: none)",
        "tokens_per_minute": "token budget per minute, input estimate + max_tokens (default: none)",
        "max_attempts": "attempts per row before it is recorded as failed (default 6)",
        "timeout_s": "seconds before one attempt is abandoned and retried (default 60)",
        "budget_usd": "stop launching requests before the run's cost could pass this",
        "documents_in_flight_mb": "MB of attachments read and encoded at once (default 16)",
    },
    "batch": {
        "poll_interval_s": "polling backs off up to this many seconds (default 30)",
        "on_unfinished": "rows a batch did not answer: online (rerun them online) | record",
        "max_requests": "requests per batch at most (default: the provider's limit)",
        "max_bytes": "bytes per batch input at most (default: the provider's limit)",
    },
    "output": {
        "db": "DuckDB file the results go to (default data/results.duckdb)",
    },
    "cluster": {
        "engine": "local (default): this process sends | ray: workers on a Ray cluster share "
        "one budget",
        "address": "the Ray cluster to join (auto, ray://head:10001); omitted: start a local Ray",
        "workers": "Ray workers, each with its share of limits.concurrency (default 2)",
    },
    "pricing": {
        "input_mtok": "USD per million input tokens; the table overrides genai-prices",
        "output_mtok": "USD per million output tokens (required with [pricing])",
        "cache_read_mtok": "USD per million tokens read from the prompt cache (default input)",
        "cache_write_mtok": "USD per million tokens written to the cache (default input)",
    },
}


@dataclass(frozen=True, slots=True)
class InputSpec:
    path: str = ""  # empty: the rows come from Python
    id: str | None = None
    attachments_root: str | None = None
    """``[input] attachments_root`` as written; None: the default (``root``)."""
    allow_any_path: bool = False

    @property
    def root(self) -> str:
        """The folder a row's attached files (and a documents glob's files) must resolve into:
        ``attachments_root``, else the folder of the input (``default_attachments_root``)."""
        if self.attachments_root is not None:
            return self.attachments_root
        return default_attachments_root(self.path)


@dataclass(frozen=True, slots=True)
class FallbackSpec:
    """``[request.fallback]``: the model a row goes to when the primary fails it in one of the
    ways ``when`` names. It is not part of the request version (``prompt_hash``): a row answered
    by the fallback is done under the job's request key, so the next run does not send it again.
    """

    provider: str
    model: str
    when: tuple[str, ...] = DEFAULT_FALLBACK_WHEN
    base_url: str | None = None
    context_window: int | None = None
    cooldown_s: float = 60.0

    @property
    def context_tokens(self) -> int:
        if self.context_window is not None:
            return self.context_window
        return DEFAULT_CONTEXT[self.provider]


@dataclass(frozen=True, slots=True)
class RequestSpec:
    provider: str
    model: str
    prompt: str
    system: str | None = None
    max_tokens: int = 1024
    temperature: float | None = None
    base_url: str | None = None
    context_window: int | None = None
    mode: str = "online"
    schema: Mapping[str, Any] | None = None
    """The JSON Schema answers must match, loaded (from ``schema_path`` or inline) and checked."""
    schema_path: str | None = None
    schema_mode: str = "enforce"
    examples: tuple[tuple[str, str], ...] = ()
    """Few-shot (input, output) pairs; an output given as a table is stored as compact JSON."""
    invalid_retries: int = 2
    fallback: FallbackSpec | None = None
    """``[request.fallback]``, or None; never part of ``prompt_hash``."""
    attachments: tuple[str, ...] = ()
    """Templates of the files or URLs sent with each row, before the prompt text."""
    image_detail: str | None = None
    attachments_root: str | None = "."
    """The folder a row's attached files must resolve into (symlinks followed); None: anywhere
    (``[input] allow_any_path``). Set from ``[input]`` by the job parser (the input's folder by
    default); never part of ``prompt_hash``. Built by hand, a spec confines files to the
    working directory."""

    @property
    def context_tokens(self) -> int:
        """The context window rows are checked against (the provider's usual one by default)."""
        if self.context_window is not None:
            return self.context_window
        return DEFAULT_CONTEXT[self.provider]


@dataclass(frozen=True, slots=True)
class LimitsSpec:
    concurrency: int = 64
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_attempts: int = 6
    timeout_s: float = 60.0
    budget_usd: float | None = None
    documents_in_flight_mb: float = 16.0


@dataclass(frozen=True, slots=True)
class BatchSpec:
    poll_interval_s: float = 30.0
    on_unfinished: str = "online"
    max_requests: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class OutputSpec:
    db: str = "data/results.duckdb"


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """``[cluster]``: where the planned requests of an online run are sent from. ``local``:
    this process; ``ray``: ``workers`` Ray actors, at ``address`` (None: a Ray started here)."""

    engine: str = "local"
    address: str | None = None
    workers: int = 2


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    input: InputSpec
    request: RequestSpec
    limits: LimitsSpec = field(default_factory=LimitsSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    batch: BatchSpec = field(default_factory=BatchSpec)
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    path: str = "<inline>"
    text: str = ""
    pricing: Price | None = None
    """The job's ``[pricing]`` table; ``None``: the price comes from genai-prices."""
    text_format: str = "toml"
    """What ``text`` is: a job file's TOML, or (``json``) a job given as a dict."""

    @property
    def job_hash(self) -> str:
        """Hash of the job file's text: the manifest records which file produced a run."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    def with_overrides(
        self,
        *,
        input_path: str | None = None,
        db: str | None = None,
        base_url: str | None = None,
        budget_usd: float | None = None,
        mode: str | None = None,
        engine: str | None = None,
        workers: int | None = None,
        address: str | None = None,
    ) -> Job:
        """The job with command-line overrides applied (``--input``, ``--db``, ``--base-url``,
        ``--budget-usd``, ``--mode``, ``--engine``, ``--workers``, ``--address``), each checked
        as the job file's key is (ConfigError naming the option)."""
        job = self
        if workers is not None:
            _in_range(workers, "--workers", None, high=MAX_WORKERS)
        if address is not None:
            _check_address(address, "--address", None)
        if engine is not None and engine not in ENGINES:
            raise ConfigError(f"--engine {engine!r} is not one of: {', '.join(ENGINES)}")
        if engine is not None or workers is not None or address is not None:
            cluster = replace(
                job.cluster,
                engine=engine or job.cluster.engine,
                workers=job.cluster.workers if workers is None else workers,
                address=address or job.cluster.address,
            )
            job = replace(job, cluster=cluster)
            _check_cluster(job, job.path)
        if mode is not None:
            if mode not in MODES:
                raise ConfigError(f"--mode {mode!r} is not one of: {', '.join(MODES)}")
            job = replace(job, request=replace(job.request, mode=mode))
        if budget_usd is not None:
            _in_range(budget_usd, "--budget-usd", None, high=None)
            job = replace(job, limits=replace(job.limits, budget_usd=float(budget_usd)))
        if input_path is not None:
            new_input = replace(job.input, path=input_path)
            job = replace(
                job, input=new_input, request=replace(job.request, **_confinement(new_input))
            )
        if db is not None:
            job = replace(job, output=replace(job.output, db=db))
        if base_url is not None:
            check_url(base_url, key="--base-url")
            job = replace(job, request=replace(job.request, base_url=base_url))
        return job

    def resolved_base_url(self, env: Mapping[str, str] | None = None) -> str:
        """Where requests go: the job's base_url, else the SDKs' env variable, else the real API."""
        if self.request.base_url:
            return self.request.base_url.rstrip("/")
        return default_base_url(self.request.provider, env)

    def fallback_base_url(self, env: Mapping[str, str] | None = None) -> str | None:
        """Where fallback requests go: ``[request.fallback].base_url``, else the job's own URL
        when the fallback is on the same provider, else the provider's default; None without
        a fallback."""
        fallback = self.request.fallback
        if fallback is None:
            return None
        if fallback.base_url:
            return fallback.base_url.rstrip("/")
        if fallback.provider == self.request.provider:
            return self.resolved_base_url(env)
        return default_base_url(fallback.provider, env)


def default_base_url(provider: str, env: Mapping[str, str] | None = None) -> str:
    """A provider's URL when no job says: the official SDK's environment variable, else the
    real API. Raises ConfigError when the variable holds no http(s) URL, or a user name or
    password (never echoed)."""
    env = os.environ if env is None else env
    name, default = BASE_URL_ENV[provider]
    url = env.get(name, default)
    if url != default:
        check_url(url, key=name, where="the environment variable")
    return url.rstrip("/")


def check_url(
    url: str,
    *,
    key: str,
    path: str | None = None,
    where: str | None = None,
    schemes: tuple[str, ...] | None = ("http", "https"),
) -> None:
    """Raise ConfigError (naming ``key``, never the URL's secret) unless ``url`` is a URL of
    one of ``schemes`` (None: any) with a host, and without a user name or password in it: keys
    come from the environment only. ``where`` says what ``key`` is (an option, a variable)."""
    prefix, err_key = "", key if key else None
    if where or key.startswith("-"):
        prefix, err_key = f"{where} {key}: " if where else f"{key}: ", None
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        port_ok = parts.port is None or 0 < parts.port < 65_536
    except ValueError:
        raise _url_error(prefix, "is not a valid URL", err_key, path) from None
    if "@" in netloc:
        raise _url_error(
            prefix,
            "a URL with a user name or password in it is refused (the part before '@'); API "
            "keys come from the environment only (OPENAI_API_KEY, ANTHROPIC_API_KEY, "
            "GEMINI_API_KEY): remove it from the URL",
            err_key,
            path,
        )
    if schemes is not None and (parts.scheme not in schemes or not parts.hostname):
        shown = url if len(url) <= 80 else url[:77] + "..."
        raise _url_error(
            prefix, f"{shown!r} is not an http(s) URL such as https://host/v1", err_key, path
        )
    if not port_ok:
        raise _url_error(prefix, "has a port outside 1-65535", err_key, path)


def _url_error(prefix: str, message: str, key: str | None, path: str | None) -> ConfigError:
    return ConfigError(prefix + message, path=path, key=key)


def default_attachments_root(pattern: str) -> str:
    """The folder of an input path: the folder of a file, or of a glob the leading part without
    wildcards (``data/scans/*.pdf`` and ``data/**/x.jsonl``: ``data/scans`` and ``data``)."""
    expanded = os.path.expanduser(pattern)
    if not any(c in expanded for c in "*?["):
        return os.path.dirname(expanded) or "."
    fixed: list[str] = []
    for part in expanded.split(os.sep):
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    root = os.sep.join(fixed)
    if not root and expanded.startswith(os.sep):
        return os.sep
    return root or "."


def _confinement(spec: InputSpec) -> dict[str, Any]:
    """The ``RequestSpec`` fields that say where a row's attached files may be."""
    return {"attachments_root": None if spec.allow_any_path else spec.root}


def load_job(path: str | os.PathLike[str]) -> Job:
    """Read and check a job file. Raises ConfigError naming the file, key and fix."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "job file not found; pass the path of a .toml job file (see jobs/ for examples)",
            path=str(p),
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read job file: {exc}", path=str(p)) from exc
    return parse_job(text, path=str(p))


def parse_job(text: str, *, path: str = "<inline>", text_format: str = "toml") -> Job:
    """Check the text of a job file and build a Job from it (``text_format`` ``json``: the
    text of a job that was given as a dict, as a run's manifest records it)."""
    if text_format == "json":
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON ({exc})", path=path) from exc
        if not isinstance(doc, dict):
            raise ConfigError("a job must be a table of keys", path=path)
        return _build(doc, path=path, text=text, text_format="json")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"not valid TOML ({exc}); fix the syntax at that line", path=path
        ) from exc
    return _build(doc, path=path, text=text)


def job_from_mapping(doc: Mapping[str, Any], *, path: str = "<dict>") -> Job:
    """A Job from a dict with the job file's keys and tables (``{"name": ..., "request":
    {...}}``), with the same checks and the same one-line errors as a file. A ``None`` value
    is a key left out; paths may be ``os.PathLike``."""
    if not isinstance(doc, Mapping):
        raise ConfigError(
            f"a job is a path, a Job or a dict of the job file's keys, not {type(doc).__name__}"
        )
    plain = _plain(doc)
    try:
        text = orjson.dumps(plain, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError as exc:
        raise ConfigError(f"holds a value a job file cannot ({exc})", path=path) from exc
    return _build(plain, path=path, text=text, text_format="json")


def _plain(value: Any) -> Any:
    """A dict job's values as a job file would hold them: no None, paths as strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _build(doc: Mapping[str, Any], *, path: str, text: str, text_format: str = "toml") -> Job:
    _no_unknown_keys(doc, path)
    name = _get(doc, "", "name", str, path, required=True)
    if not name.strip():
        raise ConfigError("must not be empty; give the job a name", path=path, key="name")

    # Without [input] path, the rows come from Python (pipeline.run(job, rows=...)); a run
    # from the command line says what is missing when it starts.
    inp = _table(doc, "input", path, required=False)
    input_spec = _input(inp, path)

    req = _table(doc, "request", path)
    provider = _get(req, "request", "provider", str, path, required=True)
    if provider not in PROVIDERS:
        raise ConfigError(
            f"unknown provider {provider!r}; use one of: {', '.join(PROVIDERS)}",
            path=path,
            key="request.provider",
        )
    prompt = _get(req, "request", "prompt", str, path, required=True)
    max_tokens = _bounded(
        req, "max_tokens", int, path, 1024, table_name="request", low=1, high=MAX_OUTPUT_TOKENS
    )
    temperature = _get(req, "request", "temperature", float, path)
    if temperature is not None and not 0 <= temperature <= 2:
        raise ConfigError("must be between 0 and 2", path=path, key="request.temperature")
    base_url = _get(req, "request", "base_url", str, path)
    if base_url is not None:
        check_url(base_url, key="request.base_url", path=path)
    request_spec = RequestSpec(
        provider=provider,
        model=_get(req, "request", "model", str, path, required=True),
        prompt=prompt,
        system=_get(req, "request", "system", str, path),
        max_tokens=max_tokens,
        temperature=temperature,
        base_url=base_url,
        context_window=_bounded(
            req, "context_window", int, path, None, table_name="request", high=MAX_CONTEXT_TOKENS
        ),
        mode=_choice(req, "request", "mode", MODES, path) or "online",
        fallback=_fallback(req, provider, path),
        **_structured(req, path),
        **_documents(req, provider, path),
        **_confinement(input_spec),
    )
    _check_template(prompt, path)

    lim = _table(doc, "limits", path, required=False)
    defaults = LimitsSpec()
    limits = LimitsSpec(
        concurrency=_bounded(
            lim, "concurrency", int, path, defaults.concurrency, high=MAX_CONCURRENCY
        ),
        requests_per_minute=_bounded(
            lim, "requests_per_minute", float, path, None, high=MAX_REQUESTS_PER_MINUTE
        ),
        tokens_per_minute=_bounded(
            lim, "tokens_per_minute", float, path, None, high=MAX_TOKENS_PER_MINUTE
        ),
        max_attempts=_bounded(
            lim, "max_attempts", int, path, defaults.max_attempts, high=MAX_ATTEMPTS
        ),
        timeout_s=_bounded(lim, "timeout_s", float, path, defaults.timeout_s, high=MAX_SECONDS),
        budget_usd=_bounded(lim, "budget_usd", float, path, None, high=None),
        documents_in_flight_mb=_bounded(
            lim,
            "documents_in_flight_mb",
            float,
            path,
            defaults.documents_in_flight_mb,
            high=MAX_DOCUMENTS_IN_FLIGHT_MB,
        ),
    )
    bat = _table(doc, "batch", path, required=False)
    most_requests, most_bytes = BATCH_LIMITS[provider]
    batch = BatchSpec(
        poll_interval_s=_bounded(
            bat, "poll_interval_s", float, path, 30.0, table_name="batch", high=MAX_SECONDS
        ),
        on_unfinished=_choice(bat, "batch", "on_unfinished", ON_UNFINISHED, path) or "online",
        max_requests=_bounded(
            bat, "max_requests", int, path, None, table_name="batch", high=most_requests
        ),
        max_bytes=_bounded(bat, "max_bytes", int, path, None, table_name="batch", high=most_bytes),
    )
    out = _table(doc, "output", path, required=False)
    output = OutputSpec(db=_get(out, "output", "db", str, path) or OutputSpec().db)
    clu = _table(doc, "cluster", path, required=False)
    cluster = ClusterSpec(
        engine=_choice(clu, "cluster", "engine", ENGINES, path) or "local",
        address=_address(clu, path),
        workers=_bounded(
            clu,
            "workers",
            int,
            path,
            ClusterSpec().workers,
            table_name="cluster",
            high=MAX_WORKERS,
        ),
    )
    job = Job(
        name=name,
        input=input_spec,
        request=request_spec,
        limits=limits,
        output=output,
        batch=batch,
        cluster=cluster,
        path=path,
        text=text,
        pricing=_pricing(doc, path),
        text_format=text_format,
    )
    _check_cluster(job, path)
    return job


def _check_cluster(job: Job, path: str) -> None:
    """What ``[cluster]`` cannot be combined with, said once, naming the key and the fix."""
    cluster = job.cluster
    if cluster.engine != "ray":
        return
    if cluster.workers > job.limits.concurrency:
        raise ConfigError(
            f"{cluster.workers} workers cannot share limits.concurrency = "
            f"{job.limits.concurrency} (each needs one request in flight at least); use at most "
            f"{job.limits.concurrency} workers or raise the concurrency",
            path=path,
            key="cluster.workers",
        )
    if job.request.fallback is not None:
        raise ConfigError(
            "[request.fallback] is not supported on engine 'ray' yet; remove the fallback or "
            'run with engine = "local"',
            path=path,
            key="cluster.engine",
        )


def _pricing(doc: Mapping[str, Any], path: str) -> Price | None:
    """The ``[pricing]`` table as a Price, or None when the job has none."""
    table = doc.get("pricing")
    if table is None:
        return None
    # Imported here: genai-prices (behind pipeline.job.pricing) takes ~0.3 s to import, and most
    # users of this module (the fake provider, tests) never need a price.
    from .pricing import price_from_mapping

    return price_from_mapping(
        table, source=f"[pricing] in {path}", path=path, key_prefix="pricing."
    )


def _no_unknown_keys(doc: Mapping[str, Any], path: str) -> None:
    for key, value in doc.items():
        if key in JOB_KEYS and key != "":
            if not isinstance(value, dict):
                raise ConfigError(f"must be a table: write [{key}]", path=path, key=key)
            for sub in value:
                if f"{key}.{sub}" in JOB_KEYS:  # a table inside the table: [request.fallback]
                    _no_unknown_keys({f"{key}.{sub}": value[sub]}, path)
                    continue
                if "api_key" in sub or sub in ("key", "token", "secret"):
                    raise ConfigError(
                        "API keys are read from the environment only (OPENAI_API_KEY, "
                        "ANTHROPIC_API_KEY, GEMINI_API_KEY); remove it from the job file",
                        path=path,
                        key=f"{key}.{sub}",
                    )
                if sub not in JOB_KEYS[key]:
                    known = ", ".join(
                        [*JOB_KEYS[key], *(f"[{t}]" for t in JOB_KEYS if t.startswith(f"{key}."))]
                    )
                    raise ConfigError(
                        f"unknown key; [{key}] takes: {known}", path=path, key=f"{key}.{sub}"
                    )
        elif key not in JOB_KEYS[""]:
            known = ", ".join([*JOB_KEYS[""], *(f"[{t}]" for t in JOB_KEYS if t)])
            raise ConfigError(f"unknown key; a job file takes: {known}", path=path, key=key)


def _fallback(req: Mapping[str, Any], provider: str, path: str) -> FallbackSpec | None:
    """``[request.fallback]``, checked: a model, a known provider, known error types."""
    table = req.get("fallback")
    if table is None:
        return None
    name = "request.fallback"
    fb_provider = _get(table, name, "provider", str, path) or provider
    if fb_provider not in PROVIDERS:
        raise ConfigError(
            f"unknown provider {fb_provider!r}; use one of: {', '.join(PROVIDERS)}",
            path=path,
            key=f"{name}.provider",
        )
    model = _get(table, name, "model", str, path, required=True)
    when = table.get("when", list(DEFAULT_FALLBACK_WHEN))
    if not isinstance(when, list) or not when or not all(isinstance(w, str) for w in when):
        raise ConfigError(
            f"must be a non-empty list of error types, e.g. when = {list(DEFAULT_FALLBACK_WHEN)}; "
            f"choose from: {', '.join(FALLBACK_WHEN)}",
            path=path,
            key=f"{name}.when",
        )
    unknown = [w for w in when if w not in FALLBACK_WHEN]
    if unknown:
        raise ConfigError(
            f"{', '.join(repr(w) for w in unknown)} is not an error type a fallback can take; "
            f"choose from: {', '.join(FALLBACK_WHEN)}",
            path=path,
            key=f"{name}.when",
        )
    base_url = _get(table, name, "base_url", str, path)
    if base_url is not None:
        check_url(base_url, key=f"{name}.base_url", path=path)
    window = _bounded(
        table, "context_window", int, path, None, table_name=name, high=MAX_CONTEXT_TOKENS
    )
    cooldown = _bounded(table, "cooldown_s", float, path, 60.0, table_name=name, high=MAX_SECONDS)
    return FallbackSpec(
        provider=fb_provider,
        model=model,
        when=tuple(dict.fromkeys(when)),
        base_url=base_url,
        context_window=window,
        cooldown_s=cooldown,
    )


def _input(inp: Mapping[str, Any], path: str) -> InputSpec:
    """``[input]``: the rows' path and id, and where their attached files may be."""
    root = _get(inp, "input", "attachments_root", str, path)
    allow = inp.get("allow_any_path", False)
    if not isinstance(allow, bool):
        raise ConfigError(
            f"must be true or false, got {_shown(allow)}", path=path, key="input.allow_any_path"
        )
    if root is not None:
        if allow:
            raise ConfigError(
                "allow_any_path = true leaves no folder to confine files to; remove one of the two",
                path=path,
                key="input.attachments_root",
            )
        try:
            is_dir = os.path.isdir(os.path.expanduser(root))
        except ValueError:
            is_dir = False
        if not is_dir:
            raise ConfigError(
                f"{_shown(root)} is not a folder (relative paths are relative to the directory "
                "pipeline runs in); fix the path",
                path=path,
                key="input.attachments_root",
            )
    return InputSpec(
        path=_get(inp, "input", "path", str, path) or "",
        id=_get(inp, "input", "id", str, path),
        attachments_root=None if root is None else os.path.expanduser(root),
        allow_any_path=allow,
    )


def _address(clu: Mapping[str, Any], path: str) -> str | None:
    """``cluster.address``: ``auto``, ``host:port`` or a ``ray://`` URL, without credentials."""
    address: str | None = _get(clu, "cluster", "address", str, path)
    if address is not None:
        _check_address(address, "cluster.address", path)
    return address


def _check_address(address: str, key: str, path: str | None) -> None:
    url = address if "://" in address else f"ray://{address}"
    check_url(url, key=key, path=path, schemes=None)


def _table(
    doc: Mapping[str, Any], name: str, path: str, *, required: bool = True
) -> Mapping[str, Any]:
    table = doc.get(name)
    if table is None:
        if required:
            raise ConfigError(f"missing table; add a [{name}] table", path=path, key=name)
        return {}
    return table  # type: ignore[no-any-return]


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number"}


def _get(
    table: Mapping[str, Any],
    table_name: str,
    key: str,
    kind: type,
    path: str,
    *,
    required: bool = False,
) -> Any:
    full = f"{table_name}.{key}" if table_name else key
    if key not in table:
        if required:
            raise ConfigError(f"missing; add {key} = ... to this table", path=path, key=full)
        return None
    value = table[key]
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value, ok = float(value), True
        except OverflowError:
            raise ConfigError(
                f"is too large a number ({len(str(value))} digits)", path=path, key=full
            ) from None
    if not ok:
        raise ConfigError(f"must be {_TYPE_NAMES[kind]}, got {_shown(value)}", path=path, key=full)
    return value


def _shown(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut to one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _short(number: float) -> str:
    return f"{number:,.0f}" if float(number).is_integer() else f"{number:,}"


def _bounded(
    table: Mapping[str, Any],
    key: str,
    kind: type,
    path: str,
    default: Any,
    *,
    table_name: str = "limits",
    high: float | None,
    low: float | None = None,
) -> Any:
    """A number that must be finite, greater than 0 (or at least ``low``) and at most
    ``high`` (None: no upper bound)."""
    value = _get(table, table_name, key, kind, path)
    if value is None:
        return default
    _in_range(value, f"{table_name}.{key}", path, high=high, low=low)
    return value


def _in_range(
    value: float, key: str, path: str | None, *, high: float | None, low: float | None = None
) -> None:
    """Raise ConfigError naming ``key`` (a job key, or a command-line option such as
    ``--budget-usd``) unless ``value`` is a finite number in range."""
    problem: str | None = None
    if isinstance(value, bool) or not isinstance(value, int | float):
        problem = f"must be a number, got {_shown(value)}"
    elif isinstance(value, float) and not math.isfinite(value):
        problem = f"must be a finite number, got {value!r}"
    elif low is None and value <= 0:
        problem = f"must be greater than 0, got {_shown(value)}"
    elif low is not None and value < low:
        least = "0 or more" if low == 0 else f"at least {_short(low)}"
        problem = f"must be {least}, got {_shown(value)}"
    elif high is not None and value > high:
        got = f"{value:,}" if isinstance(value, int) and value < 10**30 else _shown(value)
        problem = f"must be at most {_short(high)}, got {got}"
    if problem is None:
        return
    if key.startswith("-"):
        raise ConfigError(f"{key} {problem}")
    raise ConfigError(problem, path=path, key=key)


def _choice(
    table: Mapping[str, Any], table_name: str, key: str, choices: tuple[str, ...], path: str
) -> str | None:
    value: str | None = _get(table, table_name, key, str, path)
    if value is not None and value not in choices:
        raise ConfigError(
            f"{value!r} is not one of: {', '.join(choices)}", path=path, key=f"{table_name}.{key}"
        )
    return value


def _check_template(prompt: str, path: str, *, key: str = "request.prompt") -> None:
    import string

    try:
        parsed = list(string.Formatter().parse(prompt))
    except ValueError as exc:
        raise ConfigError(
            f"bad template ({exc}); write {{{{ or }}}} for a literal brace",
            path=path,
            key=key,
        ) from exc
    for _, field_name, format_spec, _conversion in parsed:
        if field_name is not None and (field_name == "" or field_name.isdigit()):
            raise ConfigError(
                "positional {} placeholders are not allowed; name a row field, "
                "e.g. {text}, and write {{ or }} for a literal brace",
                path=path,
                key=key,
            )
        if field_name is not None and format_spec:
            problem = format_spec_problem(field_name, format_spec)
            if problem is not None:
                raise ConfigError(problem, path=path, key=key)


def format_spec_problem(name: str, spec: str) -> str | None:
    """Why the format spec of ``{name:spec}`` is refused, or None.

    A spec is fixed text of the job file: a field inside it (``{text:>{w}}``) would let a row's
    value size the prompt (``w = 1000000000000`` asks for a terabyte), so it is refused; a width
    or precision is at most ``MAX_FORMAT_WIDTH``.
    """
    if "{" in spec or "}" in spec:
        return (
            f"{{{name}:{spec}}}: a format spec may not use a row field (a row's value would "
            "size the prompt); write a fixed width such as {text:>20}, or none"
        )
    import re

    for digits in re.findall(r"\d+", spec):
        if len(digits) > 9 or int(digits) > MAX_FORMAT_WIDTH:
            return (
                f"{{{name}:{_shown(spec)[1:-1]}}}: a width or precision over "
                f"{MAX_FORMAT_WIDTH:,} is refused (it sizes every prompt); use a smaller one"
            )
    return None


# -- documents and images: attachments, image_detail ---------------------------------------------

IMAGE_DETAILS = ("low", "high", "auto")


def _documents(req: Mapping[str, Any], provider: str, path: str) -> dict[str, Any]:
    """The ``RequestSpec`` fields of a job that sends files with its rows; {} for a text job."""
    value = req.get("attachments")
    out: dict[str, Any] = {}
    if value is not None:
        key = "request.attachments"
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise ConfigError(
                'must be a list of templates, e.g. attachments = ["{path}"]', path=path, key=key
            )
        for number, template in enumerate(value, start=1):
            if not isinstance(template, str) or not template.strip():
                raise ConfigError(
                    f"attachment {number} must be a non-empty string: a template such as "
                    '"{path}" naming a file or an http(s) URL',
                    path=path,
                    key=key,
                )
            _check_template(template, path, key=key)
        out["attachments"] = tuple(value)
    detail = _choice(req, "request", "image_detail", IMAGE_DETAILS, path)
    if detail is not None:
        if provider != "openai":
            raise ConfigError(
                "only OpenAI takes an image detail level; remove it for this provider",
                path=path,
                key="request.image_detail",
            )
        out["image_detail"] = detail
    return out


# -- structured answers: schema, schema_mode, examples, invalid_retries ---------------------------


def _structured(req: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The ``RequestSpec`` fields of a structured-answer job, checked; {} for a text job."""
    from ..extract import SCHEMA_MODES

    schema, schema_path = _schema(req, path)
    mode = _choice(req, "request", "schema_mode", SCHEMA_MODES, path)
    retries = _get(req, "request", "invalid_retries", int, path)
    if schema is None:
        for key, value in (("schema_mode", mode), ("invalid_retries", retries)):
            if value is not None:
                raise ConfigError(
                    "only answers with a schema are checked; add request.schema, or remove this",
                    path=path,
                    key=f"request.{key}",
                )
    if retries is not None:
        _in_range(retries, "request.invalid_retries", path, low=0, high=MAX_INVALID_RETRIES)
    out: dict[str, Any] = {}
    if schema is not None:
        out.update(
            schema=schema,
            schema_path=schema_path,
            schema_mode=mode or "enforce",
            invalid_retries=2 if retries is None else retries,
        )
    examples = _examples(req, schema, path)
    if examples:
        out["examples"] = examples
    return out


def _schema(req: Mapping[str, Any], path: str) -> tuple[dict[str, Any] | None, str | None]:
    """``request.schema``: a JSON Schema file (relative to the cwd) or an inline table."""
    from ..extract import check_schema

    value = req.get("schema")
    if value is None:
        return None, None
    key = "request.schema"
    schema_path: str | None = None
    if isinstance(value, str):
        schema_path = value
        try:
            st = os.stat(value)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SCHEMA_BYTES:
                raise ConfigError(
                    f"schema file {_shown(value)} is not a JSON file of at most "
                    f"{MAX_SCHEMA_BYTES:,} bytes; fix the path",
                    path=path,
                    key=key,
                )
            raw = Path(value).read_bytes()
        except ValueError:  # a NUL in the path
            raise ConfigError(
                f"schema file {_shown(value)} is not a usable path; fix it", path=path, key=key
            ) from None
        except FileNotFoundError:
            raise ConfigError(
                f"schema file {value!r} not found (the path is relative to the directory "
                "pipeline runs in, like input.path); fix the path",
                path=path,
                key=key,
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"cannot read schema file {_shown(value)}: {exc.strerror or type(exc).__name__}",
                path=path,
                key=key,
            ) from exc
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(
                f"schema file {value!r} is not valid JSON ({exc}); fix the file",
                path=path,
                key=key,
            ) from exc
    elif not isinstance(value, dict):
        raise ConfigError(
            f"must be the path of a JSON Schema file or an inline table, got {value!r}",
            path=path,
            key=key,
        )
    problem = check_schema(value)
    if problem is not None:
        where = f"schema file {schema_path!r}" if schema_path else "the inline schema"
        raise ConfigError(f"{where}: {problem}", path=path, key=key)
    return value, schema_path


def _examples(
    req: Mapping[str, Any], schema: Mapping[str, Any] | None, path: str
) -> tuple[tuple[str, str], ...]:
    """``request.examples``: a list of ``{ input = "...", output = "..." | { ... } }``."""
    value = req.get("examples")
    if value is None:
        return ()
    key = "request.examples"
    if not isinstance(value, list):
        raise ConfigError(
            'must be a list of tables: examples = [{ input = "...", output = "..." }]',
            path=path,
            key=key,
        )
    extractor = None
    if schema is not None:
        from ..extract import Extractor

        extractor = Extractor(schema)
    pairs: list[tuple[str, str]] = []
    for number, example in enumerate(value, start=1):
        where = f"example {number}"
        if not isinstance(example, dict) or set(example) != {"input", "output"}:
            raise ConfigError(
                f"{where} must be a table with exactly the keys input and output, got {example!r}",
                path=path,
                key=key,
            )
        user, answer = example["input"], example["output"]
        if not isinstance(user, str) or not user.strip():
            raise ConfigError(
                f"{where}: input must be a non-empty string (the user turn, as sent)",
                path=path,
                key=key,
            )
        if isinstance(answer, dict):
            answer = orjson.dumps(answer).decode()
        if not isinstance(answer, str) or not answer.strip():
            raise ConfigError(
                f"{where}: output must be a non-empty string or a table (the answer)",
                path=path,
                key=key,
            )
        if extractor is not None:
            verdict = extractor.check(answer, None)
            if not verdict.ok:
                raise ConfigError(
                    f"{where}: output does not match the schema ({verdict.error}); a few-shot "
                    "answer teaches the model, so it must be valid",
                    path=path,
                    key=key,
                )
        pairs.append((user, answer))
    return tuple(pairs)
