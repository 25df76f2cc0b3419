"""One redaction for logs, the store and error messages (``pipeline.redact``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.redact import REDACTED, redact, register_secret, safe_url

# Built at run time, so no key-shaped literal sits in the source.
OPENAI_KEY = "sk" + "-proj-AbCdEf0123456789xyz"
ANTHROPIC_KEY = "sk" + "-ant-api03-XYZXYZXYZ"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"401 for key {OPENAI_KEY}.", f"401 for key {REDACTED}."),
        (f"key={ANTHROPIC_KEY}", f"key={REDACTED}"),
        ("provided: sk" + "-abc***wxyz", f"provided: {REDACTED}"),  # the masked echo of a key
        ("authorization: Bearer abc.def ok", f"authorization: {REDACTED} ok"),
        ("authorization: bearer abc.def", f"authorization: {REDACTED}"),
        ("https://user:pw@proxy.example.com/v1", f"https://{REDACTED}@proxy.example.com/v1"),
        ("https://h/v1?api_key=abc&x=1", f"https://h/v1?api_key={REDACTED}&x=1"),
        ("https://h/v1?x=1&Token=abc#f", f"https://h/v1?x=1&Token={REDACTED}#f"),
        ("https://h/v1?access_token=abc", f"https://h/v1?access_token={REDACTED}"),
    ],
)
def test_credentials_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    ["task-1234 and risk-free", "gpt-4o-mini", "https://api.openai.com/v1", "sk-12", "a@b.c"],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_a_registered_secret_of_any_shape_is_redacted() -> None:
    register_secret("plain-secret-7f3a")
    register_secret("abc")  # too short to register: it would redact ordinary words
    assert redact("got plain-secret-7f3a back, abc") == f"got {REDACTED} back, abc"


@given(st.text(alphabet="abcXYZ0123456789-_", min_size=4, max_size=40))
def test_no_key_survives_whatever_surrounds_it(tail: str) -> None:
    for text in (f"sk-{tail}", f"x sk-ant-{tail} y", f'{{"k": "sk-{tail}"}}'):
        assert f"sk-{tail}" not in redact(text)


def test_safe_url_keeps_scheme_host_port_and_path_only() -> None:
    url = "https://user:pw@proxy.example.com:8443/v1?api_key=abc#frag"
    assert safe_url(url) == "https://proxy.example.com:8443/v1"
    assert safe_url("http://127.0.0.1/v1") == "http://127.0.0.1/v1"
