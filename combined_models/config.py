"""The TOML config of the design, decoded into msgspec Structs, with presets for known providers.

A bad file raises `ConfigError` naming the file, the key and what was expected;
`cmctl` prints it and exits 2, never with a traceback.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from .metadata import MODELS_DEV_URL

APIS = ("openai", "openai-responses", "anthropic", "bedrock", "gemini", "copilot")
MIN_DISCOVERY_INTERVAL = 60.0
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class ConfigError(Exception):
    pass


class FailoverConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    max_attempts: int = 3  # attempts on one provider for transient errors
    first_token_timeout: float = 10.0  # seconds from sending to the first content event
    idle_timeout: float = 20.0  # seconds of silence mid-stream
    connect_timeout: float = 5.0
    retry_wait_max: float = 0.0  # wait out a rate limit this short instead of failing over
    all_cooling_wait: float = 3.0  # when every member cools: wait this long at most for the earliest
    long_prompt_chars: int = 200_000  # first-token timeout grows by its own length per this many prompt chars
    retry_backoff: float = 0.25  # first backoff between transient retries (jittered, doubling)
    # Seconds a request waits for one of a provider's `max_concurrency` slots; then it fails over.
    slot_wait: float = 3.0
    # Seconds since a conversation's last turn during which its next turn goes back to the member
    # that served it (where its prompt cache is warm), while that member is healthy; 0: off.
    affinity_ttl: float = 300.0


class ProviderConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    api: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    api_key_env: str | None = None
    models: list[str] | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    enabled: bool = True
    max_concurrency: int = 32
    first_token_timeout: float | None = None
    idle_timeout: float | None = None
    connect_timeout: float | None = None
    # Capabilities (default: what the vendor documents for the api and model id; see capabilities.py)
    prefill: bool | None = None  # a final assistant message is continued, not answered anew
    tools: bool | None = None
    images: bool | None = None
    thinking: bool | None = None
    context_window: int | None = None
    region: str | None = None  # Bedrock: the AWS region (else AWS_REGION or the profile's)
    profile: str | None = None  # Bedrock: the AWS profile in ~/.aws
    auth_url: str | None = None  # Copilot: the GitHub API that exchanges tokens (GitHub Enterprise, tests)
    control_url: str | None = None  # Bedrock: the control plane that lists models (default: from the region,
    #                                 or `base_url` when that is set, as for a local endpoint)


def _hide_key(self: ProviderConfig) -> str:
    shown = ", ".join(
        f"{f}={getattr(self, f)!r}" for f in self.__struct_fields__ if f not in ("api_key", "headers")
    )
    headers = {name: "[redacted]" for name in self.headers}  # they may carry keys too
    return f"ProviderConfig({shown}, api_key={'[redacted]' if self.api_key else None}, headers={headers!r})"


ProviderConfig.__repr__ = _hide_key  # type: ignore[method-assign,assignment]  # keys never reach a log line


class CombinedConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    members: list[str]


class HttpConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The OpenAI/Anthropic-compatible HTTP front door (port 0: any free port)."""

    enabled: bool = True
    listen: str = "127.0.0.1:4141"
    token: str | None = None  # None: generated once and kept 0600 in the state dir
    allow_remote: bool = False  # the explicit opt-in to listen on a non-loopback address
    # Web pages a browser may call the front door from (`Origin` values, e.g. "http://localhost:3000").
    # A request with any other `Origin` is refused: a page must not spend the user's providers.
    allowed_origins: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        # msgspec turns a ValueError here into a ValidationError at `http`, which names the file.
        import ipaddress

        if self.token is not None and not self.token.strip():
            raise ValueError("`token` may not be empty (leave it out to have one generated)")
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not host:
            return  # a malformed address is reported by the config check, by key
        host = host.strip("[]")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback and not self.allow_remote:
            raise ValueError(
                f"`listen = {self.listen!r}` is not a loopback address; set `allow_remote = true` "
                "to accept connections from other machines (they still need the token)"
            )


class LimitsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Bounds that keep one client from taking the daemon (or other clients) down with it."""

    max_connections: int = 256  # per door (socket, HTTP); more are refused with an error
    # A client that stops reading its answer holds a provider slot for at most this many seconds.
    client_stall_timeout: float = 30.0
    # Seconds a frame or HTTP request may stay incomplete once its first byte arrived.
    partial_frame_timeout: float = 30.0


class LoggingConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The daemon's log: one line per request, failover and health change."""

    format: Literal["text", "json"] = "text"  # "json": one JSON object per line
    file: bool = True  # write `daemon.log` in the log dir, rotated by size; false: stderr only
    max_bytes: int = 10 * 1024 * 1024  # rotate once the file would grow past this
    backup_count: int = 5  # rotated files kept beside `daemon.log`


class SharedConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The optional shared health backend: Valkey or Redis, shared by a team's daemons (README: Teams)."""

    url: str | None = None  # redis://host:port[/db] or rediss://… (TLS); None: nothing is shared
    username: str | None = None  # an ACL user (default: the server's default user)
    password: str | None = None
    password_env: str | None = None  # the environment variable holding the password
    # The team's secret: the HMAC key of the account hash (the same on every daemon that shares).
    secret: str | None = None
    secret_env: str | None = None
    prefix: str = "cm"  # of every key and of the channel
    connect_timeout: float = 2.0  # seconds to connect and say hello
    command_timeout: float = 2.0  # seconds for one command's answer
    max_backoff: float = 2.0  # the longest wait between two reconnection attempts


def _hide_shared(self: SharedConfig) -> str:
    shown = ", ".join(
        f"{f}={getattr(self, f)!r}" for f in self.__struct_fields__ if f not in ("password", "secret")
    )
    hidden = ", ".join(f"{f}={'[redacted]' if getattr(self, f) else None}" for f in ("password", "secret"))
    return f"SharedConfig({shown}, {hidden})"


SharedConfig.__repr__ = _hide_shared  # type: ignore[method-assign,assignment]  # secrets never reach a log line


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    provider_priority: list[str] = msgspec.field(default_factory=list)
    min_providers: int = 2
    failover: FailoverConfig = msgspec.field(default_factory=FailoverConfig)
    providers: dict[str, ProviderConfig] = msgspec.field(default_factory=dict)
    combined: dict[str, CombinedConfig] = msgspec.field(default_factory=dict)
    exclude: list[str] = msgspec.field(default_factory=list)
    discovery_interval: float = 3600.0  # seconds between model listings (providers without `models`)
    # "models.dev": fetch the public models.dev catalog (daily, cached) for context windows, prices and
    # capabilities of members; "off" (the default): nothing is fetched.
    metadata: Literal["off", "models.dev"] = "off"
    metadata_url: str = MODELS_DEV_URL
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    # How clients reach the daemon: "unix" (a Unix socket) or "tcp" (loopback, token handshake; what
    # Windows uses). Unset: unix where the OS has Unix sockets. $COMBINED_MODELS_TRANSPORT overrides it.
    transport: Literal["unix", "tcp"] | None = None
    shared: SharedConfig = msgspec.field(default_factory=SharedConfig)


@dataclass(frozen=True)
class Preset:
    api: str
    base_url: str | None
    key_envs: tuple[str, ...]
    headers: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "anthropic": Preset("anthropic", "https://api.anthropic.com", ("ANTHROPIC_API_KEY",)),
    "openai": Preset(
        "openai",
        "https://api.openai.com/v1",
        ("OPENAI_API_KEY",),
        options={"max_tokens_field": "max_completion_tokens"},
    ),
    # OpenAI's own endpoint through the Responses API, for the models it serves only that way.
    "openai-responses": Preset("openai-responses", "https://api.openai.com/v1", ("OPENAI_API_KEY",)),
    "openrouter": Preset(
        "openai",
        "https://openrouter.ai/api/v1",
        ("OPENROUTER_API_KEY",),
        headers={"x-openrouter-title": "combined-models"},
        options={"flavour": "openrouter"},
    ),
    "amazon-bedrock": Preset("bedrock", None, ("AWS_BEARER_TOKEN_BEDROCK",)),
    "github-copilot": Preset("copilot", "https://api.githubcopilot.com", ()),
    "google": Preset(
        "gemini", "https://generativelanguage.googleapis.com/v1beta", ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    ),
}


