"""Standard Webhooks signing: the published vector, the reference library both ways, rotation,
tampering, tolerance and secret errors that never echo the secret."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tidings.webhooks.signing import (
    Signer,
    SigningError,
    VerificationError,
    generate_secret,
    parse_secret,
    sign_headers,
    signature,
    verify,
)

# Published by the standard-webhooks repository (libraries/python/tests/test_webhooks.py,
# test_sign_function); the same vector appears in its other language libraries.
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

BODY = b'{"event_type":"order.paid","data":{"id":7}}'


def test_published_vector() -> None:
    assert signature(VECTOR_ID, VECTOR_TS, VECTOR_BODY, VECTOR_SECRET) == VECTOR_SIGNATURE
    assert signature(VECTOR_ID, VECTOR_TS, VECTOR_BODY, parse_secret(VECTOR_SECRET)) == (
        VECTOR_SIGNATURE
    )
    headers = Signer([VECTOR_SECRET]).headers(VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    assert headers == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TS),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    verify(headers, VECTOR_BODY, [VECTOR_SECRET], now=VECTOR_TS + 10)


def test_generated_secrets_are_random_24_byte_keys() -> None:
    secrets = {generate_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(parse_secret(secret)) == 24


def test_reference_library_verifies_tidings_headers() -> None:
    secret = generate_secret()
    now = int(time.time())
    headers = sign_headers("msg_0190f3c2-7f3e", now, BODY, [secret])
    assert Webhook(secret).verify(BODY, headers) == {"event_type": "order.paid", "data": {"id": 7}}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)


def test_tidings_verifies_what_the_reference_library_signs() -> None:
    secret = generate_secret()
    now = int(time.time())
    ref = Webhook(secret).sign("msg_ref", _utc(now), BODY.decode())
    headers = {"webhook-id": "msg_ref", "webhook-timestamp": str(now), "webhook-signature": ref}
    verify(headers, BODY, [secret])
    with pytest.raises(VerificationError, match="none of 1 v1 signature"):
        verify(headers, BODY, [generate_secret()])


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def test_rotation_old_or_new_secret_alone_verifies() -> None:
    old, new = generate_secret(), generate_secret()
    now = int(time.time())
    headers = Signer([new, old]).headers("msg_rot", now, BODY)
    entries = headers["webhook-signature"].split(" ")
    assert entries == [
        signature("msg_rot", now, BODY, new),
        signature("msg_rot", now, BODY, old),
    ]
    for known in (old, new):
        verify(headers, BODY, [known])
        Webhook(known).verify(BODY, headers)
    with pytest.raises(VerificationError):
        verify(headers, BODY, [generate_secret()])
    # A receiver mid-rotation holds both and accepts a sender still on the old one alone.
    verify(sign_headers("msg_rot", now, BODY, [old]), BODY, [new, old])


@pytest.mark.parametrize(
    ("field", "value", "body"),
    [
        ("webhook-id", "msg_other", BODY),
        ("webhook-timestamp", None, BODY),
        ("webhook-signature", None, BODY),
        (None, None, BODY.replace(b"7", b"8")),
    ],
    ids=["id", "timestamp", "signature", "body"],
)
def test_tampering_fails(field: str | None, value: str | None, body: bytes) -> None:
    secret = generate_secret()
    now = int(time.time())
    headers = sign_headers("msg_orig", now, BODY, [secret])
    if field == "webhook-timestamp":
        headers[field] = str(now - 1)
    elif field == "webhook-signature":
        raw = bytearray(base64.b64decode(headers[field][3:]))
        raw[0] ^= 1
        headers[field] = "v1," + base64.b64encode(bytes(raw)).decode()
    elif field is not None:
        assert value is not None
        headers[field] = value
    with pytest.raises(VerificationError, match="webhook-signature: none of"):
        verify(headers, body, [secret], now=now)


def test_header_lookup_is_case_insensitive() -> None:
    secret = generate_secret()
    headers = sign_headers("msg_case", 1000, BODY, [secret])
    mixed = {"Webhook-Id": headers["webhook-id"]}
    mixed["WEBHOOK-TIMESTAMP"] = headers["webhook-timestamp"]
    mixed["Webhook-Signature"] = headers["webhook-signature"]
    verify(mixed, BODY, [secret], now=1000)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header(missing: str) -> None:
    secret = generate_secret()
    headers = sign_headers("msg_m", 1000, BODY, [secret])
    del headers[missing]
    with pytest.raises(VerificationError, match=f"{missing}: header missing"):
        verify(headers, BODY, [secret], now=1000)


@pytest.mark.parametrize("bad", ["soon", "1000.5", "-1000", "\uff11\uff10\uff10\uff10"])
def test_bad_timestamp(bad: str) -> None:
    secret = generate_secret()
    headers = sign_headers("msg_t", 1000, BODY, [secret])
    headers["webhook-timestamp"] = bad
    with pytest.raises(VerificationError, match="expected integer seconds"):
        verify(headers, BODY, [secret], now=1000)


def test_tolerance_bounds_both_ways() -> None:
    secret = generate_secret()
    headers = sign_headers("msg_tol", 10_000, BODY, [secret])
    verify(headers, BODY, [secret], now=10_300)  # exactly at the edge
    verify(headers, BODY, [secret], now=9_700)
    with pytest.raises(VerificationError, match="301s old"):
        verify(headers, BODY, [secret], now=10_301)
    with pytest.raises(VerificationError, match="in the future"):
        verify(headers, BODY, [secret], now=9_699)
    verify(headers, BODY, [secret], now=10_900, tolerance=900)
    with pytest.raises(VerificationError, match="old"):
        verify(headers, BODY, [secret], now=10_001, tolerance=0)


def test_unknown_versions_and_garbage_entries_are_skipped() -> None:
    secret = generate_secret()
    good = signature("msg_v", 1000, BODY, secret)
    headers = {
        "webhook-id": "msg_v",
        "webhook-timestamp": "1000",
        "webhook-signature": f"v1a,AAAA v1,!!notbase64 nocomma  {good}",
    }
    verify(headers, BODY, [secret], now=1000)
    headers["webhook-signature"] = "v1a,AAAA v2," + good[3:]
    with pytest.raises(VerificationError, match="no v1 signature"):
        verify(headers, BODY, [secret], now=1000)


SECRET_LOOKING = "whsec_c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1ub3QtbGVhaw"  # 36 bytes, valid


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1ub3QtbGVhaw==", "without that prefix"),
        ("WHSEC_c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1ub3QtbGVhaw==", "without that prefix"),
        ("whsec_c2VjcmV0LXZhbHVl*XRoYXQtbXVzdC1ub3QtbGVhaw==", "not valid base64"),
        ("whsec_c2VjcmV0 LXZhbHVlLXRoYXQtbXVzdC1ub3QtbGVhaw==", "not valid base64"),
        ("whsec_c2VjcmV0LXZhbHVl", "decodes to 12 bytes, expected 24 to 64"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "decodes to 65 bytes"),
        ("whsec_", "decodes to 0 bytes"),
    ],
)
def test_bad_secret_is_named_but_not_echoed(bad: str, expected: str) -> None:
    for call in (
        lambda: parse_secret(bad),
        lambda: signature("msg_s", 1, BODY, bad),
        lambda: Signer([generate_secret(), bad]),
        lambda: verify({}, BODY, [bad]),
    ):
        with pytest.raises(SigningError, match=expected) as info:
            call()
        message = str(info.value)
        assert "webhook secret" in message and "generate_secret()" in message
        payload = bad.removeprefix("whsec_").removeprefix("WHSEC_")
        if payload:
            assert payload[:12] not in message


def test_unpadded_secret_is_accepted_like_the_reference() -> None:
    unpadded = SECRET_LOOKING.rstrip("=")
    assert parse_secret(unpadded) == parse_secret(unpadded + "=" * (-len(unpadded) % 4))
    headers = sign_headers("msg_u", int(time.time()), BODY, [unpadded])
    Webhook(unpadded).verify(BODY, headers)


def test_signer_and_verify_argument_errors() -> None:
    with pytest.raises(SigningError, match="at least one secret"):
        Signer([])
    with pytest.raises(SigningError, match="a single value"):
        Signer(VECTOR_SECRET)
    with pytest.raises(SigningError, match="non-empty list"):
        verify({}, BODY, VECTOR_SECRET)
    with pytest.raises(SigningError, match="empty key"):
        signature("msg", 1, BODY, b"")
    with pytest.raises(ValueError, match="tolerance"):
        verify({}, BODY, [VECTOR_SECRET], tolerance=-1)


@pytest.mark.parametrize("msg_id", ["", "msg.1", "a.b.c"])
def test_message_ids_that_would_shift_the_signed_content_are_refused(msg_id: str) -> None:
    with pytest.raises(SigningError, match=r"webhook-id: expected a non-empty id without '\.'"):
        Signer([VECTOR_SECRET]).headers(msg_id, 1, BODY)
    with pytest.raises(SigningError):
        signature(msg_id, 1, BODY, VECTOR_SECRET)


def test_signer_is_reusable_and_matches_one_off_signing() -> None:
    signer = Signer([VECTOR_SECRET])
    first = signer.signature("msg_a", 1, b"one")
    assert signer.signature("msg_b", 2, b"two") == signature("msg_b", 2, b"two", VECTOR_SECRET)
    assert signer.signature("msg_a", 1, b"one") == first  # the keyed state is not consumed
