"""Provider catalogs to combined models: name normalization and grouping.

Two stages, both pure:

1. :func:`canonical` maps one ``(provider, model id)`` to a :class:`Key`: the
   model's canonical name with provider packaging stripped (namespaces, Bedrock
   region and vendor prefixes and ``-v1:0`` suffixes, Vertex ``@...``/``-maas``,
   OpenRouter ``:free``, quantization tags, Fireworks ``p`` for ``.``, casing,
   dots vs dashes in versions, word order) plus an optional snapshot date.
2. :func:`group_offerings` looks at all offerings at once and merges an undated
   alias with its dated snapshot only when exactly one snapshot of that base is
   present; otherwise every snapshot and the undated alias stay apart.

The rules follow the hand-labeled ``model-catalog-dev.json`` (its ``rules``
list); comments quote the rule each step implements. Everything that names a
*different* model (``-thinking``, ``-preview``, floating ``-latest`` aliases,
effort presets, ``-pro``/``-mini``/``-codex``, sizes, context variants,
fine-tunes, ``:extended``) is kept in the canonical name, so it never merges.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .config import Config, provider_ids
from .protocol import CombinedModel, Member

__all__ = ["Key", "build_models", "canonical", "explain", "group_offerings", "offering_rank"]

Offering = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Key:
    """Canonical identity of one offering.

    ``base`` is the canonical model name (plain lowercase, no ``/``), also used
    as the combined id. ``snapshot`` is the normalized snapshot date used for
    matching (``"MMDD"`` for day dates, ``"YYYYMM"`` for month dates, ``"vNNN"``
    for Google's ``-001`` stable versions); ``snapshot_text`` is its readable
    form and does not take part in equality.
    """

    base: str
    snapshot: str | None = None
    snapshot_text: str | None = field(default=None, compare=False)

    @property
    def floating(self) -> bool:
        """A family alias whose target moves: never merged with a pinned snapshot."""
        return _FLOATING_RE.search(self.base) is not None


# --------------------------------------------------------------------------- patterns


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# "Provider packaging is ignored: Bedrock region inference profiles (us./eu./jp./au./global.)"
_BEDROCK_REGIONS = r"us|eu|apac|jp|au|ca|global|us-gov|sa|me|af|ap|uk|in|kr"
_BEDROCK_VENDORS = (
    r"ai21|amazon|anthropic|cohere|deepseek|google|luma|meta|minimax|mistral|moonshot|moonshotai"
    r"|nvidia|openai|qwen|stability|twelvelabs|writer|xai|zai"
)
_BEDROCK_RE = re.compile(
    rf"^(?:(?:{_BEDROCK_REGIONS})\.)?(?P<vendor>{_BEDROCK_VENDORS})\.(?P<name>[a-z0-9].*)$"
)
# "... Bedrock version suffixes (-v1:0, -v1, -1:0)"; a -vN after a date is Bedrock's too.
_BEDROCK_CTX_RE = re.compile(r":\d+k$")
_BEDROCK_DATED_V_RE = re.compile(r"(?<=-\d{8})-v\d+(?::\d+)?$")
_BEDROCK_V1_RE = re.compile(r"-v1(?::\d+)?$")
_BEDROCK_DASH1_RE = re.compile(r"-1:\d+$")
_BEDROCK_REV_RE = re.compile(r":\d+$")
# A Bedrock name that is only a version (deepseek.r1, deepseek.v3.2) takes its vendor as family.
_VERSION_ONLY_RE = re.compile(r"^[rv]\d")

# "Vertex @YYYYMMDD and @default, Vertex -maas"
_VERTEX_AT_RE = re.compile(r"@(?P<tag>[a-z0-9-]+)$")
_MAAS_RE = re.compile(r"-maas$")

# Namespace words that only say where a model is hosted, never who made it.
_HOSTING_NS = _words(
    "models routers accounts fireworks publishers @cf @hf cf hf huggingface togethercomputer together "
    "azure azureml azure_ai azure-ai bedrock vertex vertex_ai vertex-ai groq deepinfra nebius "
    "cerebras sambanova novita baseten hyperbolic lepton featherless chutes github copilot"
)
# Model vendors' own namespaces ("provider namespaces (... meta-llama/, zai-org/, MiniMaxAI/, moonshotai/ ...)").
_VENDOR_NS = _words(
    "anthropic openai google meta-llama meta facebook mistralai mistral qwen alibaba alibaba-cloud "
    "deepseek deepseek-ai moonshotai moonshot z-ai zai zai-org thudm x-ai xai minimax minimaxai "
    "nvidia microsoft cohere amazon ai21 ai21labs perplexity bytedance bytedance-seed baidu tencent "
    "xiaomi xiaomimimo stepfun stepfun-ai inclusionai meituan ibm ibm-granite liquid liquidai allenai "
    "nousresearch voyage writer inception arcee-ai sakana bfl black-forest-labs google-deepmind "
    "mistral-ai ai21-labs zhipuai zhipu moonshot-ai meta-ai llama"
)
# Families whose weights belong to one vendor: under an unknown namespace they are a derivative
# ("Fine-tunes and derivatives are separate from their base: ... Pearl AI's Gemma listing").
_OWNED_FAMILY_RE = re.compile(
    r"^(?:claude|gpt|o[134]|chatgpt|gemini|gemma|llama|mistral|mixtral|ministral|codestral|devstral"
    r"|magistral|pixtral|voxtral|qwen|qwq|deepseek|kimi|glm|grok|minimax|nemotron|phi|command|nova|jamba)"
    r"(?![a-z])"
)
# Names too generic to stand without their vendor (cohere/embed-v4.0, voyage/rerank-2.5).
_GENERIC_NAME_RE = re.compile(r"^(?:embed|rerank|router|auto|free)(?![a-z])")

# OpenRouter routing tags that keep the same weights ("':free' (OpenRouter): same weights ...",
# "OpenRouter ':beta' (self-moderated endpoint of the same model) would be the same group").
_SAME_TAGS = frozenset({"free", "beta", "nitro", "floor", "exacto", "latest"})

# "Quantization / serving-precision tags are the same model: -fp8 / -FP8 ..."
_QUANT_RE = re.compile(r"-(?:fp8|fp16|bf16|fp4|nvfp4|mxfp4|int4|int8|awq|gptq|w4a16|w8a8)(?=-|$)")
# "Together -Turbo / -tput / -Lite (INT4), DeepInfra -Turbo" on served checkpoints.
_TOGETHER_TIER_RE = re.compile(r"-instruct-(?:turbo|lite|tput|reference)$")
_DATED_TURBO_RE = re.compile(r"(?<=-\d{4})-turbo$")
# "MiniMax/Vercel *-highspeed, Vercel minimax-m2.1-lightning, Moonshot kimi-k2.7-code-highspeed"
# (Nemotron 3.5 Lightning, though, is a model).
_SPEED_TIER_RE = re.compile(r"-highspeed$|^(minimax-.+)-lightning$")
# "Moonshot ... kimi-k2-thinking-turbo" (but kimi-k2-turbo-preview is a floating alias).
_KIMI_TURBO_RE = re.compile(r"^(kimi-.+)-turbo$")
# "OpenRouter anthropic/claude-opus-4.7-fast (Anthropic fast mode)", "Vercel zai/glm-5.2-fast", and
# hosts' -fast flavours of open weights; grok-4-fast, morph-v3-fast, imagen/veo fast are models.
_FAST_MODE_RE = re.compile(r"^((?:claude|glm|kimi|minimax|deepseek|qwen\d|gpt-oss|llama)-.+)-fast$")
# "Fireworks routers/*-fast and *-turbo".
_ROUTER_TIER_RE = re.compile(r"-(?:fast|turbo)$")
# "Groq -instant / -versatile" (and its -specdec) serve Llama instruct weights.
_GROQ_TIER_RE = re.compile(r"^(llama-.+-\d+b)-(?:instant|versatile|specdec)$")
# "Meta Llama API cerebras-/groq- prefixed ids".
_HOST_PREFIX_RE = re.compile(r"^(?:cerebras|groq)-(?=llama)")
# "vendor prefixes in names (meta-llama-3.1-8b-instruct = llama-3.1-8b-instruct)".
_NAME_VENDOR_RE = re.compile(
    r"^(?:meta-(?=llama)|cohere-(?=command|embed|rerank|aya)|ai21-(?=jamba)|nvidia-(?=nemotron|llama)"
    r"|microsoft-(?=phi|mai)|google-(?=gemma|gemini)|ibm-(?=granite)|amazon-(?=nova|titan)|zai-(?=glm)|mistralai-)"
)

# Snapshot dates (stage 2 decides whether they merge with an undated alias).
_DATE8_RE = re.compile(r"-(20\d\d)(0[1-9]|1[0-2])([0-3]\d)(?=-|$)")
_DATE_ISO_RE = re.compile(r"-(20\d\d)-(0[1-9]|1[0-2])-([0-3]\d)(?=-|$)")
_DATE_MY_RE = re.compile(r"-(0[1-9]|1[0-2])-(20\d\d)(?=-|$)")
_DATE_MD_RE = re.compile(r"-(0[1-9]|1[0-2])-([0-3]\d)$")
_GOOGLE_STABLE_RE = re.compile(r"^(gemini-\d.*)-(00\d)$")
# xAI dates its releases MMDD (grok-2-1212, grok-4.20-0309-reasoning); elsewhere 4 digits are versions.
_XAI_DATE_RE = re.compile(r"^grok-.*?-(0[1-9]|1[0-2])([0-3]\d)(?=-|$)")
# Region deployments of one model (Alibaba qwen-plus-us).
_REGION_SUFFIX_RE = re.compile(r"-us$")

# Version notation: "Fireworks 'p' for '.' (glm-5p1 = glm-5.1)" and claude-3-5 = claude-3.5.
_P_DOT_RE = re.compile(r"(?<=\d)p(?=\d)")
_DASH_DOT_RE = re.compile(r"(?<![\d.])(\d)-(\d)(?=-|$)")
_GPT35_RE = re.compile(r"^gpt-35(?=-|$)")
_LLAMA_RE = re.compile(r"(?:^|(?<=-))llama-?v?(\d)")
_JOINED_FAMILY_RE = re.compile(r"(?:^|(?<=-))(qwen|lfm)-(\d)")
# OpenRouter names V3 releases deepseek-chat-v3-0324 / deepseek-chat-v3.1.
_DEEPSEEK_CHAT_V_RE = re.compile(r"^deepseek-chat-v(?=\d)")

# Claude: ids come as claude-3.5-sonnet, claude-sonnet-4.5, claude-4-opus, claude-sonnet-4-0.
_CLAUDE_RE = re.compile(
    r"^claude-(?:(?P<v1>\d+(?:\.\d+)?)-(?P<t1>opus|sonnet|haiku)|(?P<t2>opus|sonnet|haiku)-(?P<v2>\d+(?:\.\d+)?))"
    r"(?P<rest>(?:-.+)?)$"
)
_THOUGHT_RE = re.compile(r"-thought$")

# Llama: "llama-3.3-8b vs 70b" are different; Llama 4 and 3.2 vision have one canonical form each.
_LLAMA4_RE = re.compile(r"^llama-4-(maverick|scout)(?:-17b)?(?:-(?:128|16)e)?(?=-|$)")
_LLAMA4_EXPERTS = {"maverick": "128e", "scout": "16e"}
_LLAMA32_VISION_RE = re.compile(r"^llama-3\.2-(11|90)b(?:-vision)?(?=-|$)")

# Mixture-of-experts ids that omit the active parameter count (qwen-3-30b = qwen3-30b-a3b). Not a
# bare qwen3-235b: that has named both the 2025-04 hybrid and the 2507 instruct release.
_MOE_ACTIVE = {
    "qwen3-30b": "a3b",
    "qwen3-coder-30b": "a3b",
    "qwen3-coder-480b": "a35b",
    "qwen3-next-80b": "a3b",
    "qwen3-vl-30b": "a3b",
    "qwen3-vl-235b": "a22b",
    "qwen3.5-35b": "a3b",
    "qwen3.5-122b": "a10b",
    "qwen3.5-397b": "a17b",
    "qwen3.6-35b": "a3b",
    "nemotron-3-nano-30b": "a3b",
    "nemotron-3-super-120b": "a12b",
    "nemotron-3-ultra-550b": "a55b",
    "gemma-4-26b": "a4b",
}
_MOE_RE = re.compile(r"^(" + "|".join(re.escape(k) for k in _MOE_ACTIVE) + r")(?=-|$)(?!-a\d+b)")
# Bedrock's "nemotron-nano-3-30b" word order.
_NEMOTRON_ORDER_RE = re.compile(r"^nemotron-(nano|super|ultra)-(\d+(?:\.\d+)?)(?=-|$)")
# Qwen3 instruct/thinking splits only exist as the 2507 release (qwen3-235b-a22b-thinking = -thinking-2507).
_QWEN3_2507_RE = re.compile(r"^qwen3-(?:235b-a22b|30b-a3b|4b)-(?:instruct|thinking)$")

# Mistral: "mistral-large-2407 vs 2411 vs 2512" are versions. YYMM is the version; the "3.1"
# style names map onto it. Sizes of small/medium/large tiers are implied by the version.
_MISTRAL_PREFIX_RE = re.compile(r"^(?:labs|open)-(?=mistral|mixtral|devstral|codestral|leanstral)")
_MISTRAL_SIZE_RE = re.compile(
    r"^((?:mistral|devstral|voxtral|magistral|pixtral)-(?:small|medium|large|mini)(?:-\d+(?:\.\d+)?)?"
    r"|devstral-\d+)-\d+b(?=-|$)"
)
# mistral-small-3.2-24b-instruct-2506: the date alone names the version.
_MISTRAL_DOUBLE_RE = re.compile(
    r"^((?:mistral|devstral|magistral)-(?:small|medium|large))-\d+(?:\.\d+)?-(2\d[01]\d)$"
)
_MISTRAL_VERSIONS = {
    "mistral-large-2": "mistral-large-2407",
    "mistral-large-2.1": "mistral-large-2411",
    "mistral-large-3": "mistral-large-2512",
    "mistral-medium-3": "mistral-medium-2505",
    "mistral-medium-3.1": "mistral-medium-2508",
    "mistral-medium-3.5": "mistral-medium-2604",
    "mistral-small-3": "mistral-small-2501",
    "mistral-small-3.1": "mistral-small-2503",
    "mistral-small-3.2": "mistral-small-2506",
    "mistral-small-4": "mistral-small-2603",
    "ministral-3-3b": "ministral-3b-2512",
    "ministral-3-8b": "ministral-8b-2512",
    "ministral-3-14b": "ministral-14b-2512",
    "ministral-14b": "ministral-14b-2512",  # only one 14b release exists
    "devstral-2": "devstral-2512",
    "devstral-small-2": "devstral-small-2512",
    "devstral-small-1.1": "devstral-small-2507",
    "devstral-small-1.0": "devstral-small-2505",
    "devstral-medium-1.0": "devstral-medium-2507",
    "codestral-25.01": "codestral-2501",
    "codestral-25.08": "codestral-2508",
    "magistral-small-1.2": "magistral-small-2509",
    "magistral-medium-1.2": "magistral-medium-2509",
    "mistral-nemo-2407": "mistral-nemo",  # Mistral NeMo had a single release
}

# Small curated table for ids no rule can read.
_ALIASES: dict[str, tuple[str, str | None]] = {
    # Vertex names 3.5 Sonnet v2 by its version, not its date.
    "claude-3-5-sonnet-v2": ("claude-3-5-sonnet", "20241022"),
    # "Kimi K2 0711" is the original Kimi-K2-Instruct.
    "kimi-k2-0711": ("kimi-k2", None),
    # Unsized Qwen ids name the flagship size (qwen/qwen3-coder = qwen3-coder-480b-a35b-instruct).
    "qwen3-coder": ("qwen3-coder-480b-a35b", None),
    "qwen3-vl": ("qwen3-vl-235b-a22b", None),
    "qwen3-vl-thinking": ("qwen3-vl-235b-a22b-thinking", None),
    "nemotron-3-ultra": ("nemotron-3-ultra-550b-a55b", None),
    "nemotron-3-super": ("nemotron-3-super-120b-a12b", None),
}
# Bedrock ids that name a model differently from everyone else.
_BEDROCK_ALIASES = {
    "deepseek-v3": "deepseek-v3.1",  # deepseek.v3-v1:0 is DeepSeek-V3.1
    "nemotron-nano-12b-v2": "nemotron-nano-12b-v2-vl",
}

# "Floating family aliases ... never merged with a pinned version" (-latest of a family, qwen-plus,
# deepseek-chat / deepseek-reasoner, OpenRouter's own ~aliases and routers).
_FLOATING_RE = re.compile(
    r"-latest$|^(?:qwen-(?:plus|max|turbo|flash|long)(?:-thinking)?|deepseek-(?:chat|reasoner))$|^openrouter-"
    # Gemini's undated -preview follows the newest preview; dated previews are separate releases
    # ("gemini-2.5-pro-preview-05-06 and -06-05").
    r"|^gemini-.*-preview$"
)
_SIZE_TOKEN_RE = re.compile(r"^(?:\d+(?:\.\d+)?[bkmt]|[ae]\d+b|\d+x\d+b)$")
_INSTRUCT_RE = re.compile(r"-instruct(?=-|$)|-it$")
_INSTRUCT_DEFAULT = (
    (re.compile(r"^llama-\d(?:\.\d)?-(?:\d+b(?:-vision)?|(?:maverick|scout)-17b-\d+e)$"), "-instruct"),
    (re.compile(r"^gemma-\d.*-\d+b(?:-a\d+b)?$|^gemma-3n-e\d+b$"), "-it"),
)


# --------------------------------------------------------------------------- stage 1


class _Trace:
    """The rewrites applied to one id, for :func:`explain`."""

    def __init__(self, s: str) -> None:
        self.s = s
        self.steps: list[str] = []

    def sub(self, why: str, pattern: re.Pattern[str], repl: str | Callable[[re.Match[str]], str]) -> None:
        new = pattern.sub(repl, self.s)
        self.set(why, new)

    def set(self, why: str, new: str) -> None:
        if new != self.s:
            self.steps.append(f"{why}: {self.s} -> {new}")
            self.s = new


def canonical(provider: str, model_id: str) -> Key:
    """Canonical key of one offering (pure; the provider name is not needed by any rule yet)."""
    return _canonicalize(model_id)[0]


@functools.lru_cache(maxsize=8192)
def _canonicalize(model_id: str) -> tuple[Key, tuple[str, ...]]:
    """Key and the rewrites that produced it. Id forms are self-describing (Bedrock, Vertex, ...)."""
    t = _Trace(model_id)
    t.set("casing and separators", model_id.strip().lower().replace("_", "-").replace(" ", "-"))
    namespace: str | None = None
    router = openrouter_own = bedrock = False

    # OpenRouter's own floating aliases (~vendor/x-latest) and routers (openrouter/auto) are
    # "not Google's gemini-flash-latest and stand alone".
    if t.s.startswith("~") or t.s.startswith("openrouter/"):
        openrouter_own = True
        t.set("OpenRouter's own alias", t.s.lstrip("~"))

    # Namespaces: keep the last path segment, remember who published it.
    if "/" in t.s:
        parts = t.s.split("/")
        name = parts[-1]
        owners = [p for p in parts[:-1] if p and p not in _HOSTING_NS and ":" not in p]  # ":" = an ARN
        router = "routers" in parts[:-1]
        namespace = owners[-1] if owners else None
        t.set("namespace", name)

    # Bedrock packaging: region profile, vendor prefix, -v1:0 style suffixes.
    m = _BEDROCK_RE.match(t.s)
    if m:
        bedrock = True
        vendor, name = m.group("vendor"), m.group("name")
        namespace = vendor
        if _VERSION_ONLY_RE.match(name):
            name = f"{vendor}-{name}"
        t.set("Bedrock region/vendor prefix", name)
        t.sub("Bedrock context tier", _BEDROCK_CTX_RE, "")
        t.sub("Bedrock version suffix", _BEDROCK_DATED_V_RE, "")
        t.sub("Bedrock version suffix", _BEDROCK_V1_RE, "")
        t.sub("Bedrock version suffix", _BEDROCK_DASH1_RE, "")
        t.sub("Bedrock version suffix", _BEDROCK_REV_RE, "")

    # Routing tags after ':' (OpenRouter, Ollama).
    if ":" in t.s:
        name, _, tag = t.s.partition(":")
        tag = tag.replace(":", "-")
        if tag in _SAME_TAGS or tag.isdigit():
            t.set(f"':{tag}' serves the same weights", name)
        else:  # :thinking, :extended, :online ... name a different behaviour
            t.set(f"':{tag}' is a variant", f"{name}-{tag}")

    # Vertex packaging.
    snapshot: str | None = None
    snapshot_text: str | None = None
    m = _VERTEX_AT_RE.search(t.s)
    if m:
        tag = m.group("tag")
        if re.fullmatch(r"20\d{6}", tag):
            snapshot, snapshot_text = tag[4:], tag
        elif re.fullmatch(r"00\d", tag):  # older gemini-1.5-pro@002 style
            snapshot, snapshot_text = "v" + tag, tag
        t.set("Vertex @version", t.s[: m.start()])
    t.sub("Vertex -maas", _MAAS_RE, "")

    # Serving precision and speed tiers of the same weights.
    t.sub("quantization tag", _QUANT_RE, "")
    t.sub("Together/DeepInfra serving tier", _TOGETHER_TIER_RE, "-instruct")
    t.sub("DeepInfra serving tier", _DATED_TURBO_RE, "")
    t.sub("speed tier", _SPEED_TIER_RE, r"\1")
    t.sub("speed tier", _KIMI_TURBO_RE, r"\1")
    if router:
        t.sub("Fireworks router speed tier", _ROUTER_TIER_RE, "")
    t.sub("host prefix", _HOST_PREFIX_RE, "")
    t.sub("vendor prefix in name", _NAME_VENDOR_RE, "")
    t.sub("region deployment", _REGION_SUFFIX_RE, "")

    # Snapshot dates.
    if snapshot is None:
        snapshot, snapshot_text = _extract_date(t)

    # Version notation.
    t.sub("Fireworks 'p' for '.'", _P_DOT_RE, ".")
    t.sub("dashes for dots in versions", _DASH_DOT_RE, r"\1.\2")
    t.sub("Azure gpt-35 spelling", _GPT35_RE, "gpt-3.5")
    t.sub("llama version spelling", _LLAMA_RE, r"llama-\1")
    t.sub("joined family version", _JOINED_FAMILY_RE, r"\1\2")
    t.sub("OpenRouter deepseek-chat-vN", _DEEPSEEK_CHAT_V_RE, "deepseek-v")
    t.sub("speed tier", _FAST_MODE_RE, r"\1")
    t.sub("Groq serving tier", _GROQ_TIER_RE, r"\1-instruct")
    t.sub("-thought is -thinking", _THOUGHT_RE, "-thinking")

    # Version-level '-latest' aliases are the version (gpt-5-chat-latest = gpt-5-chat);
    # family-level ones (mistral-large-latest, gemini-flash-latest) float and keep the suffix.
    if t.s.endswith("-latest") and _has_version(t.s[: -len("-latest")]):
        t.set("version-level -latest alias", t.s[: -len("-latest")])

    # Family forms.
    t.sub(
        "Qwen3 instruct/thinking split is the 2507 release", _QWEN3_2507_RE, lambda mm: mm.group(0) + "-2507"
    )
    if not t.s.startswith("gpt-"):  # gpt-3.5-turbo-instruct is its own model
        t.sub("instruct is the served default", _INSTRUCT_RE, "")
    t.sub("nemotron word order", _NEMOTRON_ORDER_RE, r"nemotron-\2-\1")
    t.sub("Llama 4 canonical size", _LLAMA4_RE, lambda mm: f"llama-4-{mm[1]}-17b-{_LLAMA4_EXPERTS[mm[1]]}")
    t.sub("Llama 3.2 11b/90b are vision models", _LLAMA32_VISION_RE, r"llama-3.2-\1b-vision")
    t.sub("MoE active parameters", _MOE_RE, lambda mm: f"{mm[1]}-{_MOE_ACTIVE[mm[1]]}")
    if t.s.startswith("nova-"):
        t.sub("Amazon Nova v1 is the undated name", re.compile(r"-v1$"), "")
    if t.s.startswith("glm-"):
        t.sub("glm-5.0 = glm-5", re.compile(r"^(glm-\d+)\.0(?=-|$)"), r"\1")
    t.sub("Mistral lab/open prefix", _MISTRAL_PREFIX_RE, "")
    t.sub("Mistral tier size is implied", _MISTRAL_SIZE_RE, r"\1")
    t.sub("Mistral version and date", _MISTRAL_DOUBLE_RE, r"\1-\2")
    if t.s in _MISTRAL_VERSIONS:
        t.set("Mistral version name", _MISTRAL_VERSIONS[t.s])
    if t.s.startswith("kimi-k2-"):
        t.sub("Moonshot -preview release names", re.compile(r"^(kimi-k2-\d{4})-preview$"), r"\1")
    if bedrock and t.s in _BEDROCK_ALIASES:
        t.set("Bedrock alias", _BEDROCK_ALIASES[t.s])
    if t.s in _ALIASES:
        base, alias_snapshot = _ALIASES[t.s]
        t.set("alias", base)
        if alias_snapshot and snapshot is None:
            snapshot, snapshot_text = alias_snapshot[4:], alias_snapshot
    t.set("claude form", _claude(t.s, has_snapshot=snapshot is not None))
    for pattern, suffix in _INSTRUCT_DEFAULT:
        if pattern.search(t.s):
            t.set("instruct-tuned by default", t.s + suffix)

    # Who published it: an unknown namespace on a vendor's family is a derivative.
    if openrouter_own:
        t.set("OpenRouter's own alias", f"openrouter-{t.s}")
    elif namespace and (
        _GENERIC_NAME_RE.match(t.s) or (namespace not in _VENDOR_NS and _OWNED_FAMILY_RE.match(t.s))
    ):
        t.set("publisher kept", f"{_slug(namespace)}-{t.s}")

    base = t.s.strip("-.") or model_id.lower()
    return Key(base, snapshot, snapshot_text), tuple(t.steps)


def _extract_date(t: _Trace) -> tuple[str | None, str | None]:
    """Remove a snapshot date from the id; return (match key, readable form)."""
    for pattern, sep in ((_DATE8_RE, ""), (_DATE_ISO_RE, "-")):
        m = pattern.search(t.s)
        if m:
            y, mo, d = m.groups()
            t.set("snapshot date", t.s[: m.start()] + t.s[m.end() :])
            return mo + d, sep.join((y, mo, d))
    m = _DATE_MY_RE.search(t.s)
    if m:  # Cohere command-a-03-2025, Gemini preview-09-2025
        mo, y = m.groups()
        t.set("snapshot month", t.s[: m.start()] + t.s[m.end() :])
        return y + mo, f"{mo}-{y}"
    m = _DATE_MD_RE.search(t.s)
    if m:  # qwen3.5-flash-02-23, gemini-2.5-pro-preview-05-06
        mo, d = m.groups()
        t.set("snapshot date", t.s[: m.start()])
        return mo + d, f"{mo}-{d}"
    m = _XAI_DATE_RE.match(t.s)
    if m:
        mo, d = m.groups()
        t.set("xAI snapshot date", t.s[: m.start(1) - 1] + t.s[m.end(2) :])
        return mo + d, mo + d
    m = _GOOGLE_STABLE_RE.match(t.s)
    if m:  # gemini-2.0-flash-001
        t.set("Google stable version", m.group(1))
        return "v" + m.group(2), m.group(2)
    # A bare 4-digit suffix is a version, not a snapshot: deepseek-r1-0528, kimi-k2-0905,
    # mistral-large-2411, qwen3-...-2507, gpt-3.5-turbo-0613 ("Different versions ...").
    return None, None


def _claude(s: str, *, has_snapshot: bool) -> str:
    """Anthropic's own forms: claude-3-5-sonnet below 4, claude-sonnet-4-5 from 4 on."""
    m = _CLAUDE_RE.match(s)
    if not m:
        return s
    version = m.group("v1") or m.group("v2") or ""
    tier = m.group("t1") or m.group("t2") or ""
    rest = m.group("rest")
    if version.endswith(".0"):  # claude-sonnet-4-0 is Anthropic's alias form of claude-sonnet-4
        version = version[:-2]
    if rest == "-v2" and has_snapshot:  # the date pins it (claude-3-5-sonnet-v2@20241022)
        rest = ""
    dashed = version.replace(".", "-")
    if int(version.split(".")[0]) >= 4:
        return f"claude-{tier}-{dashed}{rest}"
    return f"claude-{dashed}-{tier}{rest}"


def _has_version(stem: str) -> bool:
    """True when a name pins a model version (gpt-5-chat), not only a family (ministral-3b)."""
    return any(any(c.isdigit() for c in tok) for tok in stem.split("-") if not _SIZE_TOKEN_RE.match(tok))


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", s).strip("-")


# --------------------------------------------------------------------------- stage 2


@dataclass(slots=True)
class _Plan:
    keys: dict[Offering, Key]
    ids: dict[Offering, str]
    snapshots: dict[str, dict[str, set[str]]]  # base -> snapshot -> readable forms


def _plan(offerings: Iterable[Offering]) -> _Plan:
    unique = list(dict.fromkeys((str(p), str(m)) for p, m in offerings))
    keys = {o: canonical(*o) for o in unique}
    snapshots: dict[str, dict[str, set[str]]] = {}
    for k in keys.values():
        if k.snapshot is not None:
            snapshots.setdefault(k.base, {}).setdefault(k.snapshot, set()).add(k.snapshot_text or k.snapshot)

    # Internal group identity: (base, snapshot), where a snapshot that is the only one of a
    # non-floating base joins the undated alias ("merged when the undated id is a version-level
    # alias with exactly one snapshot in the catalog").
    def group_of(k: Key) -> tuple[str, str | None]:
        if k.snapshot is None or (not k.floating and len(snapshots[k.base]) == 1):
            return (k.base, None)
        return (k.base, k.snapshot)

    names: dict[tuple[str, str | None], str] = {}
    taken: set[str] = set()
    for gk in sorted({group_of(k) for k in keys.values()}, key=lambda g: (g[0], g[1] or "")):
        base, snap = gk
        name = base if snap is None else f"{base}-{_snapshot_label(base, snapshots[base][snap])}"
        while name in taken:  # never two groups under one id
            name += "-alt"
        taken.add(name)
        names[gk] = name
    return _Plan(keys, {o: names[group_of(k)] for o, k in keys.items()}, snapshots)


def _snapshot_label(base: str, forms: set[str]) -> str:
    """Readable snapshot for an id: Anthropic writes 20240620, others 2024-06-20; most complete wins."""
    compact = base.startswith("claude-")
    return max(forms, key=lambda f: (f.isdigit() == compact, len(f), f))


def group_offerings(offerings: Iterable[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Group (provider, model id) offerings into combined models.

    Returns combined id -> members. Every distinct input pair is in exactly one
    group (singletons included); members keep input order; duplicates appear once.
    """
    plan = _plan(offerings)
    groups: dict[str, list[Offering]] = {}
    for o, gid in plan.ids.items():
        groups.setdefault(gid, []).append(o)
    return groups


def explain(offerings: Iterable[tuple[str, str]], combined_id: str) -> list[str]:
    """Human-readable reasons why the members of ``combined_id`` are grouped.

    One line per member with its canonical key and the rewrites that produced
    it, then the snapshot rule that applied. Raises ``KeyError`` for an id that
    is not among the groups of ``offerings``.
    """
    plan = _plan(offerings)
    members = [o for o, gid in plan.ids.items() if gid == combined_id]
    if not members:
        raise KeyError(combined_id)
    lines: list[str] = []
    for provider, model in members:
        key, steps = _canonicalize(model)
        snap = f" @ snapshot {key.snapshot_text}" if key.snapshot_text else ""
        lines.append(f"{provider}/{model}: canonical '{key.base}'{snap}")
        lines.extend(f"    {s}" for s in steps)
    bases = sorted({plan.keys[o].base for o in members})
    for base in bases:
        snaps = plan.snapshots.get(base, {})
        forms = sorted(_snapshot_label(base, v) for v in snaps.values())
        dated = any(plan.keys[o].snapshot is not None for o in members)
        undated = any(plan.keys[o].snapshot is None for o in members)
        if Key(base).floating and snaps:
            lines.append(
                f"'{base}' is a floating alias: never merged with its snapshots ({', '.join(forms)})"
            )
        elif len(snaps) == 1 and dated and undated:
            lines.append(f"undated '{base}' merged with its only snapshot {forms[0]}")
        elif len(snaps) == 1 and dated:
            lines.append(f"snapshot {forms[0]} is the only one of '{base}': it takes the undated id")
        elif len(snaps) > 1:
            lines.append(f"{len(snaps)} snapshots of '{base}' present ({', '.join(forms)}): each stays apart")
    return lines


# ---------------------------------------------------------------- combined models from offerings

_GEOGRAPHY = {
    "us": ("us-",),
    "eu": ("eu-",),
    "apac": ("ap-",),
    "jp": ("ap-northeast-1",),
    "au": ("ap-southeast-2",),
}


def offering_rank(model: str, region: str | None) -> int:
    """Which of one provider's offerings of the same model to use (lower is better). Pure.

    Bedrock lists a model under several inference profiles: the one for the
    caller's own geography comes first, then `global.`, then the bare id
    (often not invocable on demand); profiles of other geographies cannot be
    called from this region at all. A `:free` tier comes after the paid one.
    """
    prefix = model.split(".", 1)[0] if "." in model else ""
    if prefix in _GEOGRAPHY or prefix in ("global", "us-gov"):
        if region and any(region.startswith(r) for r in _GEOGRAPHY.get(prefix, ())):
            return 0
        return 1 if prefix == "global" else 9
    return 3 if model.endswith(":free") else 2


def build_models(
    cfg: Config, offerings: Mapping[str, Sequence[str]], regions: Mapping[str, str | None] | None = None
) -> dict[str, CombinedModel]:
    """Combined models from the providers' offerings and the config's explicit entries. Pure.

    Automatic groups need offerings from at least `min_providers` providers;
    members are ordered by `provider_priority` (unlisted providers after, in
    file order), one offering per provider (see `offering_rank`). Explicit
    `[combined.*]` entries keep their own order and win.
    """
    regions = regions or {}
    order = {pid: i for i, pid in enumerate(provider_ids(cfg))}
    pairs = [(pid, m) for pid, models in offerings.items() for m in models if f"{pid}/{m}" not in cfg.exclude]
    out: dict[str, CombinedModel] = {}
    for cid, members in group_offerings(pairs).items():
        if cid in cfg.exclude or len({p for p, _ in members}) < cfg.min_providers:
            continue
        best: dict[str, tuple[str, str]] = {}
        for pid, model in members:
            kept = best.get(pid)
            if kept is None or offering_rank(model, regions.get(pid)) < offering_rank(
                kept[1], regions.get(pid)
            ):
                best[pid] = (pid, model)
        ranked = sorted(best.values(), key=lambda pm: order.get(pm[0], len(order)))
        out[cid] = CombinedModel(id=cid, members=[Member(provider=p, model=m) for p, m in ranked])
    for cid, c in cfg.combined.items():
        explicit = [Member(provider=p, model=m) for p, _, m in (x.partition("/") for x in c.members)]
        out[cid] = CombinedModel(id=cid, members=explicit, explicit=True)
    return dict(sorted(out.items()))
