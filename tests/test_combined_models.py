"""Combined models from the providers' offerings and the config: pure tables (catalog.build_models)."""

from __future__ import annotations

import pytest

from combined_models.catalog import build_models, offering_rank
from combined_models.config import parse_config

HEAD = 'provider_priority = ["anthropic", "bedrock", "openrouter"]\n'
PROVIDERS = """
[providers.anthropic]
api_key = "k"
[providers.bedrock]
api = "bedrock"
region = "eu-west-1"
[providers.openrouter]
api_key = "k"
"""
CONFIG = HEAD + PROVIDERS


def members(models: dict[str, object], cid: str) -> list[tuple[str, str]]:
    combined = models[cid]
    return [(m.provider, m.model) for m in combined.members]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("model", "region", "rank"),
    [
        ("eu.anthropic.claude-sonnet-4-5-v1:0", "eu-west-1", 0),  # the caller's own geography
        ("global.anthropic.claude-sonnet-4-5-v1:0", "eu-west-1", 1),
        ("anthropic.claude-sonnet-4-5-v1:0", "eu-west-1", 2),  # the bare id
        ("us.anthropic.claude-sonnet-4-5-v1:0", "eu-west-1", 9),  # another geography: not callable here
        ("apac.anthropic.claude-sonnet-4-5-v1:0", "ap-southeast-1", 0),
        ("jp.anthropic.claude-sonnet-4-5-v1:0", "ap-southeast-1", 9),
        ("meta-llama/llama-3.3-70b-instruct:free", None, 3),  # the free tier after the paid one
        ("meta-llama/llama-3.3-70b-instruct", None, 2),
    ],
)
def test_offering_rank(model: str, region: str | None, rank: int) -> None:
    assert offering_rank(model, region) == rank


def test_members_follow_the_priority_with_one_offering_per_provider() -> None:
    cfg = parse_config(CONFIG, "test")
    offerings = {
        "openrouter": ["anthropic/claude-sonnet-4.5"],
        "bedrock": [
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "eu.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
        ],
        "anthropic": ["claude-sonnet-4-5-20250929"],
    }
    models = build_models(cfg, offerings, {"bedrock": "eu-west-1"})
    (cid,) = models
    assert members(models, cid) == [
        ("anthropic", "claude-sonnet-4-5-20250929"),
        ("bedrock", "eu.anthropic.claude-sonnet-4-5-20250929-v1:0"),
        ("openrouter", "anthropic/claude-sonnet-4.5"),
    ]


def test_a_model_one_provider_offers_is_no_combined_model() -> None:
    cfg = parse_config(CONFIG, "test")
    assert build_models(cfg, {"anthropic": ["claude-sonnet-4-5"], "openrouter": ["openai/gpt-5"]}) == {}


def test_exclusions_and_explicit_entries_win() -> None:
    cfg = parse_config(
        HEAD
        + 'exclude = ["openrouter/anthropic/claude-sonnet-4.5"]\n'
        + PROVIDERS
        + """
[combined.mine]
members = ["openrouter/openai/gpt-5", "anthropic/claude-sonnet-4-5"]
""",
        "test",
    )
    models = build_models(
        cfg,
        {"anthropic": ["claude-sonnet-4-5"], "openrouter": ["anthropic/claude-sonnet-4.5", "openai/gpt-5"]},
    )
    assert list(models) == ["mine"]  # the automatic group lost its second provider to the exclusion
    assert models["mine"].explicit
    assert members(models, "mine") == [("openrouter", "openai/gpt-5"), ("anthropic", "claude-sonnet-4-5")]
