"""Static AWS credentials and region, resolved the way botocore does for the common cases.

Pure functions over an environment mapping and a home directory, so tests and
the daemon can pass their own. Only static keys are supported (environment,
``~/.aws/credentials``, ``~/.aws/config``); SSO, ``credential_process``,
assume-role and instance metadata are not.
"""

from __future__ import annotations

import configparser
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AwsCredentials",
    "AwsCredentialsError",
    "bedrock_bearer_token",
    "resolve_aws_credentials",
    "resolve_region",
]

# Profile keys that mean "credentials come from somewhere we don't implement".
_UNSUPPORTED_SOURCES = (
    "credential_process",
    "role_arn",
    "sso_session",
    "sso_start_url",
    "web_identity_token_file",
)


class AwsCredentialsError(ValueError):
    """AWS configuration is present but unusable (partial keys, unknown profile, bad file)."""


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    """An access key pair, plus a session token for temporary credentials."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        # The key id is not secret (it shows up in every Authorization header); the rest is.
        token = "None" if self.session_token is None else "'***'"
        return (
            f"AwsCredentials(access_key_id={self.access_key_id!r}, "
            f"secret_access_key='***', session_token={token})"
        )


def bedrock_bearer_token(env: Mapping[str, str]) -> str | None:
    """The Bedrock API key from ``AWS_BEARER_TOKEN_BEDROCK``, if set and non-empty."""
    return env.get("AWS_BEARER_TOKEN_BEDROCK", "").strip() or None


def resolve_aws_credentials(
    env: Mapping[str, str], home: Path, profile: str | None = None
) -> AwsCredentials | None:
    """Find static AWS credentials, or ``None`` if there are none.

    Order: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``;
    then the profile's section in the shared credentials file
    (``AWS_SHARED_CREDENTIALS_FILE`` or ``~/.aws/credentials``); then its
    ``[profile name]`` section in the config file (``AWS_CONFIG_FILE`` or
    ``~/.aws/config``). The profile is ``profile``, else ``AWS_PROFILE``, else
    ``default``. As in botocore, an explicit ``profile`` argument skips the
    environment keys (``AWS_PROFILE`` does not), so asking for a profile never
    silently yields some other account's keys.

    Raises ``AwsCredentialsError`` for a key id without a secret, a named
    profile that doesn't exist, a profile that only uses an unsupported
    source (SSO, ``credential_process``, ``role_arn``…), or an unparsable file.
    """
    if profile is None:
        creds = _credentials_from(
            env,
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"),
            source="the environment",
        )
        if creds is not None:
            return creds

    name = _profile_name(env, profile)
    sections = [
        (path, section)
        for path, section in (
            _credentials_file_section(env, home, name),
            _config_file_section(env, home, name),
        )
        if section is not None
    ]
    for path, section in sections:
        creds = _credentials_from(
            section,
            "aws_access_key_id",
            "aws_secret_access_key",
            ("aws_session_token", "aws_security_token"),
            source=f"profile {name!r} in {path}",
        )
        if creds is not None:
            return creds

    explicit = profile is not None or bool(env.get("AWS_PROFILE"))
    if explicit and not sections:
        raise AwsCredentialsError(f"AWS profile {name!r} not found in the credentials or config file")
    for path, section in sections:
        unsupported = [key for key in _UNSUPPORTED_SOURCES if key in section]
        if unsupported:
            raise AwsCredentialsError(
                f"AWS profile {name!r} in {path} uses {', '.join(unsupported)}; "
                "only static access keys are supported"
            )
    return None


def resolve_region(env: Mapping[str, str], home: Path, profile: str | None = None) -> str | None:
    """The region from ``AWS_REGION``, ``AWS_DEFAULT_REGION``, then the profile's ``region`` in the config file."""
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if region := env.get(var, "").strip():
            return region
    _, section = _config_file_section(env, home, _profile_name(env, profile))
    if section is None:
        return None
    return section.get("region", "").strip() or None


def _profile_name(env: Mapping[str, str], profile: str | None) -> str:
    return profile or env.get("AWS_PROFILE", "").strip() or "default"


def _credentials_from(
    values: Mapping[str, str], key_name: str, secret_name: str, token_names: tuple[str, ...], *, source: str
) -> AwsCredentials | None:
    key = values.get(key_name, "").strip()
    if not key:
        return None  # like botocore: a lone secret without a key id is ignored
    secret = values.get(secret_name, "").strip()
    if not secret:
        raise AwsCredentialsError(f"{key_name} is set in {source} but {secret_name} is missing")
    token = next((t for name in token_names if (t := values.get(name, "").strip())), None)
    return AwsCredentials(key, secret, token)


def _credentials_file_section(
    env: Mapping[str, str], home: Path, name: str
) -> tuple[Path, Mapping[str, str] | None]:
    path = _file_path(env.get("AWS_SHARED_CREDENTIALS_FILE"), home, "credentials")
    parser = _read_ini(path)
    # The credentials file names sections by bare profile name, with no "profile " prefix.
    return path, parser[name] if parser.has_section(name) else None


def _config_file_section(
    env: Mapping[str, str], home: Path, name: str
) -> tuple[Path, Mapping[str, str] | None]:
    path = _file_path(env.get("AWS_CONFIG_FILE"), home, "config")
    parser = _read_ini(path)
    for section in parser.sections():
        if section.split() == ["profile", name]:
            return path, parser[section]
    # Only the default profile may omit the "profile " prefix in the config file.
    if name == "default" and parser.has_section("default"):
        return path, parser["default"]
    return path, None


def _file_path(override: str | None, home: Path, default_name: str) -> Path:
    if not override:
        return home / ".aws" / default_name
    # Expand "~" against the given home rather than the process's, to stay a pure function.
    if override == "~" or override.startswith("~/"):
        return home / override[2:]
    return Path(override)


def _read_ini(path: Path) -> configparser.RawConfigParser:
    # RawConfigParser, as botocore uses: no "%" interpolation, which would break secrets containing "%".
    parser = configparser.RawConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise AwsCredentialsError(f"cannot parse AWS file {path}: {exc}") from exc
    return parser
