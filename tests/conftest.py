from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True, scope="session")
def _price_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Prices looked up by the tests (and the CLI processes they start) are cached in a folder
    of the session's, never in the user's ~/.cache."""
    import os

    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """Whatever a test configured (a CLI run points structlog at a run's log file), the next
    test starts from structlog's defaults."""
    yield
    structlog.reset_defaults()


# -- a fake provider in a thread of its own, for synchronous callers (the CLI) ----------------
# (appended below the original fixtures, imports included, so concurrent edits do not collide)

import asyncio  # noqa: E402
import concurrent.futures  # noqa: E402
import dataclasses  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any, TypeVar  # noqa: E402

from pipeline.fake import (  # noqa: E402
    AccountingSnapshot,
    FakeConfig,
    FakeProvider,
    running_fake_provider,
)

T = TypeVar("T")


class ThreadedFakeProvider:
    """A fake provider serving from its own thread and event loop.

    ``pipeline.cli.main`` runs its own event loop with ``anyio.run``, so a fake on the test's
    loop could not answer it. This one can; every call that touches the provider's state runs
    on the provider's loop (its accounting is loop-only).
    """

    def __init__(self, provider: FakeProvider, loop: asyncio.AbstractEventLoop) -> None:
        self.provider = provider
        self.loop = loop

    @property
    def openai_base_url(self) -> str:
        return self.provider.openai_base_url

    @property
    def anthropic_base_url(self) -> str:
        return self.provider.anthropic_base_url

    def base_url(self, provider: str) -> str:
        return self.openai_base_url if provider == "openai" else self.anthropic_base_url

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the provider's loop; its result or its exception."""
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the calling thread
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(timeout=10)

    def accounting(self) -> AccountingSnapshot:
        return self.call(self.provider.accounting)

    def update_config(self, **knobs: object) -> FakeConfig:
        return self.call(self.provider.update_config, **knobs)

    def reset(self) -> None:
        """Default knobs, empty accounting and fresh buckets: as if just started."""
        defaults = {f.name: getattr(FakeConfig(), f.name) for f in dataclasses.fields(FakeConfig)}
        self.call(self.provider.update_config, **defaults)
        self.call(self.provider.reset)


@pytest.fixture(scope="session")
def fake_provider_thread() -> Iterator[ThreadedFakeProvider]:
    """One fake provider on 127.0.0.1 (port 0) for the session, served by a daemon thread."""
    started = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        async with running_fake_provider(FakeConfig()) as provider:
            state["fake"] = ThreadedFakeProvider(provider, asyncio.get_running_loop())
            state["stop"] = stop
            started.set()
            await stop.wait()

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:
            state["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=main, name="fake-provider", daemon=True)
    thread.start()
    started.wait(timeout=30)
    if "fake" not in state:
        raise RuntimeError(f"the fake provider did not start: {state.get('error')!r}")
    fake: ThreadedFakeProvider = state["fake"]
    try:
        yield fake
    finally:
        fake.loop.call_soon_threadsafe(state["stop"].set)
        thread.join(timeout=10)
        assert not thread.is_alive(), "the fake provider's thread did not stop"
        assert "error" not in state, state.get("error")


@pytest.fixture
def threaded_fake(fake_provider_thread: ThreadedFakeProvider) -> ThreadedFakeProvider:
    """The session's threaded fake provider, reset to defaults for this test."""
    fake_provider_thread.reset()
    return fake_provider_thread


# -- one local Ray for the session's Ray tests (tests/test_ray.py) ----------------------------

import os  # noqa: E402
import time  # noqa: E402

RAY_WORKER_KEY = "sk" + "-ray-worker-SECRET-7d3e91c0a5b2"
"""The OpenAI key the session's Ray workers find in their environment, as a cluster's nodes
would (exported before ``ray start``); the tests check it appears in no file."""


@dataclasses.dataclass(frozen=True)
class LocalRay:
    gcs_address: str  # what a second driver (a `pipeline run --address` process) joins
    session_dir: str  # Ray's logs, searched for keys


@pytest.fixture(scope="session")
def local_ray() -> Iterator[LocalRay]:
    """A local Ray (2 CPUs) started once for the session's Ray tests and shut down at its end;
    the tests skip, saying why, where Ray is not installed or cannot start."""
    try:
        import ray
    except ImportError:
        pytest.skip("Ray is not installed (pip install -e '.[ray]', or the dev extra)")
    import logging

    before = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = RAY_WORKER_KEY  # inherited by Ray's processes only
    started = time.monotonic()
    try:
        context = ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level=logging.ERROR,
            object_store_memory=128 * 1024 * 1024,
            namespace="llm-batch-pipeline",
        )
    except Exception as exc:
        pytest.skip(f"a local Ray cannot start here: {type(exc).__name__}: {exc}")
    finally:
        if before is None:
            del os.environ["OPENAI_API_KEY"]
        else:
            os.environ["OPENAI_API_KEY"] = before
    info = context.address_info
    print(f"\nlocal Ray up in {time.monotonic() - started:.1f}s at {info['gcs_address']}")
    try:
        yield LocalRay(gcs_address=info["gcs_address"], session_dir=info["session_dir"])
    finally:
        ray.shutdown()
