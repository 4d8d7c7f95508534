"""Adapters as first-class outputs: load a trial's adapter on its base, merge it, generate, export.

    python -m sweep generate outputs/default/trials/0000-lora_r_16 "What is 2 + 3?" [--merged]
    python -m sweep export 0000-lora_r_16 exported/lora16    # merged standalone model (safetensors)

A trial is named by its directory, a fragment of its directory name or label under
outputs/*/trials or outputs/*/single, or its MLflow run id (`sweep.results.trials.find_trial`). The base
model is loaded exactly as the trial loaded it (its config, precision and quantization) and the
adapter is applied on top with PEFT, either kept separate or merged into the weights
(`merge_and_unload`). Several adapters of one sweep can share one base (`load_adapters`,
`switch`). `sweep/adapters/inference.py` times the model separate vs merged.

QLoRA: the separate model is the trial's own: the 4-bit NF4 base plus the adapter. Merging needs
float weights, so the merged model is the *dequantized* base (the NF4 weights the adapter was
trained against, expanded to the trial's weight dtype: float32 unless train.precision=bf16) with
the adapter folded in. It computes what the 4-bit model computes, up to rounding and the 4-bit
kernels, and is as large as an unquantized model. Full fine-tuning saved a whole checkpoint,
which is loaded directly: there is nothing to merge.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sweep.planning import recipe
from sweep.results import trials
from sweep.settings.compose import ConfigError, as_dict
from sweep.settings.schema import Config
from sweep.trial import batches, evaluate, methods, models


@dataclass
class Loaded:
    """A model ready for inference, with what it was built from."""

    model: Any
    tok: Any
    cfg: Config
    trial_dir: Path
    merged: bool
    load_s: float
    base_weights: str  # "4-bit" | "dequantized" | "float" | "full checkpoint"
    adapters: list[str] = field(default_factory=list)  # names, when several share the base


# ---- loading --------------------------------------------------------------------------------


def clock() -> float:
    """perf_counter after the device has finished its queued work (CUDA: synchronized)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def load_base(cfg: Config, quantized: bool) -> tuple[Any, Any, str]:
    """(model, tokenizer, base path) loaded as the trial did; `quantized`: the QLoRA 4-bit base."""
    path = models.resolve(cfg.model, cfg.cache_dir)
    tok = models.load_tokenizer(path, cfg.model.trust_remote_code)
    kwargs = methods.load_kwargs(cfg.method, cfg.train.precision) if quantized else {}
    dtype = methods.load_dtype(recipe.of(cfg))  # precision by role: LoRA's 16-bit base on a GPU
    model = models.load_model(path, dtype, cfg.model.trust_remote_code, **kwargs)
    if kwargs:  # the kernels the trial evaluated with (no CPU inference repacking)
        methods.keep_4bit_trainable(model)
    model.config.use_cache = True
    return model, tok, path


def dequantize(model: Any, cfg: Config) -> Any:
    """Replace the 4-bit linear layers by float ones holding the dequantized NF4 weights."""
    methods.keep_4bit_trainable(model)  # dequantizing repacked bytes would give garbage
    return model.dequantize(dtype=methods.dtype_for(cfg.train.precision))


def check_base(adapter: Path, base_path: str) -> None:
    """One-line error when adapter_config.json names another base model than `base_path`."""
    trained = json.loads((adapter / "adapter_config.json").read_text()).get(
        "base_model_name_or_path"
    )
    if trained and Path(str(trained)).name != Path(base_path).name:
        raise ConfigError(f"adapter {adapter} was trained on base {trained}, not {base_path}")


def _attach(model: Any, adapter: Path, base_path: str, name: str = "default") -> Any:
    """Apply (or add) an adapter; a shape mismatch becomes the one-line wrong-base error."""
    from peft import PeftModel

    check_base(adapter, base_path)
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(adapter), adapter_name=name)
            return model
        return PeftModel.from_pretrained(model, str(adapter), adapter_name=name)
    except RuntimeError as exc:
        if "size mismatch" not in str(exc):
            raise
        trained = json.loads((adapter / "adapter_config.json").read_text()).get(
            "base_model_name_or_path"
        )
        raise ConfigError(
            f"adapter {adapter} was trained on base {trained} (other shapes), not {base_path}"
        ) from None


def load(
    run: str | Path,
    merged: bool = False,
    dequantized: bool = False,
    overrides: Sequence[str] = (),
) -> Loaded:
    """A trial's model: base + adapter kept separate, or merged into the weights.

    dequantized: QLoRA only, put the separate adapter on the dequantized base (always so when
    merged). overrides: dotted keys on the trial's config, e.g. another base model.
    """
    trial_dir = trials.find_trial(run)
    cfg = trials.trial_config(trial_dir, overrides)
    adapter = trials.adapter_dir(trial_dir, full=cfg.method.name == "full")
    start = clock()
    if cfg.method.name == "full":
        base = models.resolve(cfg.model, cfg.cache_dir)
        tok = models.load_tokenizer(base, cfg.model.trust_remote_code)
        dtype = methods.load_dtype(recipe.of(cfg))
        model = models.load_model(str(adapter), dtype, cfg.model.trust_remote_code)
        model.config.use_cache = True
        weights = "full checkpoint"
    else:
        quant = cfg.method.quant is not None
        model, tok, path = load_base(cfg, quantized=quant)
        weights = "4-bit" if quant else "float"
        if quant and (merged or dequantized):
            model, weights = dequantize(model, cfg), "dequantized"
        model = _attach(model, adapter, path)
        if merged:
            model = model.merge_and_unload()
    model.eval()
    return Loaded(model, tok, cfg, trial_dir, merged, clock() - start, weights)