@dataclass(frozen=True)
class ResolvedProvider:
    """A provider as the daemon uses it: preset and file merged, credential found (or not)."""

    id: str
    api: str
    base_url: str
    api_key: str | None
    key_source: str  # "config file", "env OPENAI_API_KEY", "none": where the key came from, never the key
    models: tuple[str, ...] | None
    headers: Mapping[str, str]
    options: Mapping[str, Any]
    config: ProviderConfig
    disabled_reason: str = ""

    def __repr__(self) -> str:  # keys never reach a log line
        return f"ResolvedProvider(id={self.id!r}, api={self.api!r}, base_url={self.base_url!r})"


def _loc(err: msgspec.ValidationError, prefix: str = "") -> str:
    text = str(err)
    msg, sep, where = text.rpartition(" - at `")
    if not sep:  # an error at the top level carries no path
        msg, where = text, "$`"
    key = (prefix + where.rstrip("`").removeprefix("$")).lstrip(".")
    return f"`{key}`: {msg}" if key else msg


def _where(raw: dict[str, Any], err: msgspec.ValidationError) -> str:
    """msgspec spells a table key as `[...]`: find the entry that failed, so the message names it."""
    if "[...]" in str(err):
        for section, typ in (("providers", ProviderConfig), ("combined", CombinedConfig)):
            entries = raw.get(section)
            for key, value in entries.items() if isinstance(entries, dict) else ():
                try:
                    msgspec.convert(value, typ)
                except msgspec.ValidationError as e:
                    return _loc(e, f"{section}.{key}")
    return _loc(err)


def parse_config(text: str, source: str = "config.toml") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {_where(raw, e)}") from None
    _check(cfg, source)
    return cfg


