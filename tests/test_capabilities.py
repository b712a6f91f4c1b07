"""Capabilities failover relies on, and the optional models.dev metadata behind them."""

from __future__ import annotations

from pathlib import Path

import pytest

from combined_models.capabilities import Capabilities, default_capabilities, with_overrides
from combined_models.chat import ChatRequest, ImagePart, Message, TextPart, Tool
from combined_models.daemon.continuation import prompt_tokens, unsupported
from combined_models.daemon.errors import Failure
from combined_models.metadata import ModelInfo, parse_models_dev

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("api", "model", "flavour", "prefill"),
    [
        ("anthropic", "claude-sonnet-4-5-20250929", "", True),
        ("anthropic", "claude-3-7-sonnet-latest", "", True),
        ("anthropic", "claude-sonnet-4-6", "", False),  # 4.6 and later reject a prefill
        ("anthropic", "claude-opus-4-7", "", False),
        ("bedrock", "us.anthropic.claude-sonnet-4-20250514-v1:0", "", True),
        ("bedrock", "meta.llama3-3-70b-instruct-v1:0", "", False),
        ("openai", "anthropic/claude-sonnet-4.5", "openrouter", True),
        ("openai", "anthropic/claude-sonnet-4.5", "", False),  # an OpenAI-shaped proxy: no prefill
        ("openai", "gpt-4.1", "", False),
        ("gemini", "gemini-2.5-pro", "", False),
        ("copilot", "claude-sonnet-4.5", "", False),
    ],
)
def test_prefill_defaults(api: str, model: str, flavour: str, prefill: bool) -> None:
    assert default_capabilities(api, model, flavour=flavour).prefill is prefill


def test_known_windows_and_modalities() -> None:
    assert default_capabilities("anthropic", "claude-sonnet-4-5").context_window == 200_000
    assert default_capabilities("openai", "gpt-4.1-mini").context_window == 1_047_576
    assert default_capabilities("openai", "some-unknown-model").context_window is None
    assert default_capabilities("openai", "gpt-3.5-turbo").images is False
    assert default_capabilities("gemini", "gemini-2.5-flash").thinking is True


def test_overrides_apply_only_when_given() -> None:
    caps = Capabilities(prefill=False, context_window=1000)
    assert with_overrides(caps, prefill=None, context_window=None) is caps
    assert with_overrides(caps, prefill=True, images=False) == Capabilities(
        prefill=True, images=False, context_window=1000
    )


def test_unsupported_requests_name_the_reason() -> None:
    image = ChatRequest(messages=[Message("user", [TextPart("what is it"), ImagePart(data="aGk=")])])
    tools = ChatRequest(messages=[Message("user", "hi")], tools=[Tool(name="f")])
    long = ChatRequest(messages=[Message("user", "word " * 10_000)])
    assert unsupported(image, Capabilities(images=False)) == (
        Failure.UNSUPPORTED,
        "this model does not accept images",
    )
    assert unsupported(tools, Capabilities(tools=False)) == (
        Failure.UNSUPPORTED,
        "this model does not support tools",
    )
    assert prompt_tokens(long) == 12_500
    kind, why = unsupported(long, Capabilities(context_window=8_000)) or (None, "")
    assert kind is Failure.CONTEXT_TOO_LONG and "8000-token window" in why
    assert unsupported(long, Capabilities(context_window=16_000)) is None
    assert unsupported(image, Capabilities()) is None


def test_models_dev_catalog_is_parsed_leniently() -> None:
    catalog = parse_models_dev((DATA / "models-dev-sample.json").read_bytes())
    info = catalog.get("anthropic", {}).get("claude-sonnet-4-5-20250929")
    assert info == ModelInfo(
        name="Claude Sonnet 4.5",
        context_window=200_000,
        max_output=64_000,
        input_cost=3.0,
        output_cost=15.0,
        tools=True,
        reasoning=True,
        images=True,
    )
    r1 = catalog.get("openrouter", {}).get("deepseek/deepseek-r1")
    assert r1 is not None and (r1.images, r1.tools) == (False, False)
    assert catalog.get("openrouter", {}).get("broken") is None
    assert catalog.get("nobody", {}).get("x") is None
    assert "empty" not in catalog  # a provider without models adds nothing


def test_models_dev_catalog_under_a_providers_key_and_garbage() -> None:
    assert parse_models_dev(b'{"providers": {"p": {"models": {"m": {"limit": {"context": 10}}}}}}') == {
        "p": {"m": ModelInfo(context_window=10)}
    }
    with pytest.raises(ValueError):
        parse_models_dev(b"[1, 2]")
