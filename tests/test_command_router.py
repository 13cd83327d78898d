"""The command router in-process (issue 13): retained, response topics, limits, signatures,
audit events, and a hypothesis fuzz: any request gets a reply or a clear refusal, never an
exception, and the router keeps answering."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from hypothesis import given
from hypothesis import strategies as st

from agent.core.config import ConfigError
from agent.core.events import Event
from agent.core.keys import parse_public_key
from agent.service.config import config_from_dict, load_command_key
from agent.telemetry import CommandError, CommandPolicy, CommandRequest, payloads
from agent.telemetry.commands import (
    MAX_RETAINED_NAMES,
    AuditGate,
    CommandHandler,
    CommandOutcome,
    CommandRouter,
)
from agent.telemetry.limits import MAX_JSON_DEPTH, RateLimit, TokenBucket, json_too_deep
from agent.telemetry.signing import (
    CLOCK_SKEW_S,
    MAX_TTL_S,
    CommandRefused,
    NonceCache,
    sign_command,
)
from tests.peers.telemetry import STATION, valid

REPLIES = f"stations/{STATION}/reply"
REPLY_TOPIC = f"{REPLIES}/central-1"
WALL_S = 1_714_550_400.0  # 2024-05-01T08:00:00Z
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # a fixed test key
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


class Recorder:
    """Handlers that record their calls: whether anything ran is the point of most tests."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def handler(self, name: str) -> CommandHandler:
        def run(args: dict[str, Any]) -> dict[str, Any]:
            if "bad" in args:
                raise CommandError("bad argument")
            self.calls.append((name, args))
            return {"done": name}

        return run

    def handlers(self) -> dict[str, CommandHandler]:
        names = ("ping", "restart_capture", "set_rung", "auto")
        return {name: self.handler(name) for name in names} | {"snapshot": lambda a: b"\xff\xd8"}


def router(recorder: Recorder, *, signed: bool = False) -> CommandRouter:
    policy = CommandPolicy(REPLIES, KEY.public_key() if signed else None)
    return CommandRouter(STATION, recorder.handlers(), policy)


def request(name: str, payload: bytes = b"{}", **options: Any) -> CommandRequest:
    options.setdefault("response_topic", REPLY_TOPIC)
    return CommandRequest(name, payload, **options)


def error_code(outcome: CommandOutcome) -> str:
    assert isinstance(outcome.reply, dict), outcome
    return str(valid(outcome.reply)["error"]["code"])


def audit_fields(outcome: CommandOutcome) -> dict[str, Any]:
    assert outcome.audit is not None
    body = payloads.event(STATION, outcome.audit, event_id="0" * 32)
    valid(payloads.with_seq(payloads.to_json(body), 1))
    return outcome.audit.fields


# -- limits -------------------------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_refills_with_time() -> None:
    bucket = TokenBucket(RateLimit(burst=3, per_min=3))
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_s(100.0) == pytest.approx(20.0)
    assert not bucket.take(119.0)
    assert bucket.take(121.0)
    assert not bucket.take(50.0)  # a clock stepping back refills nothing
    assert [bucket.take(1000.0) for _ in range(4)] == [True, True, True, False]  # never > burst


@st.composite
def nested(draw: st.DrawFn) -> tuple[str, int]:
    """JSON text with a known depth, strings full of brackets and escapes included."""
    depth = draw(st.integers(0, 60))
    leaf = json.dumps(draw(st.one_of(st.integers(), st.text(alphabet='[]{}"\\ab', max_size=8))))
    text = leaf
    for _ in range(depth):
        text = f'{{"k[{{": {text}}}' if draw(st.booleans()) else f'["]\\\\", {text}]'
    return text, depth


@given(nested())
def test_depth_check_counts_only_real_nesting(case: tuple[str, int]) -> None:
    text, depth = case
    assert json.loads(text) is not None or text == "null"
    assert json_too_deep(text) == (depth > MAX_JSON_DEPTH)


# -- the checks, one by one ---------------------------------------------------------------------


def test_2000_deep_json_gets_an_error_reply_not_a_recursion_error() -> None:
    rec = Recorder()
    outcome = router(rec).handle(request("ping", b"[" * 2000 + b"]" * 2000), now_s=0, wall_s=WALL_S)
    assert error_code(outcome) == "too_deep" and rec.calls == []
    assert audit_fields(outcome)["reason"] == "too_deep"