def load_config(path: Path) -> Config:
    """The config at `path`; an absent file is the empty default (no providers)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    return parse_config(text, str(path))


def _check(cfg: Config, source: str) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: `{key}`: {why}")

    if not cfg.discovery_interval >= MIN_DISCOVERY_INTERVAL:
        raise bad(
            "discovery_interval",
            f"expected seconds >= {MIN_DISCOVERY_INTERVAL:g} (listing models more often only spends "
            f"requests), got {cfg.discovery_interval}",
        )
    if cfg.min_providers < 1:
        raise bad("min_providers", f"expected an integer >= 1, got {cfg.min_providers}")
    f = cfg.failover
    if f.max_attempts < 1:
        raise bad("failover.max_attempts", f"expected an integer >= 1, got {f.max_attempts}")
    # `not x > 0` rather than `x <= 0`: TOML has nan, and nan compares false.
    for name in ("first_token_timeout", "idle_timeout", "connect_timeout"):
        if not getattr(f, name) > 0:
            raise bad(f"failover.{name}", f"expected seconds > 0, got {getattr(f, name)}")
    for name in ("retry_wait_max", "all_cooling_wait", "retry_backoff", "slot_wait"):
        if not getattr(f, name) >= 0:
            raise bad(f"failover.{name}", f"expected seconds >= 0, got {getattr(f, name)}")
    for pid, p in cfg.providers.items():
        if "/" in pid or not pid:
            raise bad(f"providers.{pid}", "a provider id may not be empty or contain '/'")
        api = p.api or (PRESETS[pid].api if pid in PRESETS else None)
        if api is None:
            raise bad(
                f"providers.{pid}.api",
                f"expected one of {', '.join(APIS)} (required for a provider without a preset)",
            )
        if api not in APIS:
            raise bad(f"providers.{pid}.api", f"expected one of {', '.join(APIS)}, got {api!r}")
        preset = PRESETS.get(pid)
        preset_url = preset is not None and preset.api == api and preset.base_url is not None
        if p.base_url is None and not preset_url and api != "bedrock":
            raise bad(f"providers.{pid}.base_url", "required for a provider without a preset")
        if p.base_url is not None and (why := _bad_base_url(p.base_url)):
            raise bad(f"providers.{pid}.base_url", f"{why}, got {p.base_url!r}")
        if p.max_concurrency < 1:
            raise bad(f"providers.{pid}.max_concurrency", "expected an integer >= 1")
        for name in ("first_token_timeout", "idle_timeout", "connect_timeout"):
            value = getattr(p, name)
            if value is not None and not value > 0:
                raise bad(f"providers.{pid}.{name}", f"expected seconds > 0, got {value}")
        for name, value in p.headers.items():
            if not _HEADER_NAME.fullmatch(name) or any(c in value for c in "\r\n\0"):
                raise bad(
                    f"providers.{pid}.headers.{name}", "expected an HTTP header name and a one-line value"
                )
    known = set(cfg.providers) | set(PRESETS)
    for i, pid in enumerate(cfg.provider_priority):
        if pid in cfg.provider_priority[:i]:
            raise bad(f"provider_priority[{i}]", f"{pid!r} is listed twice")
        if pid not in known:
            raise bad(f"provider_priority[{i}]", f"unknown provider {pid!r}: add a [providers.{pid}] section")
    for cid, c in cfg.combined.items():
        if "/" in cid or not cid:
            raise bad(f"combined.{cid}", "a combined model id may not be empty or contain '/'")
        if not c.members:
            raise bad(f"combined.{cid}.members", "expected at least one 'provider/model'")
        for i, m in enumerate(c.members):
            pid, sep, model = m.partition("/")
            if not sep or not model:
                raise bad(f"combined.{cid}.members[{i}]", f"expected 'provider/model', got {m!r}")
            if pid not in cfg.providers and pid not in cfg.provider_priority:
                raise bad(f"combined.{cid}.members[{i}]", f"unknown provider {pid!r}")
    for i, origin in enumerate(cfg.http.allowed_origins):
        if not origin.startswith(("http://", "https://")) or urlsplit(origin).path not in ("", "/"):
            raise bad(
                f"http.allowed_origins[{i}]",
                f"expected an origin such as 'http://localhost:3000', got {origin!r}",
            )
    lim = cfg.limits
    if lim.max_connections < 1:
        raise bad("limits.max_connections", f"expected an integer >= 1, got {lim.max_connections}")
    for name in ("client_stall_timeout", "partial_frame_timeout"):
        if not getattr(lim, name) > 0:
            raise bad(f"limits.{name}", f"expected seconds > 0, got {getattr(lim, name)}")
    if cfg.logging.max_bytes < 1024:
        raise bad("logging.max_bytes", f"expected an integer >= 1024, got {cfg.logging.max_bytes}")
    if cfg.logging.backup_count < 1:
        raise bad("logging.backup_count", f"expected an integer >= 1, got {cfg.logging.backup_count}")
    host, sep, port = cfg.http.listen.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not host or int(port) > 65535:
        raise bad("http.listen", f"expected 'host:port', got {cfg.http.listen!r}")
    _check_shared(cfg.shared, bad)


_SHARED_PREFIX = re.compile(r"[A-Za-z0-9_.\-]{1,32}")


def _check_shared(sh: SharedConfig, bad: Callable[[str, str], ConfigError]) -> None:
    if sh.url is None:
        return
    if why := _bad_store_url(sh.url):
        raise bad("shared.url", why)
    if sh.password is not None and sh.password_env is not None:
        raise bad("shared.password_env", "set either `password` or `password_env`, not both")
    if sh.secret is not None and sh.secret_env is not None:
        raise bad("shared.secret_env", "set either `secret` or `secret_env`, not both")
    if sh.secret is None and sh.secret_env is None:
        raise bad(
            "shared.secret",
            "required with `url`: the team's secret that keys the account hash (or `secret_env`)",
        )
    if sh.secret is not None and len(sh.secret) < 16:
        raise bad("shared.secret", "expected at least 16 characters (it keys the account hash)")
    if not _SHARED_PREFIX.fullmatch(sh.prefix):
        raise bad("shared.prefix", f"expected 1-32 letters, digits, '_', '-' or '.', got {sh.prefix!r}")
    for name in ("connect_timeout", "command_timeout", "max_backoff"):
        if not getattr(sh, name) > 0:
            raise bad(f"shared.{name}", f"expected seconds > 0, got {getattr(sh, name)}")
    import importlib.util

    if importlib.util.find_spec("coredis") is None:
        raise bad("shared.url", "needs the optional `shared` extra: pip install 'combined-models[shared]'")


def _bad_store_url(url: str) -> str:
    """Why `url` cannot be the shared store's URL ("" when it can)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        return "expected redis://host[:port][/db] or rediss://…"
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return f"expected redis://host[:port][/db] or rediss://… (TLS), got {redact_url(url)!r}"
    if parts.username or parts.password:
        return "expected a URL without credentials (use `username` and `password` or `password_env`)"
    if parts.query or parts.fragment:
        return "expected a URL without a query or fragment"
    if parts.path not in ("", "/") and not parts.path[1:].isdigit():
        return f"expected a database number as the path, got {parts.path!r}"
    return ""


