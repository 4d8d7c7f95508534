"""Model architectures: the numbers the planner computes from, without weights or a GPU.

    python -c "from sweep.planning.arch import load_arch; print(load_arch('llama3_8b'))"

An `Arch` comes from a model config the way a trial reads it (conf/model/<name>.yaml's `arch`
block, a built-in, the tiny model's settings) or from a hub id or local directory's config.json
(only that file is read; offline, one line says so).
"""

from __future__ import annotations

import difflib
import math
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweep.planning.recipe import LINEARS, Recipe
from sweep.settings.compose import CONF_DIR, ConfigError, one_line
from sweep.settings.schema import ModelConfig

TINY_VOCAB = 102  # sweep.trial.models.char_tokenizer(): 5 specials + 97 printable ASCII characters


@dataclass(frozen=True)
class Arch:
    """A Llama-style decoder: what the planner needs to know about a model."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    tie_embeddings: bool = False
    head_dim: int | None = None  # None: hidden // heads

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def linears(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of the seven linear layers of one block."""
        h, i = self.hidden, self.intermediate
        q, kv = self.heads * self.dim, self.kv_heads * self.dim
        shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
        return [(name, n_in, n_out) for name, (n_in, n_out) in zip(LINEARS, shapes, strict=True)]


# Built-in models whose conf/model/ yaml has no arch block (their weights ship or are built here).
BUILTIN = {
    "smollm2_135m": Arch(49152, 576, 1536, 30, 9, 3, tie_embeddings=True),
}


def arch_for_model(model: ModelConfig) -> Arch:
    """The architecture a trial's model config describes (arch block, built-in, tiny, or the
    hub/local config.json); no weights needed."""
    if model.arch is not None:
        return Arch(**asdict(model.arch))
    if model.source == "tiny":
        t = model.tiny
        return Arch(TINY_VOCAB, t.hidden, t.intermediate, t.layers, t.heads, t.heads, True)
    if model.source == "packaged" and model.name in BUILTIN:
        return BUILTIN[model.name]
    if not model.name_or_path:
        raise ConfigError(f"model={model.name}: no arch block and no model.name_or_path to read")
    return arch_from_hub(str(model.name_or_path))


def model_options() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if p.stem != "hf")


def load_arch(name: str) -> Arch:
    """A conf/model/ name (read as the trial reads it) or else a hub id / local directory."""
    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        return arch_from_hub(name)
    node = OmegaConf.load(path)
    if OmegaConf.is_missing(node, "name_or_path") and node.get("arch") is None:
        raise ConfigError(
            f"model={name} has no arch block; plan a hub id: make plan MODEL=<hub id>"
        )
    try:
        model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), node))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"model={name}: bad model config ({one_line(exc)})") from None
    return arch_for_model(model)  # type: ignore[arg-type]


def arch_from_hub(name_or_path: str) -> Arch:
    """Read only the model's config.json (local directory, cache, hub); one-line error offline."""
    hint = difflib.get_close_matches(name_or_path, model_options(), n=1)
    unknown = (
        f"model {name_or_path!r}: not in conf/model/{f' (did you mean {hint[0]}?)' if hint else ''}"
    )
    shipped = f"shipped: {', '.join(model_options())}"
    if "/" not in name_or_path and not Path(name_or_path).is_dir():
        raise ConfigError(f"{unknown}, nor a hub id (org/name) or local directory; {shipped}")
    try:
        cfg = auto_config(name_or_path)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"{unknown} and its config could not be read: {first}; {shipped}"
        ) from None
    return arch_from_hf_config(cfg, name_or_path)


def auto_config(name_or_path: str) -> Any:
    """transformers.AutoConfig, from a local directory or the cache first; the hub only when it
    answers (no minute of retries offline)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path, local_files_only=True)
    except OSError:
        pass
    unreachable = hub_unreachable()
    if unreachable:
        raise OSError(unreachable)
    return AutoConfig.from_pretrained(name_or_path)


def hub_unreachable() -> str | None:
    """None when the Hugging Face hub answers on port 443 within 3 s, else why not."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return f"no network: cannot reach {host} (offline?)"
    return None