def test_retained_commands_never_run_and_are_reported_once_per_name() -> None:
    rec = Recorder()
    commands = router(rec)
    outcomes = [
        commands.handle(request(name, retained=True), now_s=n, wall_s=WALL_S)
        for n, name in enumerate(["restart_capture", "restart_capture", "auto"])
    ]
    assert rec.calls == [] and all(o.reply is None and not o.executed for o in outcomes)
    assert [o.audit is not None for o in outcomes] == [True, False, True]
    assert audit_fields(outcomes[0])["reason"] == "retained"


def test_retained_names_are_remembered_within_a_bound() -> None:
    commands = router(Recorder())
    outcomes = [
        commands.handle(request(f"junk{n}", retained=True), now_s=0, wall_s=WALL_S)
        for n in range(MAX_RETAINED_NAMES + 5)
    ]
    assert sum(o.audit is not None for o in outcomes) == MAX_RETAINED_NAMES


def test_busy_reply_only_where_a_reply_may_go() -> None:
    commands = router(Recorder())
    busy = commands.refuse_busy(request("ping"), WALL_S)
    assert error_code(busy) == "busy" and audit_fields(busy)["reason"] == "busy"
    foreign = commands.refuse_busy(request("ping", response_topic="x/y"), WALL_S)
    assert foreign.reply is None and audit_fields(foreign)["reason"] == "response_topic_refused"
    retained = commands.refuse_busy(request("ping", retained=True), WALL_S)
    assert retained.reply is None


@pytest.mark.parametrize(
    "topic",
    [
        "stations/AZ-0002/reply/x",  # another station's reply topic
        "stations/AZ-0002/status",  # another station's status
        "central/replies/ops",  # the old documented reply topic
        REPLIES,  # the prefix itself, not under it
        f"{REPLIES}x/y",
        f"{REPLIES}/+",
        f"{REPLIES}/#",
        f"{REPLIES}/a\x00b",
    ],
)
def test_replies_go_only_under_the_reply_prefix(topic: str) -> None:
    rec = Recorder()
    outcome = router(rec).handle(request("snapshot", response_topic=topic), now_s=0, wall_s=WALL_S)
    assert outcome.reply is None and not outcome.executed and rec.calls == []
    fields = audit_fields(outcome)
    assert fields["reason"] == "response_topic_refused" and fields["command"] == "snapshot"


def test_a_request_without_a_response_topic_runs_without_a_reply_topic() -> None:
    rec = Recorder()
    outcome = router(rec).handle(request("auto", response_topic=None), now_s=0, wall_s=WALL_S)
    assert outcome.executed and rec.calls == [("auto", {})]


def test_rate_limit_per_command_with_a_clear_error() -> None:
    rec = Recorder()
    commands = router(rec)
    codes = []
    for _ in range(4):
        outcome = commands.handle(request("restart_capture"), now_s=10.0, wall_s=WALL_S)
        codes.append("ok" if outcome.executed else error_code(outcome))
    assert codes == ["ok", "ok", "ok", "rate_limited"]
    assert isinstance(outcome.reply, dict)
    assert "try again in 20 s" in outcome.reply["error"]["message"]
    assert audit_fields(outcome)["reason"] == "rate_limited"
    assert commands.handle(request("auto"), now_s=10.0, wall_s=WALL_S).executed  # its own bucket
    assert commands.handle(request("restart_capture"), now_s=30.0, wall_s=WALL_S).executed


def test_every_outcome_is_audited() -> None:
    rec = Recorder()
    commands = router(rec)
    done = commands.handle(
        request("set_rung", b'{"rung": "720p30"}', correlation=b"\x01\x02"), now_s=0, wall_s=WALL_S
    )
    assert done.executed and done.audit is not None and done.audit.kind == "command"
    assert audit_fields(done) == {
        "command": "set_rung",
        "response_topic": REPLY_TOPIC,
        "correlation": "0102",
        "signed": False,
        "result": "ok",
    }
    refused_by_handler = commands.handle(request("set_rung", b'{"bad": 1}'), now_s=0, wall_s=WALL_S)
    assert error_code(refused_by_handler) == "bad_request"
    assert audit_fields(refused_by_handler)["result"] == "bad_request"
    unknown = commands.handle(request("x" * 10_000), now_s=0, wall_s=WALL_S)
    assert error_code(unknown) == "unknown_command"
    assert unknown.audit is not None and unknown.audit.kind == "command_refused"
    assert len(audit_fields(unknown)["command"]) <= 65  # a hostile name is cut short


