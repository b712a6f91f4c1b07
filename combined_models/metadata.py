"""Optional model metadata from the public models.dev catalog (the one OpenCode uses). Pure.

Off unless the config says `metadata = "models.dev"`. The daemon fetches the
catalog now and then and caches it in the state dir; nothing depends on it
being reachable. It enriches members with context window, prices and
capabilities, which feed the capability checks of failover.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec

MODELS_DEV_URL = "https://models.dev/api.json"
# The catalog is a couple of megabytes; anything far larger is not it.
MAX_CATALOG_BYTES = 32 * 1024 * 1024


class ModelInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str | None = None
    context_window: int | None = None
    max_output: int | None = None
    input_cost: float | None = None  # USD per million tokens
    output_cost: float | None = None
    tools: bool | None = None
    reasoning: bool | None = None
    images: bool | None = None


Catalog = dict[str, dict[str, ModelInfo]]  # provider id -> model id -> info


def _num(d: Any, key: str) -> float | None:
    v = d.get(key) if isinstance(d, dict) else None
    if not isinstance(v, int | float) or isinstance(v, bool):
        return None
    v = float(v)
    return v if math.isfinite(v) else None  # JSON's 1e999 reads as infinity


def _flag(d: dict[str, Any], key: str) -> bool | None:
    v = d.get(key)
    return v if isinstance(v, bool) else None


def parse_models_dev(body: bytes) -> Catalog:
    """models.dev's api.json (`{provider: {models: {id: {...}}}}`, optionally under "providers").

    Raises ValueError for anything that is not such a catalog (too large, nested too deep, not JSON).
    """
    if len(body) > MAX_CATALOG_BYTES:
        raise ValueError(f"models.dev catalog: larger than {MAX_CATALOG_BYTES} bytes")
    try:
        data = json.loads(body)
    except RecursionError:
        raise ValueError("models.dev catalog: nested too deep") from None
    if isinstance(data, dict) and isinstance(data.get("providers"), dict):
        data = data["providers"]
    if not isinstance(data, dict):
        raise ValueError("models.dev catalog: expected an object of providers")
    out: Catalog = {}
    for pid, provider in data.items():
        models = provider.get("models") if isinstance(provider, dict) else None
        if not isinstance(models, dict):
            continue
        table: dict[str, ModelInfo] = {}
        for mid, m in models.items():
            if not isinstance(m, dict):
                continue
            limit, cost = m.get("limit"), m.get("cost")
            modalities = m.get("modalities") if isinstance(m.get("modalities"), dict) else {}
            inputs = modalities.get("input") if isinstance(modalities, dict) else None
            context, output = _num(limit, "context"), _num(limit, "output")
            model_id = m.get("id")
            table[model_id if isinstance(model_id, str) and model_id else str(mid)] = ModelInfo(
                name=m["name"] if isinstance(m.get("name"), str) else None,
                context_window=int(context) if context else None,
                max_output=int(output) if output else None,
                input_cost=_num(cost, "input"),
                output_cost=_num(cost, "output"),
                tools=_flag(m, "tool_call"),
                reasoning=_flag(m, "reasoning"),
                images=("image" in inputs) if isinstance(inputs, list) else None,
            )
        out[str(pid)] = table
    return out