def check_hub_model(name_or_path: str) -> None:
    """One line when a hub id is neither in the local cache nor downloadable (offline)."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        return
    unreachable = hub_unreachable()
    if unreachable:
        raise ConfigError(
            f"model.name_or_path={name_or_path!r}: not in the Hugging Face cache and {unreachable}; "
            "download it where there is network (it is cached) or give a local directory"
        )


def arch_from_hf_config(cfg: Any, name: str = "model") -> Arch:
    c = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    if getattr(c, "num_local_experts", None) or getattr(c, "num_experts", None):
        raise ConfigError(f"model {name!r}: mixture-of-experts models are not modelled by plan")
    try:
        heads = int(c.num_attention_heads)
        head_dim = getattr(c, "head_dim", None)
        return Arch(
            vocab=int(c.vocab_size),
            hidden=int(c.hidden_size),
            intermediate=int(c.intermediate_size),
            layers=int(c.num_hidden_layers),
            heads=heads,
            kv_heads=int(getattr(c, "num_key_value_heads", None) or heads),
            tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
            head_dim=None if head_dim in (None, c.hidden_size // heads) else int(head_dim),
        )
    except (AttributeError, TypeError) as exc:
        raise ConfigError(f"model {name!r}: not a Llama-style decoder config ({exc})") from None


# ---------------------------------------------------------------- parameters and FLOPs


def linear_params(arch: Arch) -> int:
    """Weights of the seven linear layers of every block (what QLoRA quantizes)."""
    return arch.layers * sum(i * o for _, i, o in arch.linears())


def other_params(arch: Arch) -> int:
    """Embeddings, lm_head (unless tied) and the RMSNorm weights (2 per block + final)."""
    heads = 1 if arch.tie_embeddings else 2
    return heads * arch.vocab * arch.hidden + (2 * arch.layers + 1) * arch.hidden


def total_params(arch: Arch) -> int:
    return linear_params(arch) + other_params(arch)


Shape = tuple[int, ...]


def lora_shapes(arch: Arch, r: int, targets: tuple[str, ...] = LINEARS) -> list[Shape]:
    """Every LoRA tensor: A (r x in) and B (out x r) per targeted linear of every block."""
    per_block = [s for name, i, o in arch.linears() if name in targets for s in ((r, i), (o, r))]
    return per_block * arch.layers


def full_shapes(arch: Arch) -> list[Shape]:
    """Every parameter tensor of the base model (torch's (out, in) for linears)."""
    h, v = arch.hidden, arch.vocab
    block: list[Shape] = [(o, i) for _, i, o in arch.linears()] + [(h,), (h,)]
    embeds: list[Shape] = [(v, h)] * (1 if arch.tie_embeddings else 2)
    return embeds + block * arch.layers + [(h,)]


def trainable_shapes(arch: Arch, rec: Recipe) -> list[Shape]:
    """Every trainable tensor: the whole model, or the recipe's adapters."""
    return full_shapes(arch) if rec.kind == "full" else lora_shapes(arch, rec.r, rec.targets)


def lora_tensors(arch: Arch, r: int, targets: tuple[str, ...] = LINEARS) -> list[int]:
    """Element counts of every LoRA tensor (`lora_shapes`)."""
    return [math.prod(s) for s in lora_shapes(arch, r, targets)]


def trainable_tensors(arch: Arch, rec: Recipe) -> list[int]:
    """Element counts of every trainable tensor (`trainable_shapes`)."""
    return [math.prod(s) for s in trainable_shapes(arch, rec)]


def train_flops_per_token(
    arch: Arch, rec: Recipe, seq_len: int, logits_share: float = 1.0
) -> float:
    """Model FLOPs of one training token, matmuls only (PaLM appendix B): 2 per weight of every
    linear layer and the lm_head in the forward, as many again for the input gradients, 2 per
    trainable weight for the weight gradients (full: all of them, so 6N; LoRA/QLoRA: the
    adapters, so 4N + 6 x adapters), and 12 x layers x seq_len x query width for attention.
    The lm_head counts on the share of positions that have logits (train.loss_logits)."""
    matmul = linear_params(arch) + arch.vocab * arch.hidden * logits_share
    full = rec.kind == "full"
    adapters = 0 if full else sum(trainable_tensors(arch, rec))
    weight_grads = matmul if full else adapters
    attention = 12 * arch.layers * seq_len * arch.heads * arch.dim
    return 4 * (matmul + adapters) + 2 * weight_grads + attention


def llama_config(arch: Arch, **extra: Any) -> Any:
    """A transformers LlamaConfig of this architecture (a random-weight model of a real shape:
    the memory and time are the real model's, the answers are not)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=arch.vocab,
        hidden_size=arch.hidden,
        intermediate_size=arch.intermediate,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads,
        head_dim=arch.dim,
        tie_word_embeddings=arch.tie_embeddings,
        **extra,
    )