def test_a_flood_of_refusals_is_counted_not_reported_one_by_one() -> None:
    rec = Recorder()
    commands = router(rec)
    gate = AuditGate(RateLimit(burst=3, per_min=6))
    junk = request("ping", response_topic="stations/AZ-0002/status")
    reported = [gate.admit(commands.handle(junk, now_s=0, wall_s=WALL_S), 0.0) for _ in range(5)]
    assert [event is not None for event in reported] == [True, True, True, False, False]
    ran = gate.admit(commands.handle(request("ping"), now_s=0, wall_s=WALL_S), 0.0)
    assert ran is not None and ran.kind == "command"  # what ran is always reported
    later = gate.admit(commands.handle(junk, now_s=10, wall_s=WALL_S), 10.0)  # a token back
    assert later is not None and later.fields["unreported_before"] == 2
    assert (gate.done, gate.refused) == (1, 6)


# -- signatures ---------------------------------------------------------------------------------


def signed(name: str, args: dict[str, Any] | None = None, **options: Any) -> bytes:
    options.setdefault("now_utc_s", WALL_S)
    key = options.pop("key", KEY)
    station = options.pop("station", STATION)
    return sign_command(key, station, name, args, **options)


def test_a_signed_command_runs_once() -> None:
    rec = Recorder()
    commands = router(rec, signed=True)
    payload = signed("set_rung", {"rung": "720p30"})
    first = commands.handle(request("set_rung", payload), now_s=0, wall_s=WALL_S + 5)
    assert first.executed and rec.calls == [("set_rung", {"rung": "720p30"})]
    assert audit_fields(first)["signed"] is True
    again = commands.handle(request("set_rung", payload), now_s=1, wall_s=WALL_S + 6)
    assert error_code(again) == "replayed" and len(rec.calls) == 1


def _tampered() -> bytes:
    envelope = json.loads(signed("set_rung", {"rung": "720p30"}))
    envelope["args"]["rung"] = "240p15"
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(
    ("name", "payload", "code"),
    [
        ("set_rung", b'{"rung": "240p15"}', "unsigned"),
        ("auto", b"", "unsigned"),
        ("set_rung", _tampered(), "bad_signature"),
        ("restart_capture", signed("auto"), "bad_signature"),  # signed for another command
        ("auto", signed("auto", key=OTHER_KEY), "bad_signature"),
        ("auto", signed("auto", station="AZ-0002"), "wrong_station"),
        ("auto", signed("auto", now_utc_s=WALL_S - 120, ttl_s=60), "expired"),
        ("auto", signed("auto", now_utc_s=WALL_S + MAX_TTL_S, ttl_s=MAX_TTL_S), "expired"),
        ("auto", b'{"station": "AZ-0001", "sig": "AAAA"}', "bad_request"),
        ("set_rung", b'{"rung": NaN}', "bad_json"),
    ],
)
def test_bad_signed_commands_are_refused_with_a_reason(
    name: str, payload: bytes, code: str
) -> None:
    rec = Recorder()
    outcome = router(rec, signed=True).handle(request(name, payload), now_s=0, wall_s=WALL_S)
    assert error_code(outcome) == code and rec.calls == []
    assert audit_fields(outcome)["reason"] == code


def test_a_station_without_a_key_refuses_an_envelope() -> None:
    rec = Recorder()
    outcome = router(rec).handle(request("auto", signed("auto")), now_s=0, wall_s=WALL_S)
    assert error_code(outcome) == "bad_request" and rec.calls == []


def test_nonces_are_forgotten_once_their_command_expired_and_are_bounded() -> None:
    cache = NonceCache(keep_s=MAX_TTL_S + CLOCK_SKEW_S, max_nonces=2)
    assert cache.add("a" * 16, now_s=0.0) and not cache.add("a" * 16, now_s=1.0)
    assert cache.add("b" * 16, now_s=2.0)
    with pytest.raises(CommandRefused) as refused:
        cache.add("c" * 16, now_s=3.0)
    assert refused.value.code == "busy"
    assert cache.add("c" * 16, now_s=MAX_TTL_S + CLOCK_SKEW_S + 1.0) and len(cache) == 2


