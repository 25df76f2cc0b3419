"""Planning rows once: send, record as an input error, or skip — the same for every consumer."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from pipeline.job import RequestSpec
from pipeline.plan import Planner, Record, RowFilter, Seen, Send, Skip, Unrendered, WorkItem
from pipeline.records import BadRow, ResultBuilder, Row, Status
from pipeline.render import Renderer, request_key

SPEC = RequestSpec(provider="openai", model="gpt-4o-mini", prompt="Review: {text}", max_tokens=8)
RENDERER = Renderer(SPEC)
SOURCE = "data/reviews.jsonl"


def key(row_id: str) -> str:
    return request_key(row_id, RENDERER.prompt_hash)


def rows(*ids: str, start: int = 1) -> list[Row | BadRow]:
    return [Row(i, {"text": f"text of {i}"}, SOURCE, n) for n, i in enumerate(ids, start)]


class Store:
    """What a store has seen, by key; ``during`` runs while the planner waits for the answer."""

    def __init__(self, seen: Mapping[str, Sequence[Seen]] | None = None) -> None:
        self.known: dict[str, list[Seen]] = {k: list(v) for k, v in (seen or {}).items()}
        self.during: Callable[[], None] | None = None
        self.asked = 0

    def seen(
        self, keys: Sequence[str], *, run_id: str, near: tuple[str, int, int] | None = None
    ) -> Mapping[str, Sequence[Seen]]:
        self.asked += 1
        if self.during is not None:
            self.during()
        return {k: self.known[k] for k in keys if k in self.known}


def planner(store: Store | None = None, run_id: str = "run-2", **options: object) -> Planner:
    results = ResultBuilder(
        job="reviews",
        run_id=run_id,
        prompt_hash=RENDERER.prompt_hash,
        provider="openai",
        model="gpt-4o-mini",
    )
    return Planner(RENDERER, results, lookup=store, **options)  # type: ignore[arg-type]


def kinds(items: list[WorkItem]) -> list[str]:
    out = []
    for item in items:
        if isinstance(item, Send):
            out.append(f"send {item.request.row_id}")
        elif isinstance(item, Record):
            out.append(f"record {item.result.row_id} {item.result.error_type}")
        elif isinstance(item, Skip):
            out.append(f"skip {item.line} {item.reason}")
        else:
            out.append(f"unrendered {item.row.row_id}")
    return out


def test_rows_are_sent_in_input_order_and_bad_ones_recorded_with_their_reason() -> None:
    chunk = [
        *rows("a"),
        BadRow(f"{SOURCE}:2", SOURCE, 2, "line 2: not JSON", "bad_json"),
        Row("c", {"other": 1}, SOURCE, 3),
        *rows("d", start=4),
    ]
    items = planner().plan(chunk)
    assert kinds(items) == [
        "send a",
        f"record {SOURCE}:2 bad_json",
        "record c missing_field",
        "send d",
    ]
    recorded = [i.result for i in items if isinstance(i, Record)]
    assert {r.status for r in recorded} == {Status.INPUT_ERROR}
    assert all(r.attempts == 0 and r.cost_usd is None for r in recorded)


def test_a_second_row_with_the_same_id_is_recorded_naming_the_first() -> None:
    items = planner().plan(rows("a", "b", "a"))
    assert kinds(items) == ["send a", "send b", "record a duplicate_id"]
    duplicate = items[2]
    assert isinstance(duplicate, Record)
    assert f"{SOURCE} line 3" in (duplicate.result.error or "")
    assert f"the same row id as {SOURCE} line 1" in (duplicate.result.error or "")


def test_a_duplicate_is_caught_while_the_first_is_still_in_flight() -> None:
    p = planner(Store())
    assert kinds(p.plan(rows("a", "b"))) == ["send a", "send b"]
    # The first 'a' has not been committed: the store knows nothing of it yet.
    assert kinds(p.plan(rows("c", "a", start=3))) == ["send c", "record a duplicate_id"]


def test_a_duplicate_is_caught_once_the_first_is_committed_and_forgotten() -> None:
    store = Store()
    p = planner(store)
    (first,) = p.plan(rows("a"))
    assert isinstance(first, Send)
    store.known[key("a")] = [Seen("ok", "run-2", SOURCE, 1)]
    p.forget([_result_of(p, first)])
    assert kinds(p.plan(rows("b", "a", start=2))) == ["send b", "record a duplicate_id"]


def test_a_key_committed_while_the_store_is_asked_is_still_caught() -> None:
    store = Store()
    p = planner(store)
    (first,) = p.plan(rows("a"))
    assert isinstance(first, Send)

    def commit_now() -> None:
        # The answer lands, and is forgotten, after the planner read what is in flight but
        # before the store's answer (which no longer shows it) comes back.
        p.forget([_result_of(p, first)])

    store.during = commit_now
    assert kinds(p.plan(rows("a", start=9))) == ["record a duplicate_id"]


def test_a_resumed_run_skips_what_it_recorded_and_what_any_run_did_well() -> None:
    store = Store(
        {
            key("a"): [Seen("recorded", "run-2", SOURCE, 1)],  # this run: failed, say
            key("b"): [Seen("ok", "run-1", SOURCE, 2)],  # an earlier run: ok
            key("c"): [Seen("recorded", "run-1", SOURCE, 3)],  # an earlier run's failure
        }
    )
    assert kinds(planner(store).plan(rows("a", "b", "c", "d"))) == [
        "skip 1 done",
        "skip 2 done",
        "send c",
        "send d",
    ]


def test_rows_in_another_runs_open_batch_are_never_sent_again() -> None:
    pending = Seen("batched", "run-1", SOURCE, 1, batch_id="batch_1", status="in_progress")
    items = planner(Store({key("a"): [pending]})).plan(rows("a", "b"))
    assert kinds(items) == ["skip 1 pending", "send b"]
    first = items[0]
    assert isinstance(first, Skip) and first.seen == pending


def test_rows_this_run_put_in_a_batch_are_skipped_unless_sent_online_after_it() -> None:
    store = Store({key("a"): [Seen("batched", "run-2", SOURCE, 1, batch_id="batch_1")]})
    assert kinds(planner(store).plan(rows("a", "b"))) == ["skip 1 submitted", "send b"]
    online = planner(store, only=RowFilter(frozenset({key("a")})), resend_batched=True)
    assert kinds(online.plan(rows("a", "b"))) == ["send a", "skip 2 filtered"]


def test_a_rerun_sends_the_failed_keys_and_the_lines_of_input_errors() -> None:
    only = RowFilter(frozenset({key("b")}), frozenset({(SOURCE, 3)}))
    assert kinds(planner(only=only).plan(rows("a", "b", "c"))) == [
        "skip 1 filtered",
        "send b",
        "send c",
    ]


def test_a_prompt_longer_than_the_context_is_recorded_not_sent() -> None:
    chunk: list[Row | BadRow] = [
        Row("short", {"text": "fine"}, SOURCE, 1),
        Row("long", {"text": "x" * 4000}, SOURCE, 2),
    ]
    items = planner(context_window=200).plan(chunk)
    assert kinds(items) == ["send short", "record long context_exceeded"]
    long = items[1]
    assert isinstance(long, Record) and long.rendered
    assert "more than the model's context of 200" in (long.result.error or "")


def test_an_estimate_can_leave_rows_unrendered_and_remember_nothing() -> None:
    p = planner(track_duplicates=False)
    items = p.plan(rows("a", "b", "c"), render=lambda k: k == key("b"))
    assert kinds(items) == ["unrendered a", "send b", "unrendered c"]
    assert isinstance(items[0], Unrendered)
    assert kinds(p.plan(rows("b", start=4))) == ["send b"]  # nothing remembered


def test_a_new_request_version_asks_the_store_only_once_it_has_committed_something() -> None:
    store = Store()
    p = planner(store, look_up_first=False)
    (sent,) = p.plan(rows("a"))
    assert store.asked == 0
    assert isinstance(sent, Send)
    p.forget([_result_of(p, sent)])
    p.plan(rows("b", start=2))
    assert store.asked == 1


def _result_of(p: Planner, item: Send) -> object:
    r = item.request
    return p.results.unanswered(
        r.request_key, r.row_id, r.source, r.line, Status.FAILED, "x", "x", attempts=1
    )