def load_adapters(runs: Sequence[str | Path], overrides: Sequence[str] = ()) -> Loaded:
    """Several trials' adapters on one base (loaded once); the first is active.

    All must share the base: model, quantization and precision. Switch with `switch()`.
    """
    if not runs:
        raise ConfigError("load_adapters needs at least one trial")
    dirs = [trials.find_trial(r) for r in runs]
    cfgs = [trials.trial_config(d, overrides) for d in dirs]
    base_key = _base_key(cfgs[0])
    for d, c in zip(dirs, cfgs, strict=True):
        if c.method.name == "full":
            raise ConfigError(f"{d}: full fine-tuning saved a checkpoint, not an adapter to switch")
        if _base_key(c) != base_key:
            raise ConfigError(
                f"{d}: another base than {dirs[0]} (model, quantization or precision differ); "
                "adapters on one base must share them"
            )
    names = adapter_names(dirs)
    start = clock()
    model, tok, path = load_base(cfgs[0], quantized=cfgs[0].method.quant is not None)
    for d, name in zip(dirs, names, strict=True):
        model = _attach(model, trials.adapter_dir(d), path, name)
    model.set_adapter(names[0])
    model.eval()
    weights = "4-bit" if cfgs[0].method.quant is not None else "float"
    return Loaded(model, tok, cfgs[0], dirs[0], False, clock() - start, weights, names)


def _base_key(cfg: Config) -> str:
    d = as_dict(cfg)
    return json.dumps([d["model"], d["method"]["quant"], cfg.train.precision], sort_keys=True)


def adapter_names(dirs: Sequence[Path]) -> list[str]:
    """Unique PEFT adapter names from trial dir names ('.' is not allowed in a module key)."""
    names: list[str] = []
    for d in dirs:
        name = re.sub(r"\W+", "_", d.name).strip("_") or "adapter"
        names.append(name if name not in names else f"{name}_{len(names)}")
    return names


def switch(loaded: Loaded, name: str) -> float:
    """Make adapter `name` the active one, without reloading; returns the seconds it took."""
    if name not in loaded.adapters:
        raise ConfigError(f"no adapter {name!r}; loaded: {', '.join(loaded.adapters)}")
    start = clock()
    loaded.model.set_adapter(name)
    loaded.model.eval()
    return clock() - start


# ---- using it ---------------------------------------------------------------------------------


def answers(loaded: Loaded, prompts: Sequence[str], max_new_tokens: int = 64) -> list[str]:
    """Greedy answers through the model's chat template (and the trial's system prompt)."""
    sp = loaded.cfg.dataset.system_prompt
    ids = [batches.prompt_ids(loaded.tok, p, sp) for p in prompts]
    texts = evaluate.generate(loaded.model, loaded.tok, ids, max_new_tokens, max(1, len(ids)))
    return [t.strip() for t in texts]


def generate(
    run: str | Path,
    prompt: str,
    merged: bool = False,
    max_new_tokens: int = 64,
    overrides: Sequence[str] = (),
) -> str:
    """One greedy answer from a trial's model (adapter separate, or merged)."""
    return answers(load(run, merged=merged, overrides=overrides), [prompt], max_new_tokens)[0]


@torch.no_grad()
def logits(loaded: Loaded, prompts: Sequence[str]) -> list[torch.Tensor]:
    """Float32 logits over each rendered prompt (one unpadded forward pass per prompt)."""
    sp = loaded.cfg.dataset.system_prompt
    device = next(loaded.model.parameters()).device
    out = []
    for p in prompts:
        ids = torch.tensor([batches.prompt_ids(loaded.tok, p, sp)], device=device)
        out.append(loaded.model(input_ids=ids).logits[0].float().cpu())
    return out


def max_abs_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """The largest absolute difference between paired tensors (e.g. two models' logits)."""
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def export(run: str | Path, out_dir: str | Path, overrides: Sequence[str] = ()) -> Path:
    """A merged standalone model + tokenizer that plain AutoModelForCausalLM loads (safetensors)."""
    loaded = load(run, merged=True, overrides=overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(out)
    loaded.tok.save_pretrained(out)
    rec = trials.read_record(loaded.trial_dir)
    run_block = rec.run if rec is not None else {}
    provenance = {
        "trial_dir": str(loaded.trial_dir.resolve()),
        "label": run_block.get("label"),
        "method": loaded.cfg.method.name,
        "config_hash": run_block.get("config_hash"),
        "base_weights": loaded.base_weights,
        "dtype": str(loaded.model.dtype),
    }
    (out / "sweep_export.json").write_text(json.dumps(provenance, indent=2))
    return out
