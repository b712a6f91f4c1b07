"""Checking AWS Signature Version 4 on a received request (provider-protocols.md §3.3; no I/O).

Computed here from the specification, independently of any client-side signer, so a
signing bug in a client shows up as a mismatch instead of being reproduced.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Mapping
from typing import NamedTuple

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = datetime.timedelta(minutes=15)
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")


class SigV4Error(Exception):
    """The signature is missing parts or does not check out; `code` is the AWS exception name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Credential(NamedTuple):
    access_key: str
    date: str  # yyyymmdd
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


def parse_authorization(value: str) -> Credential:
    """Split `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…` into its parts."""
    algorithm, _, rest = value.partition(" ")
    if algorithm != ALGORITHM:
        raise SigV4Error("IncompleteSignatureException", f"Unsupported signature algorithm {algorithm!r}.")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if sep:
            fields[key] = val
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if k not in fields]
    if missing:
        raise SigV4Error(
            "IncompleteSignatureException",
            f"Authorization header requires {', '.join(repr(k) for k in missing)} parameter(s). "
            f"Authorization={value}",
        )
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not re.fullmatch(r"\d{8}", scope[1]):
        raise SigV4Error(
            "IncompleteSignatureException",
            f"Credential should be of the form <access key>/<yyyymmdd>/<region>/<service>/aws4_request, "
            f"not {fields['Credential']!r}.",
        )
    if not _SIGNATURE_RE.fullmatch(fields["Signature"]):
        raise SigV4Error("IncompleteSignatureException", "Signature must be 64 lower-case hex digits.")
    signed = tuple(fields["SignedHeaders"].split(";"))
    if not all(signed) or list(signed) != sorted(signed) or any(h != h.lower() for h in signed):
        raise SigV4Error("IncompleteSignatureException", "SignedHeaders must be sorted lower-case names.")
    return Credential(scope[0], scope[1], scope[2], scope[3], signed, fields["Signature"])


def _uri_encode(s: str) -> str:
    return urllib.parse.quote(s, safe="-_.~")


def canonical_query(query: str) -> str:
    """Each name and value decoded, then encoded the RFC 3986 way, sorted."""
    pairs = []
    for item in query.split("&") if query else ():
        name, _, value = item.partition("=")
        pairs.append((_uri_encode(urllib.parse.unquote(name)), _uri_encode(urllib.parse.unquote(value))))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def canonical_request(
    method: str,
    target: str,
    headers: Mapping[str, str],
    signed_headers: tuple[str, ...],
    payload_hash: str,
) -> str:
    """The canonical request. The path is encoded once more, as sent (so `%3A` becomes `%253A`)."""
    path, _, query = target.partition("?")
    lines = [
        method,
        urllib.parse.quote(path or "/", safe="/~"),
        canonical_query(query),
        *(f"{name}:{' '.join(headers.get(name, '').split())}" for name in signed_headers),
        "",
        ";".join(signed_headers),
        payload_hash,
    ]
    return "\n".join(lines)


def signature(secret: str, credential: Credential, amz_date: str, canonical: str) -> str:
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, credential.scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + secret).encode()
    for part in (credential.date, credential.region, credential.service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def verify(
    *,
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes,
    service: str,
    secret: str | None,
    now: float,
) -> Credential:
    """Check the request's SigV4 `Authorization` header; raise SigV4Error when it fails.

    Without `secret` only the form, the scope's service, the date and the signed headers are
    checked; with it the signature is recomputed and compared. `headers` has lower-case names.
    """
    credential = parse_authorization(headers.get("authorization", ""))
    if credential.service != service:
        raise SigV4Error(
            "InvalidSignatureException", f"Credential should be scoped to correct service: '{service}'."
        )
    if "host" not in credential.signed_headers:
        raise SigV4Error(
            "InvalidSignatureException",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        )
    amz_date = headers.get("x-amz-date", "")
    try:
        when = datetime.datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=datetime.UTC)
    except ValueError:
        raise SigV4Error(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ) from None
    if credential.date != amz_date[:8]:
        raise SigV4Error(
            "InvalidSignatureException",
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{credential.date}' != '{amz_date[:8]}', from '{amz_date}'.",
        )
    if abs(datetime.datetime.fromtimestamp(now, datetime.UTC) - when) > MAX_SKEW:
        raise SigV4Error(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier or later than 15 minutes from the current time.",
        )
    missing = [h for h in credential.signed_headers if h not in headers]
    if missing:
        raise SigV4Error(
            "InvalidSignatureException", f"Signed header(s) not in the request: {', '.join(missing)}."
        )
    body_hash = hashlib.sha256(body).hexdigest()
    payload_hash = headers.get("x-amz-content-sha256", body_hash)
    if payload_hash not in (body_hash, "UNSIGNED-PAYLOAD"):
        raise SigV4Error(
            "InvalidSignatureException",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
    if secret is not None:
        canonical = canonical_request(method, target, headers, credential.signed_headers, payload_hash)
        if not hmac.compare_digest(signature(secret, credential, amz_date, canonical), credential.signature):
            raise SigV4Error(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. Check your "
                "AWS Secret Access Key and signing method. Consult the service documentation for details.",
            )
    return credential
