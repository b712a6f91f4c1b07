"""AWS Signature Version 4 for Bedrock, matching botocore's ``SigV4Auth`` byte for byte.

Sans-IO: the caller passes the request exactly as it will be sent and adds
the returned headers. The time is a parameter so signing is deterministic.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote, unquote, urlsplit

from .aws_credentials import AwsCredentials
from .urls import host_header

__all__ = ["model_path", "sign_request"]

_ALGORITHM = "AWS4-HMAC-SHA256"

# botocore's SIGNED_HEADERS_BLACKLIST (1.44), plus every "proxy-*": hop-by-hop or
# rewritten by proxies/tracing, so signing them would break the signature in transit.
_UNSIGNED_HEADERS = frozenset(
    {
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)
# Headers this module sets; stale copies from a previous attempt are replaced, not signed.
_REPLACED_HEADERS = frozenset({"authorization", "x-amz-date"})


def model_path(model_id: str, action: str) -> str:
    """Build ``/model/{model_id}/{action}`` with the id quoted as the Anthropic SDK does.

    ``:`` stays literal (``…-v1:0``); ``/`` in an ARN becomes ``%2F`` so the id
    stays one path segment. ``action`` is e.g. ``converse`` or ``converse-stream``.
    """
    if model_id in ("", ".", ".."):
        # A dot segment would be normalised away by the HTTP client and the signer.
        raise ValueError(f"invalid Bedrock model id {model_id!r}")
    return f"/model/{quote(model_id, safe=':')}/{action}"


def sign_request(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: AwsCredentials,
    region: str,
    service: str = "bedrock",
    now: datetime,
) -> dict[str, str]:
    """Sign a request with SigV4 and return the headers to add to it.

    Returns ``x-amz-date``, ``x-amz-security-token`` (only with a session
    token) and ``authorization``; set them replacing any existing ones. Every
    header in ``headers`` is signed except hop-by-hop ones (see
    ``_UNSIGNED_HEADERS``), and ``host`` is derived from ``url`` if absent,
    so pass the headers the HTTP client will really send. ``body`` must be
    the exact bytes sent. ``now`` must be timezone-aware.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (a naive datetime would be read as local time)")
    amz_date = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"

    added = {"x-amz-date": amz_date}
    if credentials.session_token is not None:
        added["x-amz-security-token"] = credentials.session_token

    to_sign = _headers_to_sign(headers, added, url)
    signed_names = ";".join(sorted(to_sign))
    parts = urlsplit(url)
    canonical_request = "\n".join(
        [
            method.upper(),
            _canonical_uri(parts.path),
            _canonical_query(parts.query),
            "".join(f"{name}:{to_sign[name]}\n" for name in sorted(to_sign)),
            signed_names,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    string_to_sign = "\n".join(
        [_ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )

    key = f"AWS4{credentials.secret_access_key}".encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()

    added["authorization"] = (
        f"{_ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={signed_names}, Signature={signature}"
    )
    return added


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _headers_to_sign(headers: Mapping[str, str], added: Mapping[str, str], url: str) -> dict[str, str]:
    """Lower-cased name → canonical value; repeated names joined with ``,`` as botocore does."""
    values: dict[str, list[str]] = {}
    for name, value in headers.items():
        lname = name.strip().lower()
        if lname in _UNSIGNED_HEADERS or lname.startswith("proxy-") or lname in _REPLACED_HEADERS:
            continue
        if lname in added:
            continue
        values.setdefault(lname, []).append(" ".join(value.split()))
    for name, value in added.items():
        values[name] = [value]
    if "host" not in values:
        values["host"] = [_host_from_url(url)]
    return {name: ",".join(vs) for name, vs in values.items()}


def _host_from_url(url: str) -> str:
    parts = urlsplit(url)
    return host_header(parts.scheme, parts.hostname or "", parts.port)


def _canonical_uri(path: str) -> str:
    # AWS wants the path as sent, dot segments and empty segments removed, then
    # percent-encoded a second time: "v1:0" → "v1%3A0", "%3A" → "%253A".
    return quote(_remove_dot_segments(path), safe="/~")


def _remove_dot_segments(path: str) -> str:
    # botocore's normalize_url_path: RFC 3986 dot removal plus collapsing "//".
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    trailing = "/" if path.endswith("/") and segments else ""
    return "/" + "/".join(segments) + trailing


def _canonical_query(query: str) -> str:
    # Decode then re-encode each key and value with only unreserved characters
    # left bare, and sort by the encoded pair. For a query already encoded that
    # way (what httpx sends for ordinary values) this equals botocore's raw sort.
    pairs = []
    for item in query.split("&") if query else ():
        key, _, value = item.partition("=")
        pairs.append((quote(unquote(key), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{key}={value}" for key, value in sorted(pairs))
