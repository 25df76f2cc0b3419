from __future__ import annotations

from pathlib import Path

import orjson
import structlog
from structlog.testing import capture_logs

from pipeline.logs import configure_logging, redact_secrets, register_secret


def test_anything_shaped_like_a_key_is_redacted() -> None:
    event = {
        "event": "x",
        "error": "401 for key sk" + "-proj-abcdefghijklmnopqrstuvwx",
        "nested": {"h": ["Bearer abc.def"], "k": "sk" + "-ant-api03-abcdefghij"},
    }
    out = redact_secrets(None, "info", dict(event))
    text = str(out)
    assert "abcdefghijklmnop" not in text
    assert "abc.def" not in text
    assert "sk-ant-api03" not in text
    assert out["event"] == "x"


def test_a_registered_key_of_any_shape_is_redacted_in_the_log_file(tmp_path: Path) -> None:
    register_secret("plainsecretvalue42")
    log_file = tmp_path / "run.log.jsonl"
    handle = configure_logging(log_file=log_file, terminal_level="critical")
    try:
        structlog.get_logger().info("request_failed", detail="got plainsecretvalue42 back")
    finally:
        assert handle is not None
        handle.close()
    line = orjson.loads(log_file.read_bytes().splitlines()[-1])
    assert line["event"] == "request_failed"
    assert line["level"] == "info"
    assert "plainsecretvalue42" not in line["detail"]
    assert line["timestamp"].endswith("Z")


def test_events_carry_bound_context() -> None:
    with capture_logs() as logs:
        structlog.get_logger().bind(job="j", run_id="r").warning("row_failed", row_id="7")
    assert logs == [
        {"job": "j", "run_id": "r", "row_id": "7", "event": "row_failed", "log_level": "warning"}
    ]


def test_a_terminal_gets_a_short_line_and_the_file_keeps_the_json() -> None:
    from pipeline.logs import _for_people

    line = orjson.dumps(
        {
            "job": "j",
            "run_id": "r",
            "row_id": "r7",
            "error_type": "timeout",
            "event": "row_failed",
            "level": "warning",
            "timestamp": "2026-11-22T00:00:00Z",
        }
    )
    assert _for_people(line) == "warning row_failed: row_id=r7 error_type=timeout"