def redact_url(url: str) -> str:
    """`url` without any password it carries (for status and logs)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")[2]
        user = f"{parts.username}:[redacted]@" if parts.username else ":[redacted]@"
        return parts._replace(netloc=user + netloc).geturl()
    except ValueError:
        return "[unparsable url]"


def _bad_base_url(url: str) -> str:
    """Why `url` cannot be a provider's base URL ("" when it can): the daemon appends paths to it."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        return "expected an http(s) URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected an http(s) URL"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return "expected a URL without a query or fragment (the daemon appends the API's paths)"
    if parts.username or parts.password:
        return "expected a URL without credentials (use api_key or api_key_env)"
    return ""


def provider_ids(cfg: Config) -> list[str]:
    """Every configured provider: the priority list first, then the rest in file order."""
    out = [p for p in cfg.provider_priority]
    out += [p for p in cfg.providers if p not in out]
    return out


def resolve_provider(cfg: Config, pid: str, env: Mapping[str, str] | None = None) -> ResolvedProvider:
    env = os.environ if env is None else env
    p = cfg.providers.get(pid, ProviderConfig())
    preset = PRESETS.get(pid)
    api = p.api or (preset.api if preset else "openai")
    base_url = p.base_url or (preset.base_url if preset and preset.api == api else None) or ""
    key, source = None, "none"
    if p.api_key:
        key, source = p.api_key, "config file"
    elif p.api_key_env:
        key = env.get(p.api_key_env) or None
        source = f"env {p.api_key_env}" if key else f"none (env {p.api_key_env} is unset)"
    elif preset:
        for name in preset.key_envs:
            if env.get(name):
                key, source = env[name], f"env {name}"
                break
    disabled = ""
    if not p.enabled:
        disabled = "disabled in the config"
    elif (
        key is None
        and api in ("openai", "openai-responses", "anthropic", "gemini")
        and not _is_loopback(base_url)
    ):
        wanted = p.api_key_env or (" or ".join(preset.key_envs) if preset and preset.key_envs else "api_key")
        disabled = f"no API key (set {wanted})"
    headers = {**(preset.headers if preset else {}), **p.headers}
    options = dict(preset.options) if preset else {}
    if api == "bedrock" and (p.control_url or p.base_url):
        options["control_url"] = p.control_url or p.base_url
    return ResolvedProvider(
        id=pid,
        api=api,
        base_url=base_url,
        api_key=key,
        key_source=source,
        models=tuple(p.models) if p.models is not None else None,
        headers=headers,
        options=options,
        config=p,
        disabled_reason=disabled,
    )


def _is_loopback(url: str) -> bool:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return host in ("127.0.0.1", "localhost", "::1")