def test_public_key_as_pem_or_base64() -> None:
    public = KEY.public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for data in (pem, base64.b64encode(raw) + b"\n"):
        assert parse_public_key(data).public_bytes_raw() == raw
    rsa = generate_private_key(public_exponent=65537, key_size=2048).public_key()
    rsa_pem = rsa.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for bad in (rsa_pem, b"not a key", base64.b64encode(b"short"), b"-----BEGIN junk"):
        with pytest.raises(ValueError):
            parse_public_key(bad)


def test_command_key_file_is_loaded_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "command-key.pub"
    raw = KEY.public_key().public_bytes_raw()
    path.write_bytes(base64.b64encode(raw))
    os.chmod(path, 0o644)
    cfg = config_from_dict(
        {
            "station_id": STATION,
            "capture": {"source": "test:"},
            "spool": {"path": str(tmp_path / "spool")},
            "mqtt": {"url": "mqtts://broker.example.org", "command_key_file": str(path)},
        }
    )
    key = load_command_key(cfg)
    assert key is not None and key.public_bytes_raw() == raw
    os.chmod(path, 0o666)  # noqa: S103 - the mistake under test
    with pytest.raises(ConfigError, match="chmod go-w"):
        load_command_key(cfg)
    path.write_bytes(b"garbage")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="Ed25519"):
        load_command_key(cfg)
    path.unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        load_command_key(cfg)


# -- fuzz ---------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
NAMES = st.sampled_from(["ping", "restart_capture", "set_rung", "snapshot", "auto"]) | st.text(
    max_size=80
)


@st.composite
def payloads_to_try(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "deep", "envelope", "big"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    if kind == "deep":
        depth = draw(st.integers(1, 3000))
        return draw(st.sampled_from([b"[", b'{"a":'])) * depth
    if kind == "big":
        return b" " * draw(st.integers(4000, 5000)) + b"{}"
    envelope = json.loads(
        signed(draw(NAMES), draw(st.dictionaries(st.text(max_size=5), JSON_VALUES)))
    )
    key = draw(st.sampled_from([None, *sorted(envelope)]))
    if key is not None:  # mutate one field, or drop it
        if draw(st.booleans()):
            envelope[key] = draw(JSON_VALUES)
        else:
            del envelope[key]
    return json.dumps(envelope).encode()


@given(
    name=NAMES,
    payload=payloads_to_try(),
    topic=st.none()
    | st.just(REPLY_TOPIC)
    | st.text(max_size=40).map(lambda t: f"{REPLIES}/{t}")
    | st.text(max_size=40),
    retained=st.booleans(),
    signed_only=st.booleans(),
    now_s=st.floats(0, 1e6),
    wall_s=st.floats(WALL_S - 1e5, WALL_S + 1e5),
)
def test_fuzz_every_request_gets_a_reply_or_a_clear_refusal(
    name: str,
    payload: bytes,
    topic: str | None,
    retained: bool,
    signed_only: bool,
    now_s: float,
    wall_s: float,
) -> None:
    rec = Recorder()
    commands = router(rec, signed=signed_only)
    outcome = commands.handle(
        CommandRequest(name, payload, topic, b"c", retained), now_s=now_s, wall_s=wall_s
    )
    if isinstance(outcome.reply, dict):
        body = valid(outcome.reply)
        assert body["ok"] or body["error"]["message"]
    elif outcome.reply is None:  # only where a reply must not (or cannot) be sent
        assert (
            retained
            or outcome.audit is not None
            and outcome.audit.fields["reason"]
            in (
                "retained",
                "response_topic_refused",
            )
        )
    else:
        assert outcome.reply == b"\xff\xd8" and outcome.executed
    assert outcome.executed == bool(rec.calls) or name == "snapshot"
    if outcome.audit is not None:
        audit_fields(outcome)
        assert outcome.audit.kind == ("command" if outcome.executed else "command_refused")
    assert retained or outcome.audit is not None
    # and the router still answers
    ping = signed("ping", now_utc_s=wall_s) if signed_only else b"{}"
    after = commands.handle(request("ping", ping), now_s=now_s + 60, wall_s=wall_s)
    assert isinstance(after.reply, dict) and after.reply["ok"], after.reply


def test_audit_events_are_plain_events() -> None:
    outcome = router(Recorder()).handle(request("ping"), now_s=0, wall_s=WALL_S)
    assert isinstance(outcome.audit, Event) and outcome.audit.at_utc == "2024-05-01T08:00:00.000Z"
