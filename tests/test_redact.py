"""agent/core/redact.py: no password or token of a URL survives, whatever characters it holds."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.redact import (
    RedactingFilter,
    redact_data,
    redact_text,
    redact_url,
    url_secrets,
)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # the passwords the old regex showed in part or whole: "/", "@", ":" and "#" in them
        ("rtsp://admin:k1wi/m4ngo@127.0.0.1:1/stream", "rtsp://***@127.0.0.1:1/stream"),
        ("rtsp://admin:k1wi@m4ngo@cam/stream", "rtsp://***@cam/stream"),
        ("rtsp://admin:k1wi/m4@ngo#p3:ar@cam:554/live", "rtsp://***@cam:554/live"),
        ("rtsp://admin:pass@[fe80::1]:554/x", "rtsp://***@[fe80::1]:554/x"),
        # a user name alone can be the secret
        ("https://ghp_T0KEN@example.org/x", "https://***@example.org/x"),
        # credentials in parameters: query, path (Dahua style) and fragment
        (
            "http://cam/snap.cgi?user=viewer&pwd=k1wi&chn=1",
            "http://cam/snap.cgi?user=viewer&pwd=***&chn=1",
        ),
        (
            "https://up.example/in?X-Amz-Signature=ab/cd&x=1",
            "https://up.example/in?X-Amz-Signature=***&x=1",
        ),
        (
            "rtsp://cam/user=admin&password=k1wi&channel=1",
            "rtsp://cam/user=admin&password=***&channel=1",
        ),
        ("https://h/p#access_token=k1wi&state=2", "https://h/p#access_token=***&state=2"),
        # nothing to hide
        ("v4l2:/dev/video0", "v4l2:/dev/video0"),
        ("test:noise", "test:noise"),
        ("file:///srv/a@b/cam.mp4", "file:///srv/a@b/cam.mp4"),
        ("http://host/people/a@b.org", "http://host/people/a@b.org"),
        ("mqtts://broker.example.org:8883", "mqtts://broker.example.org:8883"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_what_cannot_be_parsed_is_hidden_not_shown() -> None:
    # an "@" later in the URL could end the userinfo: the host is hidden rather than a password
    assert redact_url("rtsp://admin:k1wi@cam/live?token=@x") == "rtsp://***@x"
    assert redact_url("rtsp://admin:k1wi@[::1/stream") == "rtsp://***"
    assert "k1wi" not in redact_url("rtsp://admin:k1wi@ho st/")


ANY_TEXT = st.characters(codec="utf-8")  # every character a password can hold
QUERY_VALUE = st.characters(
    codec="utf-8", exclude_categories=("Cs", "Zs", "Cc"), exclude_characters="&#@"
)


@given(password=st.text(ANY_TEXT, min_size=1), token=st.text(QUERY_VALUE, min_size=1))
def test_no_password_or_token_survives(password: str, token: str) -> None:
    url = f"rtsp://admin:{password}@cam.local:554/live?token={token}"
    assert redact_url(url) == "rtsp://***@cam.local:554/live?token=***"
    assert password in url_secrets(url) and token in url_secrets(url)


def test_free_text_loses_urls_and_known_secrets() -> None:
    message = "cannot open 'rtsp://admin:k1wi/m4ngo@cam/x': token s3cr3t-t0ken refused"
    shown = redact_text(message, ["s3cr3t-t0ken"])
    assert shown == "cannot open 'rtsp://***@cam/x': token *** refused"
    # repr() escapes a quote or a backslash: the escaped form is hidden too
    assert redact_text(repr("it's-k1wi"), ["it's-k1wi"]) == '"***"'
    assert redact_text("abc ab", ["ab"]) == "abc ab"  # too short to be looked for in free text
    nested = {"a": ["x rtsp://u:k1wi@cam/", {"b": "s3cr3t-t0ken"}], "n": 3}
    assert "k1wi" not in str(redact_data(nested)) and redact_data(nested, ["s3cr3t-t0ken"])["a"][
        1
    ] == {"b": "***"}


def test_log_filter_hides_secrets_in_messages_arguments_and_tracebacks() -> None:
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "reopening %s", ("rtsp://u:k1wi@cam/",), None
    )
    try:
        raise ValueError("bad token s3cr3t-t0ken")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    RedactingFilter(["s3cr3t-t0ken"]).filter(record)
    text = logging.Formatter().format(record)
    assert "reopening rtsp://***@cam/" in text and "ValueError: bad token ***" in text
    assert "k1wi" not in text and "s3cr3t" not in text
