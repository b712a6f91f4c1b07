"""The TOML config: the design's example, every error as a ConfigError naming the key, presets and keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from combined_models.config import (
    PRESETS,
    Config,
    ConfigError,
    FailoverConfig,
    HttpConfig,
    load_config,
    parse_config,
    provider_ids,
    resolve_provider,
)

# design.md "Contract", the `...` placeholders filled in.
EXAMPLE = """
provider_priority = ["anthropic", "github-copilot", "amazon-bedrock", "openrouter"]
min_providers = 2                 # offerings needed to form a combined model

[failover]                        # defaults shown are examples, not requirements
max_attempts = 3                  # attempts on one provider for transient errors
first_token_timeout = 10.0        # seconds to the first content event
idle_timeout = 20.0               # seconds of silence mid-stream
retry_wait_max = 0.0              # wait out a rate limit this short instead of failing over

[providers.anthropic]             # a known id gets presets (api, base_url, key env)
api_key_env = "ANTHROPIC_API_KEY"

[providers.my-proxy]              # any id; `api` names the dialect
api = "openai"                    # openai | anthropic | bedrock | gemini | copilot
base_url = "http://127.0.0.1:9000/v1"   # as the vendor SDK spells it
api_key = "sk-proxy-secret-123"   # or api_key_env
models = ["claude-sonnet-4"]      # optional: skip discovery, use this list

[combined."my-sonnet"]            # explicit combined model, members in order
members = ["anthropic/claude-sonnet-4-5", "openrouter/anthropic/claude-sonnet-4.5"]

