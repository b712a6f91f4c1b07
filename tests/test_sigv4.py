"""SigV4 signing and AWS credential resolution, with botocore as the reference."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.session import Session

from combined_models.daemon.dialects.aws_credentials import (
    AwsCredentials,
    AwsCredentialsError,
    bedrock_bearer_token,
    resolve_aws_credentials,
    resolve_region,
)
from combined_models.daemon.dialects.sigv4 import model_path, sign_request

NOW = datetime(2025, 5, 14, 9, 30, 5, tzinfo=UTC)
RUNTIME = "https://bedrock-runtime.us-east-1.amazonaws.com"
CONTROL = "https://bedrock.us-west-2.amazonaws.com"
CREDS = AwsCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
TEMP_CREDS = AwsCredentials("ASIAEXAMPLE", "secret/with+chars", "FwoGZXIvYXdzEJr//////////token==")
BODY = b'{"messages":[{"role":"user","content":[{"text":"Hi"}]}]}'
JSON = {"Content-Type": "application/json"}


@pytest.fixture(autouse=True)
def _frozen_botocore_clock() -> Iterator[None]:
    # botocore 1.44's SigV4Auth.add_auth reads the time through
    # botocore.auth.get_current_datetime() (naive UTC), not datetime.utcnow().
    naive_utc = NOW.replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=naive_utc):
        yield


def botocore_sign(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    creds: AwsCredentials,
    region: str,
    params: dict[str, str] | None = None,
) -> AWSRequest:
    request = AWSRequest(method=method, url=url, headers=headers, data=body, params=params)
    boto_creds = Credentials(creds.access_key_id, creds.secret_access_key, creds.session_token)
    SigV4Auth(boto_creds, "bedrock", region).add_auth(request)
    return request


def ours(
    method: str, url: str, headers: dict[str, str], body: bytes, creds: AwsCredentials, region: str
) -> dict[str, str]:
    return sign_request(
        method=method, url=url, headers=headers, body=body, credentials=creds, region=region, now=NOW
    )


CASES = {
    "converse-stream, ':' in model id": (
        "POST",
        RUNTIME + model_path("us.anthropic.claude-sonnet-4-20250514-v1:0", "converse-stream"),
        JSON,
        BODY,
        CREDS,
        "us-east-1",
    ),
    "converse, ARN model id, session token": (
        "POST",
        RUNTIME
        + model_path(
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3", "converse"
        ),
        JSON,
        BODY,
        TEMP_CREDS,
        "us-east-1",
    ),
    "already percent-encoded ':' (double encoding)": (
        "POST",
        RUNTIME + "/model/us.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse",
        JSON,
        BODY,
        TEMP_CREDS,
        "us-east-1",
    ),
    "control plane GET with query": (
        "GET",
        CONTROL + "/foundation-models?byOutputModality=TEXT&byProvider=anthropic",
        {},
        b"",
        CREDS,
        "us-west-2",
    ),
    "query out of order, encoded value": (
        "GET",
        CONTROL + "/inference-profiles?type=SYSTEM_DEFINED&nextToken=abc%2Fdef%3D%3D&maxResults=10",
        {},
        b"",
        TEMP_CREDS,
        "us-west-2",
    ),
    "extra, blacklisted and messy headers": (
        "POST",
        RUNTIME + model_path("anthropic.claude-3-5-sonnet-20240620-v1:0", "converse-stream"),
        {
            "Content-Type": "application/json",
            "Accept": "application/vnd.amazon.eventstream",
            "X-Custom": "  a   b\tc  ",
            "Content-Length": str(len(BODY)),
            "User-Agent": "combined-models/0.1",
            "Connection": "keep-alive",
            "X-Amzn-Trace-Id": "Root=1-abc",
            "Expect": "100-continue",
            "Proxy-Authorization": "Basic xyz",
            "traceparent": "00-abc-def-01",
        },
        BODY,
        TEMP_CREDS,
        "eu-central-1",
    ),
    "explicit host header with a port": (
        "POST",
        "http://localhost:8123/model/m:1/converse",
        {"Host": "localhost:8123", "Content-Type": "application/json"},
        BODY,
        CREDS,
        "us-east-1",
    ),
    "host derived from url with non-default port": (
        "POST",
        "https://LocalHost:8443/model/m:1/converse",
        JSON,
        BODY,
        CREDS,
        "us-east-1",
    ),
    "dot segments and double slashes normalised": (
        "GET",
        CONTROL + "//a/./b/../foundation-models/",
        {},
        b"",
        CREDS,
        "us-west-2",
    ),
    "empty path": ("GET", "https://bedrock.us-west-2.amazonaws.com", {}, b"", CREDS, "us-west-2"),
    "stale auth headers from a previous attempt are replaced": (
        "POST",
        RUNTIME + "/model/m/converse",
        {"Authorization": "old", "X-Amz-Date": "20000101T000000Z", "X-Amz-Security-Token": "old"},
        BODY,
        TEMP_CREDS,
        "us-east-1",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_signature_matches_botocore(
    case: tuple[str, str, dict[str, str], bytes, AwsCredentials, str],
) -> None:
    method, url, headers, body, creds, region = case
    added = ours(*case)
    expected = botocore_sign(method, url, headers, body, creds, region).headers
    assert added["authorization"] == expected["Authorization"]
    assert added["x-amz-date"] == expected["X-Amz-Date"] == "20250514T093005Z"
    assert added.get("x-amz-security-token") == expected.get("X-Amz-Security-Token") == creds.session_token
    assert set(added) == {"authorization", "x-amz-date"} | (
        {"x-amz-security-token"} if creds.session_token else set()
    )
    assert "x-amz-content-sha256" not in {k.lower() for k in expected}


def test_query_from_params_matches_botocore() -> None:
    # botocore's other path: query given as params, encoded and sorted by the signer.
    params = {"byProvider": "anthropic", "byOutputModality": "TEXT", "nextToken": "a/b=c d"}
    expected = botocore_sign("GET", CONTROL + "/foundation-models", {}, b"", CREDS, "us-west-2", params)
    url = str(
        httpx.URL(
            CONTROL + "/foundation-models?byProvider=anthropic&byOutputModality=TEXT&nextToken=a%2Fb%3Dc%20d"
        )
    )
    assert ours("GET", url, {}, b"", CREDS, "us-west-2")["authorization"] == expected.headers["Authorization"]


def test_signs_what_httpx_sends() -> None:
    request = httpx.Request(
        "POST",
        RUNTIME
        + model_path("arn:aws:bedrock:us-east-1:1:application-inference-profile/x", "converse-stream"),
        headers=JSON,
        content=BODY,
    )
    added = ours(
        request.method, str(request.url), dict(request.headers), request.content, TEMP_CREDS, "us-east-1"
    )
    assert (
        request.url.raw_path
        == b"/model/arn:aws:bedrock:us-east-1:1:application-inference-profile%2Fx/converse-stream"
    )
    expected = botocore_sign(
        request.method, str(request.url), dict(request.headers), BODY, TEMP_CREDS, "us-east-1"
    )
    assert added["authorization"] == expected.headers["Authorization"]
    assert (
        "SignedHeaders=content-length;content-type;host;x-amz-date;x-amz-security-token,"
        in added["authorization"]
    )


def test_canonical_uri_is_double_encoded_in_botocore_too() -> None:
    signer = SigV4Auth(Credentials("a", "b"), "bedrock", "us-east-1")
    for path, canonical in [
        (
            "/model/us.anthropic.claude-sonnet-4-20250514-v1:0/converse-stream",
            "/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/converse-stream",
        ),
        ("/model/x-v1%3A0/converse", "/model/x-v1%253A0/converse"),
        (
            "/model/arn:aws:bedrock:r:1:application-inference-profile%2Fp/converse",
            "/model/arn%3Aaws%3Abedrock%3Ar%3A1%3Aapplication-inference-profile%252Fp/converse",
        ),
    ]:
        request = AWSRequest(method="POST", url=RUNTIME + path, data=b"")
        request.context["timestamp"] = "20250514T093005Z"
        assert signer.canonical_request(request).split("\n")[1] == canonical


def test_aws_test_suite_get_vanilla() -> None:
    # From the AWS SigV4 test suite ("get-vanilla"), independent of botocore.
    added = sign_request(
        method="GET",
        url="https://example.amazonaws.com/",
        headers={},
        body=b"",
        credentials=CREDS,
        region="us-east-1",
        service="service",
        now=datetime(2015, 8, 30, 12, 36, tzinfo=UTC),
    )
    assert added["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )


def test_now_in_another_timezone_is_converted_and_naive_is_rejected() -> None:
    url = RUNTIME + "/model/m/converse"
    paris = NOW.astimezone(timezone(timedelta(hours=2)))
    a = sign_request(
        method="POST", url=url, headers={}, body=b"", credentials=CREDS, region="us-east-1", now=paris
    )
    assert a == ours("POST", url, {}, b"", CREDS, "us-east-1")
    with pytest.raises(ValueError, match="timezone-aware"):
        sign_request(
            method="POST",
            url=url,
            headers={},
            body=b"",
            credentials=CREDS,
            region="us-east-1",
            now=datetime(2025, 1, 1),
        )


def test_model_path() -> None:
    assert model_path("us.anthropic.claude-sonnet-4-20250514-v1:0", "converse-stream") == (
        "/model/us.anthropic.claude-sonnet-4-20250514-v1:0/converse-stream"
    )
    assert model_path("arn:aws:bedrock:us-east-1:123:application-inference-profile/abc", "converse") == (
        "/model/arn:aws:bedrock:us-east-1:123:application-inference-profile%2Fabc/converse"
    )
    assert model_path("a b?#%", "converse") == "/model/a%20b%3F%23%25/converse"
    for bad in ("", ".", ".."):
        with pytest.raises(ValueError, match="invalid Bedrock model id"):
            model_path(bad, "converse")


# --------------------------------------------------------------------------- credentials


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    write(
        tmp_path / ".aws" / "credentials",
        "[default]\naws_access_key_id = FILE_DEFAULT\naws_secret_access_key = s1\n\n"
        "[work]\naws_access_key_id = FILE_WORK\naws_secret_access_key = s2\naws_session_token = t2\n",
    )
    write(
        tmp_path / ".aws" / "config",
        "[default]\nregion = eu-west-1\n\n"
        "[profile work]\nregion = us-east-2\naws_access_key_id = CONFIG_WORK\naws_secret_access_key = x\n\n"
        "[profile cfgonly]\naws_access_key_id = CONFIG_ONLY\naws_secret_access_key = s3%x\n\n"
        "[profile sso]\nsso_session = corp\nregion = ap-south-1\n\n"
        "[sso-session corp]\nsso_start_url = https://x\n",
    )
    return tmp_path


ENV_KEYS = {"AWS_ACCESS_KEY_ID": "ENV", "AWS_SECRET_ACCESS_KEY": "envsecret"}


def key_id(env: dict[str, str], home: Path, profile: str | None = None) -> str | None:
    creds = resolve_aws_credentials(env, home, profile)
    return None if creds is None else creds.access_key_id


def test_env_credentials_win(home: Path) -> None:
    creds = resolve_aws_credentials({**ENV_KEYS, "AWS_SESSION_TOKEN": "tok"}, home)
    assert creds == AwsCredentials("ENV", "envsecret", "tok")
    assert key_id({**ENV_KEYS, "AWS_PROFILE": "work"}, home) == "ENV"  # AWS_PROFILE doesn't override env keys


def test_explicit_profile_skips_env_like_botocore(home: Path) -> None:
    assert resolve_aws_credentials(ENV_KEYS, home, "work") == AwsCredentials("FILE_WORK", "s2", "t2")


def test_file_profiles(home: Path) -> None:
    assert key_id({}, home) == "FILE_DEFAULT"
    assert key_id({"AWS_PROFILE": "work"}, home) == "FILE_WORK"  # credentials file beats config file
    assert resolve_aws_credentials({}, home, "cfgonly") == AwsCredentials(
        "CONFIG_ONLY", "s3%x"
    )  # no interpolation


def test_file_locations_from_env(home: Path, tmp_path: Path) -> None:
    creds = write(
        tmp_path / "elsewhere" / "creds", "[default]\naws_access_key_id = MOVED\naws_secret_access_key = s\n"
    )
    assert key_id({"AWS_SHARED_CREDENTIALS_FILE": str(creds)}, home) == "MOVED"
    assert (
        key_id({"AWS_SHARED_CREDENTIALS_FILE": "~/elsewhere/creds"}, home) == "MOVED"
    )  # "~" is the given home
    config = write(tmp_path / "cfg", "[profile p]\naws_access_key_id = CFG\naws_secret_access_key = s\n")
    assert key_id({"AWS_CONFIG_FILE": str(config)}, home, "p") == "CFG"


def test_nothing_configured(tmp_path: Path) -> None:
    assert resolve_aws_credentials({}, tmp_path) is None
    assert resolve_region({}, tmp_path) is None
    # A lone secret is ignored, as botocore does.
    assert resolve_aws_credentials({"AWS_SECRET_ACCESS_KEY": "s", "AWS_ACCESS_KEY_ID": ""}, tmp_path) is None


def test_unusable_configuration_is_reported(home: Path) -> None:
    with pytest.raises(AwsCredentialsError, match="AWS_SECRET_ACCESS_KEY is missing"):
        resolve_aws_credentials({"AWS_ACCESS_KEY_ID": "K"}, home)
    with pytest.raises(AwsCredentialsError, match="profile 'nope' not found"):
        resolve_aws_credentials({}, home, "nope")
    with pytest.raises(AwsCredentialsError, match="profile 'nope' not found"):
        resolve_aws_credentials({"AWS_PROFILE": "nope"}, home)
    with pytest.raises(AwsCredentialsError, match="uses sso_session; only static access keys"):
        resolve_aws_credentials({}, home, "sso")
    write(
        home / ".aws" / "credentials",
        "[default]\naws_secret_access_key = only-secret\n[half]\naws_access_key_id = K\n",
    )
    with pytest.raises(
        AwsCredentialsError, match=r"aws_access_key_id is set in profile 'half' in .*credentials"
    ):
        resolve_aws_credentials({}, home, "half")
    write(home / ".aws" / "credentials", "not an ini file\n")
    with pytest.raises(AwsCredentialsError, match="cannot parse AWS file"):
        resolve_aws_credentials({}, home)


def test_region(home: Path) -> None:
    assert resolve_region({}, home) == "eu-west-1"
    assert resolve_region({"AWS_PROFILE": "work"}, home) == "us-east-2"
    assert resolve_region({}, home, "sso") == "ap-south-1"
    assert resolve_region({"AWS_DEFAULT_REGION": "us-west-1"}, home, "work") == "us-west-1"
    assert (
        resolve_region({"AWS_REGION": "ca-central-1", "AWS_DEFAULT_REGION": "us-west-1"}, home)
        == "ca-central-1"
    )
    assert resolve_region({}, home, "missing") is None


def test_bearer_token() -> None:
    assert bedrock_bearer_token({"AWS_BEARER_TOKEN_BEDROCK": "ABSK123"}) == "ABSK123"
    assert bedrock_bearer_token({"AWS_BEARER_TOKEN_BEDROCK": ""}) is None
    assert bedrock_bearer_token({}) is None


def test_repr_hides_secrets() -> None:
    text = repr(TEMP_CREDS)
    assert "ASIAEXAMPLE" in text
    assert TEMP_CREDS.secret_access_key not in text
    assert TEMP_CREDS.session_token is not None and TEMP_CREDS.session_token not in text
    assert str(TEMP_CREDS) == text
    assert "session_token=None" in repr(CREDS)


@pytest.mark.parametrize(
    ("env", "profile"),
    [
        ({"AWS_ACCESS_KEY_ID": "ENV", "AWS_SECRET_ACCESS_KEY": "e", "AWS_SESSION_TOKEN": "t"}, None),
        ({"AWS_ACCESS_KEY_ID": "ENV", "AWS_SECRET_ACCESS_KEY": "e"}, "work"),
        ({"AWS_PROFILE": "work"}, None),
        ({}, None),
        ({}, "cfgonly"),
    ],
)
def test_credentials_agree_with_botocore_session(
    home: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], profile: str | None
) -> None:
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    full_env = {
        **env,
        "AWS_SHARED_CREDENTIALS_FILE": str(home / ".aws" / "credentials"),
        "AWS_CONFIG_FILE": str(home / ".aws" / "config"),
        "AWS_EC2_METADATA_DISABLED": "true",  # never reach for the network
    }
    for name, value in full_env.items():
        monkeypatch.setenv(name, value)
    expected = Session(profile=profile).get_credentials().get_frozen_credentials()
    assert resolve_aws_credentials(full_env, home, profile) == AwsCredentials(
        expected.access_key, expected.secret_key, expected.token
    )
