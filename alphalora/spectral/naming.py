"""Parameter names → (transformer block index, canonical module kind), per model family.

Pure string functions with a small table per family and a generic fallback, so that every
source (safetensors, GGUF, pickle) reports the same layer/kind for the same projection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: Canonical kinds of block matrices (docs/method.md §1), then the non-block kinds.
BLOCK_KINDS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "qkv",
    "gate_up",
)
NON_BLOCK_KINDS: tuple[str, ...] = ("embedding", "lm_head", "other")

#: Components after which the next integer is the block index (generic fallback).
LAYER_CONTAINERS = frozenset({"layers", "h", "layer", "blocks", "block", "blk"})

_LLAMA_TABLE = {
    "self_attn.q_proj": "q_proj",
    "self_attn.k_proj": "k_proj",
    "self_attn.v_proj": "v_proj",
    "self_attn.o_proj": "o_proj",
    "mlp.gate_proj": "gate_proj",
    "mlp.up_proj": "up_proj",
    "mlp.down_proj": "down_proj",
}
_GPT2_TABLE = {
    "attn.c_attn": "qkv",
    "attn.c_proj": "o_proj",
    "mlp.c_fc": "up_proj",
    "mlp.c_proj": "down_proj",
}
_BERT_TABLE = {
    "attention.self.query": "q_proj",
    "attention.self.key": "k_proj",
    "attention.self.value": "v_proj",
    "attention.output.dense": "o_proj",
    "intermediate.dense": "up_proj",
    "output.dense": "down_proj",
}
_PHI3_TABLE = {
    "self_attn.qkv_proj": "qkv",
    "self_attn.o_proj": "o_proj",
    "mlp.gate_up_proj": "gate_up",
    "mlp.down_proj": "down_proj",
}
#: GGUF (llama.cpp) block tensor names, architecture-independent.
_GGUF_TABLE = {
    "attn_q": "q_proj",
    "attn_k": "k_proj",
    "attn_v": "v_proj",
    "attn_output": "o_proj",
    "attn_qkv": "qkv",
    "ffn_gate": "gate_proj",
    "ffn_up": "up_proj",
    "ffn_down": "down_proj",
}

#: The table of each family; families sharing Llama's names point at the same table.
FAMILY_TABLES: dict[str, dict[str, str]] = {
    "llama": _LLAMA_TABLE,
    "gpt2": _GPT2_TABLE,
    "bert": _BERT_TABLE,
    "phi3": _PHI3_TABLE,
}
FAMILY_ALIASES: dict[str, str] = {
    "mistral": "llama",
    "mixtral": "llama",
    "gemma": "llama",
    "gemma2": "llama",
    "gemma3": "llama",
    "gemma3_text": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "qwen2_moe": "llama",
    "qwen3_moe": "llama",
    "smollm3": "llama",
    "olmo": "llama",
    "olmo2": "llama",
    "granite": "llama",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "distilroberta": "bert",
    "electra": "bert",
    "imagegpt": "gpt2",
}
#: Families whose block weights are GPT-2 ``Conv1D`` (stored (in, out), reported transposed).
CONV1D_FAMILIES = frozenset({"gpt2", "imagegpt"})

#: Common module names of other families mapped to canonical kinds (generic fallback).
_ALIASES = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "query": "q_proj",
    "key": "k_proj",
    "value": "v_proj",
    "out_proj": "o_proj",
    "dense": "o_proj",
    "query_key_value": "qkv",
    "qkv_proj": "qkv",
    "Wqkv": "qkv",
    "gate_up_proj": "gate_up",
    "fc1": "up_proj",
    "fc2": "down_proj",
    "dense_h_to_4h": "up_proj",
    "dense_4h_to_h": "down_proj",
    "c_fc": "up_proj",
}

_EMBEDDING_NAMES = frozenset(
    {
        "embed_tokens",
        "wte",
        "wpe",
        "word_embeddings",
        "position_embeddings",
        "token_type_embeddings",
        "token_embd",
        "embed_positions",
        "embed_in",
        "shared",
    }
)
_LM_HEAD_NAMES = frozenset({"lm_head", "embed_out"})
#: Sub-models that are not the language model's blocks (vision/audio towers of multimodal models).
_FOREIGN_TOWERS = frozenset(
    {"vision_tower", "vision_model", "visual", "multi_modal_projector", "audio_tower"}
)
_PARAM_SUFFIXES = frozenset({"weight", "bias"})


def canonical_family(family: str | None) -> str | None:
    """The table name for a family (``"qwen2"`` → ``"llama"``), or None when unknown."""
    if family is None:
        return None
    fam = family.lower()
    fam = FAMILY_ALIASES.get(fam, fam)
    return fam if fam in FAMILY_TABLES else None


def _module_path(name: str) -> list[str]:
    parts = [p for p in name.split(".") if p]
    if parts and parts[-1] in _PARAM_SUFFIXES:
        parts = parts[:-1]
    return parts


def _block_index(parts: list[str]) -> int | None:
    """Position in ``parts`` of the first integer that follows a layer-container component."""
    for i in range(len(parts) - 1):
        if parts[i] in LAYER_CONTAINERS and parts[i + 1].isdigit():
            return i + 1
    return None


def _table_kind(sub: str, family: str | None) -> str | None:
    fam = canonical_family(family)
    tables = [FAMILY_TABLES[fam]] if fam else list(FAMILY_TABLES.values())
    for table in tables:
        if sub in table:
            return table[sub]
    return None


def parse_name(name: str, family: str | None = None) -> tuple[int | None, str]:
    """Map a parameter name to ``(layer, kind)``.

    ``layer`` is the transformer block index (None for embeddings, lm_head and anything outside
    the blocks); ``kind`` is a canonical kind (see :data:`BLOCK_KINDS`), ``embedding``,
    ``lm_head`` or ``other`` — or, for block modules no table knows, the module's own name.
    ``family`` (a ``model_type`` such as ``"qwen2"``) selects one table; None tries them all.
    """
    parts = _module_path(name)
    if not parts:
        return None, "other"
    last = parts[-1]
    if any(p in _FOREIGN_TOWERS for p in parts):
        return None, "other"
    if last in _EMBEDDING_NAMES:
        return None, "embedding"
    if last in _LM_HEAD_NAMES or parts == ["output"]:
        return None, "lm_head"
    idx = _block_index(parts)
    if idx is None:
        return None, "other"
    layer = int(parts[idx])
    sub = ".".join(parts[idx + 1 :])
    if parts[idx - 1] == "blk" and sub in _GGUF_TABLE:
        return layer, _GGUF_TABLE[sub]
    kind = _table_kind(sub, family)
    if kind is None:
        if "embed" in last:
            return None, "embedding"
        kind = _ALIASES.get(last, last)
    return layer, kind


def detect_family(config: dict | None, names: Iterable[str]) -> str:
    """Family of a checkpoint: config.json ``model_type`` (or ``architectures``) when present,
    else guessed from the parameter names; ``"unknown"`` when nothing matches."""
    config = config or {}
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type:
        return model_type.lower()
    for arch in config.get("architectures") or []:
        low = str(arch).lower()
        for fam in ("gpt2", "bert", "phi3", "llama", "mistral", "qwen2", "gemma"):
            if low.startswith(fam):
                return fam
    names = list(names)
    joined = "\n".join(names)
    if ".attn.c_attn" in joined or re.search(r"(^|\.)h\.\d+\.mlp\.c_fc", joined):
        return "gpt2"
    if ".attention.self.query" in joined:
        return "bert"
    if ".self_attn.qkv_proj" in joined or ".mlp.gate_up_proj" in joined:
        return "phi3"
    if ".self_attn.q_proj" in joined and ".mlp.down_proj" in joined:
        return "llama"
    return "unknown"


def is_conv1d(name: str, family: str | None) -> bool:
    """True when ``name`` is a GPT-2 ``Conv1D`` weight, stored (in, out) and to be transposed."""
    if family is None or family.lower() not in CONV1D_FAMILIES:
        return False
    parts = _module_path(name)
    idx = _block_index(parts)
    if idx is None or not name.endswith(".weight"):
        return False
    return ".".join(parts[idx + 1 :]) in _GPT2_TABLE


# --- GGUF (llama.cpp) names → Hugging Face names -------------------------------------------

_GGUF_HF_TEMPLATES: dict[str, dict[str, str]] = {
    "llama": {
        "attn_q": "model.layers.{n}.self_attn.q_proj.weight",
        "attn_k": "model.layers.{n}.self_attn.k_proj.weight",
        "attn_v": "model.layers.{n}.self_attn.v_proj.weight",
        "attn_output": "model.layers.{n}.self_attn.o_proj.weight",
        "attn_qkv": "model.layers.{n}.self_attn.qkv_proj.weight",
        "ffn_gate": "model.layers.{n}.mlp.gate_proj.weight",
        "ffn_up": "model.layers.{n}.mlp.up_proj.weight",
        "ffn_gate_up": "model.layers.{n}.mlp.gate_up_proj.weight",
        "ffn_down": "model.layers.{n}.mlp.down_proj.weight",
        "token_embd": "model.embed_tokens.weight",
        "output": "lm_head.weight",
    },
    "gpt2": {
        "attn_qkv": "transformer.h.{n}.attn.c_attn.weight",
        "attn_output": "transformer.h.{n}.attn.c_proj.weight",
        "ffn_up": "transformer.h.{n}.mlp.c_fc.weight",
        "ffn_down": "transformer.h.{n}.mlp.c_proj.weight",
        "token_embd": "transformer.wte.weight",
        "position_embd": "transformer.wpe.weight",
        "output": "lm_head.weight",
    },
    "bert": {
        "attn_q": "encoder.layer.{n}.attention.self.query.weight",
        "attn_k": "encoder.layer.{n}.attention.self.key.weight",
        "attn_v": "encoder.layer.{n}.attention.self.value.weight",
        "attn_output": "encoder.layer.{n}.attention.output.dense.weight",
        "ffn_up": "encoder.layer.{n}.intermediate.dense.weight",
        "ffn_down": "encoder.layer.{n}.output.dense.weight",
        "token_embd": "embeddings.word_embeddings.weight",
        "position_embd": "embeddings.position_embeddings.weight",
        "token_types": "embeddings.token_type_embeddings.weight",
    },
}
_GGUF_NON_BLOCK_KINDS = {
    "token_embd": "embedding",
    "position_embd": "embedding",
    "token_types": "embedding",
    "output": "lm_head",
}


def gguf_to_hf(
    stored_name: str, arch: str, *, fused_gate_up: bool = False
) -> tuple[str, int | None, str]:
    """Map a GGUF tensor name (``blk.3.attn_q.weight``) to ``(hf_name, layer, kind)``.

    ``fused_gate_up`` marks an ``ffn_up`` that holds gate and up stacked (Phi-3 style).
    Names without an HF equivalent keep the GGUF name and get a generic layer/kind.
    """
    templates = _GGUF_HF_TEMPLATES.get(arch, _GGUF_HF_TEMPLATES["llama"])
    parts = _module_path(stored_name)
    suffix = stored_name.rsplit(".", 1)[-1] if stored_name.endswith((".weight", ".bias")) else ""
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
        layer, module = int(parts[1]), parts[2]
        if module == "ffn_up" and fused_gate_up:
            module = "ffn_gate_up"
        kind = "gate_up" if module == "ffn_gate_up" else _GGUF_TABLE.get(module)
        template = templates.get(module)
        if kind is not None and template is not None and suffix == "weight":
            return template.format(n=layer), layer, kind
        return stored_name, layer, kind or module
    if len(parts) == 1 and parts[0] in _GGUF_NON_BLOCK_KINDS:
        template = templates.get(parts[0])
        kind = _GGUF_NON_BLOCK_KINDS[parts[0]]
        if template is not None and suffix == "weight":
            return template, None, kind
        return stored_name, None, kind
    layer, kind = parse_name(stored_name)
    return stored_name, layer, kind