[http]                            # the HTTP front door
listen = "127.0.0.1:4141"
token = "front-door-token"        # bearer token; generated and stored 0600 when absent
"""

SECRET = "sk-very-secret-key-0123456789"


def test_design_example_parses() -> None:
    cfg = parse_config(EXAMPLE)
    assert cfg.provider_priority == ["anthropic", "github-copilot", "amazon-bedrock", "openrouter"]
    assert cfg.min_providers == 2
    assert cfg.failover == FailoverConfig(max_attempts=3, first_token_timeout=10.0, idle_timeout=20.0)
    assert set(cfg.providers) == {"anthropic", "my-proxy"}
    proxy = cfg.providers["my-proxy"]
    assert (proxy.api, proxy.base_url, proxy.api_key, proxy.models) == (
        "openai",
        "http://127.0.0.1:9000/v1",
        "sk-proxy-secret-123",
        ["claude-sonnet-4"],
    )
    assert cfg.providers["anthropic"].api_key_env == "ANTHROPIC_API_KEY"
    assert cfg.combined["my-sonnet"].members == [
        "anthropic/claude-sonnet-4-5",
        "openrouter/anthropic/claude-sonnet-4.5",
    ]
    assert cfg.http == HttpConfig(listen="127.0.0.1:4141", token="front-door-token")
    assert provider_ids(cfg) == ["anthropic", "github-copilot", "amazon-bedrock", "openrouter", "my-proxy"]


def test_empty_file_is_the_default() -> None:
    assert parse_config("") == Config()


def test_load_config_missing_file_is_the_default(tmp_path: Path) -> None:
    assert load_config(tmp_path / "nope" / "config.toml") == Config()


def test_load_config_reads_the_file_and_names_it_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(EXAMPLE, encoding="utf-8")
    assert load_config(path) == parse_config(EXAMPLE)
    path.write_text("min_providers = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_config(path)


def test_load_config_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a directory
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'provider_priority = ["caf\xe9"]\n')
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(bad)


# ---------------------------------------------------------------- errors

BAD = [
    # (toml, the key the message must name, what it must say was expected)
    ("provider_priority = 7", "provider_priority", "Expected `array`, got `int`"),
    ('provider_priority = ["nobody"]', "provider_priority[0]", "unknown provider 'nobody'"),
    ("provder_priority = []", "provder_priority", "unknown field `provder_priority`"),
    ("min_providers = 0", "min_providers", ">= 1"),
    ('min_providers = "two"', "min_providers", "Expected `int`"),
    ("[failover]\nmax_atempts = 3", "failover", "unknown field `max_atempts`"),
    ("[failover]\nmax_attempts = 0", "failover.max_attempts", ">= 1"),
    ("[failover]\nfirst_token_timeout = -1.0", "failover.first_token_timeout", "seconds > 0"),
    ("[failover]\nidle_timeout = 0", "failover.idle_timeout", "seconds > 0"),
    ("[failover]\nconnect_timeout = nan", "failover.connect_timeout", "seconds > 0"),
    ("[failover]\nretry_wait_max = -0.5", "failover.retry_wait_max", "seconds >= 0"),
    ("[failover]\nall_cooling_wait = nan", "failover.all_cooling_wait", "seconds >= 0"),
    (
        "[providers.x]\napi = 'openai'\nbase_url = 'http://a'\nmodles = []",
        "providers.x",
        "unknown field `modles`",
    ),
    ("[providers.x]\napi = 'soap'\nbase_url = 'http://a'", "providers.x.api", "expected one of openai"),
    ("[providers.x]\nbase_url = 'http://a'", "providers.x.api", "expected one of openai"),
    ("[providers.x]\napi = 'openai'", "providers.x.base_url", "required"),
    ("[providers.openai]\napi = 'anthropic'", "providers.openai.base_url", "required"),
    ("[providers.x]\napi = 'openai'\nbase_url = 'ftp://a'", "providers.x.base_url", "http(s) URL"),
    ("[providers.x]\napi = 'openai'\nbase_url = 'api.example.com/v1'", "providers.x.base_url", "http(s) URL"),
    ("[providers.anthropic]\nmax_concurrency = 0", "providers.anthropic.max_concurrency", ">= 1"),
    ("[providers.anthropic]\nidle_timeout = -5.0", "providers.anthropic.idle_timeout", "seconds > 0"),
    (
        "[providers.anthropic]\nfirst_token_timeout = 0",
        "providers.anthropic.first_token_timeout",
        "seconds > 0",
    ),
    ("[providers.anthropic]\nconnect_timeout = nan", "providers.anthropic.connect_timeout", "seconds > 0"),
    (
        "[providers.anthropic]\nheaders = {a = 1}",
        "providers.anthropic.headers[...]",
        "Expected `str`, got `int`",
    ),
    (
        "[providers.anthropic]\nmodels = 'claude'",
        "providers.anthropic.models",
        "Expected `array | null`, got `str`",
    ),
    (
        "[providers.anthropic]\n[providers.z]\nmax_concurrency = 'many'",
        "providers.z.max_concurrency",
        "Expected `int`",
    ),
    ("[providers.\"a/b\"]\napi = 'openai'\nbase_url = 'http://a'", "providers.a/b", "'/'"),
    (
        "[combined.x]\nmembers = ['claude-sonnet-4']\n[providers.anthropic]",
        "combined.x.members[0]",
        "'provider/model'",
    ),
    (
        "[combined.x]\nmembers = ['anthropic/']\n[providers.anthropic]",
        "combined.x.members[0]",
        "'provider/model'",
    ),
    ("[combined.x]\nmembers = ['ghost/m']", "combined.x.members[0]", "unknown provider 'ghost'"),
    ("[combined.x]\nmembers = []", "combined.x.members", "at least one"),
    ("[combined.x]\nmembers = 5", "combined.x.members", "Expected `array`"),
    ("[combined.x]\nmember = ['a/b']", "combined.x", "unknown field `member`"),
    ('[combined."a/b"]\nmembers = ["anthropic/m"]\n[providers.anthropic]', "combined.a/b", "'/'"),
    ("[http]\nlisten = '4141'", "http.listen", "'host:port'"),
    ("[http]\nlisten = 'localhost:'", "http.listen", "'host:port'"),
    ("[http]\nlisten = ':4141'", "http.listen", "'host:port'"),
    ("[http]\nlisten = 'localhost:http'", "http.listen", "'host:port'"),
    ("[http]\nlisten = '127.0.0.1:99999'", "http.listen", "'host:port'"),
    ("[http]\nlisten = '127.0.0.1:\u00b2'", "http.listen", "'host:port'"),  # "²".isdigit()
    ("[http]\nlisten = 4141", "http.listen", "Expected `str`"),
    ("[http]\nport = 4141", "http", "unknown field `port`"),
    ("providers = 5", "providers", "Expected `object`"),
    ("[providers]\nx = 5", "providers.x", "Expected `object`, got `int`"),
    ("exclude = 'x'", "exclude", "Expected `array`"),
]


@pytest.mark.parametrize(("text", "key", "expected"), BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_errors_name_the_key_and_what_was_expected(text: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "/home/u/.config/combined-models/config.toml")
    msg = str(info.value)
    assert msg.startswith("/home/u/.config/combined-models/config.toml: "), msg
    assert f"`{key}`" in msg, msg
    assert expected in msg, msg
    assert "Traceback" not in msg
    # no chained msgspec/tomllib traceback behind it
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_top_level_unknown_key_message_reads_well() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("provder_priority = []")
    assert str(info.value) == "config.toml: Object contains unknown field `provder_priority`"


@pytest.mark.parametrize("text", ["x = [1,", "[providers", "a = 'unterminated", "= 3", "a = 1\na = 2"])
def test_bad_toml(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^config\.toml: not valid TOML: "):
        parse_config(text)


VALUES = [
    "7",
    "-1",
    "0",
    "1.5",
    "nan",
    "inf",
    "true",
    "'x'",
    "''",
    "'a/b'",
    "'http://h'",
    "[]",
    "['a']",
    "{}",
    "{a = 1}",
    "1979-05-27",
]


def test_no_value_anywhere_raises_anything_but_config_error() -> None:
    """Put every kind of value in place of every value of the example: a Config or a ConfigError."""
    lines = EXAMPLE.splitlines()
    tried = 0
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*[\w-]+\s*=\s*)", line)
        if not m:
            continue
        for value in VALUES:
            text = "\n".join([*lines[:i], m.group(1) + value, *lines[i + 1 :]])
            try:
                parse_config(text)
            except ConfigError:
                pass
            tried += 1
    assert tried > 100


# ---------------------------------------------------------------- presets and keys


def with_providers(*ids: str) -> Config:
    return parse_config("\n".join(f"[providers.{i}]" for i in ids))


def test_every_preset_resolves() -> None:
    cfg = with_providers(*PRESETS)
    env = {
        "ANTHROPIC_API_KEY": "k-ant",
        "OPENAI_API_KEY": "k-oai",
        "OPENROUTER_API_KEY": "k-or",
        "AWS_BEARER_TOKEN_BEDROCK": "k-aws",
        "GEMINI_API_KEY": "k-gem",
    }
    got = {pid: resolve_provider(cfg, pid, env) for pid in PRESETS}
    assert {pid: (r.api, r.base_url) for pid, r in got.items()} == {
        "anthropic": ("anthropic", "https://api.anthropic.com"),
        "openai": ("openai", "https://api.openai.com/v1"),
        "openai-responses": ("openai-responses", "https://api.openai.com/v1"),
        "openrouter": ("openai", "https://openrouter.ai/api/v1"),
        "amazon-bedrock": ("bedrock", ""),
        "github-copilot": ("copilot", "https://api.githubcopilot.com"),
        "google": ("gemini", "https://generativelanguage.googleapis.com/v1beta"),
    }
    assert got["openai"].options["max_tokens_field"] == "max_completion_tokens"
    assert "max_tokens_field" not in got["openrouter"].options
    assert got["openrouter"].headers["x-openrouter-title"] == "combined-models"
    assert {pid: r.key_source for pid, r in got.items()} == {
        "anthropic": "env ANTHROPIC_API_KEY",
        "openai": "env OPENAI_API_KEY",
        "openai-responses": "env OPENAI_API_KEY",
        "openrouter": "env OPENROUTER_API_KEY",
        "amazon-bedrock": "env AWS_BEARER_TOKEN_BEDROCK",
        "github-copilot": "none",
        "google": "env GEMINI_API_KEY",
    }
    assert got["openai"].api_key == "k-oai"
    assert all(not r.disabled_reason for r in got.values())


def test_a_preset_not_in_the_file_resolves_too() -> None:
    r = resolve_provider(Config(), "anthropic", {"ANTHROPIC_API_KEY": "k"})
    assert (r.api, r.base_url, r.api_key) == ("anthropic", "https://api.anthropic.com", "k")


def test_google_falls_back_to_the_second_env_name() -> None:
    r = resolve_provider(with_providers("google"), "google", {"GOOGLE_API_KEY": "k-goog"})
    assert (r.api_key, r.key_source) == ("k-goog", "env GOOGLE_API_KEY")
    both = resolve_provider(
        with_providers("google"), "google", {"GOOGLE_API_KEY": "b", "GEMINI_API_KEY": "a"}
    )
    assert both.key_source == "env GEMINI_API_KEY"


def test_key_source_names_the_env_var_never_the_key() -> None:
    cfg = parse_config('[providers.anthropic]\napi_key_env = "MY_ANTHROPIC"')
    r = resolve_provider(cfg, "anthropic", {"MY_ANTHROPIC": SECRET, "ANTHROPIC_API_KEY": "other"})
    assert r.api_key == SECRET
    assert r.key_source == "env MY_ANTHROPIC"
    assert SECRET not in r.key_source


def test_key_from_the_file() -> None:
    cfg = parse_config(EXAMPLE)
    r = resolve_provider(cfg, "my-proxy", {})
    assert (r.api_key, r.key_source) == ("sk-proxy-secret-123", "config file")
    assert r.models == ("claude-sonnet-4",)


def test_repr_never_shows_the_key() -> None:
    cfg = parse_config(f'[providers.openai]\napi_key = "{SECRET}"')
    r = resolve_provider(cfg, "openai", {})
    assert r.api_key == SECRET
    assert SECRET not in repr(r)
    assert SECRET not in str(r)
    assert SECRET not in f"{r!r} {r}"
    r_env = resolve_provider(with_providers("openai"), "openai", {"OPENAI_API_KEY": SECRET})
    assert SECRET not in repr(r_env)


@pytest.mark.parametrize(
    ("text", "pid", "wanted"),
    [
        ("[providers.openai]", "openai", "OPENAI_API_KEY"),
        ("[providers.anthropic]", "anthropic", "ANTHROPIC_API_KEY"),
        ("[providers.google]", "google", "GEMINI_API_KEY or GOOGLE_API_KEY"),
        ('[providers.openrouter]\napi_key_env = "OR_KEY"', "openrouter", "OR_KEY"),
        ("[providers.p]\napi = 'openai'\nbase_url = 'https://llm.example.com/v1'", "p", "api_key"),
    ],
)
def test_no_key_disables_with_a_reason_naming_the_env_var(text: str, pid: str, wanted: str) -> None:
    r = resolve_provider(parse_config(text), pid, {"UNRELATED": "x", "OR_KEY": ""})
    assert r.api_key is None
    assert r.disabled_reason == f"no API key (set {wanted})"


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:9000/v1",
        "http://localhost/v1",
        "http://localhost:8080",
        "http://[::1]:9000/v1",
        "http://[::1]/v1",
    ],
)
def test_loopback_without_a_key_is_enabled(base_url: str) -> None:
    cfg = parse_config(f"[providers.local]\napi = 'openai'\nbase_url = '{base_url}'")
    r = resolve_provider(cfg, "local", {})
    assert (r.api_key, r.key_source, r.disabled_reason) == (None, "none", "")


def test_loopback_lookalike_needs_a_key() -> None:
    cfg = parse_config("[providers.p]\napi = 'openai'\nbase_url = 'http://localhost.example.com/v1'")
    assert resolve_provider(cfg, "p", {}).disabled_reason


@pytest.mark.parametrize("pid", ["github-copilot", "amazon-bedrock"])
def test_providers_with_their_own_credentials_are_not_disabled_without_a_key(pid: str) -> None:
    assert resolve_provider(with_providers(pid), pid, {}).disabled_reason == ""


def test_disabled_in_the_config() -> None:
    cfg = parse_config("[providers.anthropic]\nenabled = false")
    r = resolve_provider(cfg, "anthropic", {"ANTHROPIC_API_KEY": "k"})
    assert r.disabled_reason == "disabled in the config"


def test_file_overrides_preset() -> None:
    cfg = parse_config(
        "[providers.openrouter]\nbase_url = 'https://proxy.example.com/v1'\nheaders = {x-extra = '1', x-openrouter-title = 'mine'}"
    )
    r = resolve_provider(cfg, "openrouter", {"OPENROUTER_API_KEY": "k"})
    assert r.base_url == "https://proxy.example.com/v1"
    assert dict(r.headers) == {"x-openrouter-title": "mine", "x-extra": "1"}


def test_custom_provider_defaults() -> None:
    cfg = parse_config("[providers.p]\napi = 'anthropic'\nbase_url = 'https://a.example.com'\napi_key = 'k'")
    r = resolve_provider(cfg, "p", {})
    assert (r.id, r.api, r.base_url, r.models, dict(r.options)) == (
        "p",
        "anthropic",
        "https://a.example.com",
        None,
        {},
    )


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "from-os")
    assert resolve_provider(with_providers("openai"), "openai").api_key == "from-os"
