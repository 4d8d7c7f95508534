"""Adapters as first-class outputs: load a trial's adapter on its base, merge it, generate, export.

    python -m sweep generate outputs/default/trials/0000-lora_r_16 "What is 2 + 3?" [--merged]
    python -m sweep export 0000-lora_r_16 exported/lora16    # merged standalone model (safetensors)

A trial is named by its directory, a fragment of its directory name or label under
outputs/*/trials or outputs/*/single, or its MLflow run id (`find_trial`). The base model is
loaded exactly as the trial loaded it (its config, precision and quantization) and the adapter is
applied on top with PEFT, either kept separate or merged into the weights (`merge_and_unload`).

QLoRA: the separate model is the trial's own: the 4-bit NF4 base plus the adapter. Merging needs
float weights, so the merged model is the *dequantized* base (the NF4 weights the adapter was
trained against, expanded to the trial's weight dtype: float32 unless train.precision=bf16) with
the adapter folded in. It computes what the 4-bit model computes, up to rounding and the 4-bit
kernels, and is as large as an unquantized model. Full fine-tuning saved a whole checkpoint,
which is loaded directly: there is nothing to merge.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sweep import data, evaluate, methods, models
from sweep.config import Config, ConfigError, as_dict, to_config

ADAPTER = "adapter"
RUN_ID = re.compile(r"[0-9a-f]{32}")  # an MLflow run id


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


# ---- finding a trial ------------------------------------------------------------------------


def find_trial(run: str | Path, outputs: str | Path = "outputs") -> Path:
    """Trial directory for RUN: a path, a name/label fragment under outputs/, or an MLflow run id."""
    text, outputs = str(run), Path(outputs)
    path = Path(text).expanduser()
    if path.is_dir():
        return path.parent if path.name == ADAPTER else path
    matches = _local_matches(text, outputs)
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(str(m) for m in matches[:6]) + (" ..." if len(matches) > 6 else "")
        raise ConfigError(f"{text!r} matches {len(matches)} trials ({names}); pass one directory")
    is_run_id = RUN_ID.fullmatch(text) is not None
    found = _from_mlflow(text, outputs) if is_run_id else None
    if found is not None:
        return found
    from sweep.tracking import uri

    mlflow = f"no MLflow run with that id in {uri()}" if is_run_id else "not an MLflow run id"
    raise ConfigError(
        f"no trial {text!r}: not a directory, no trial under {outputs}/*/trials or "
        f"{outputs}/*/single whose name or label contains it, and {mlflow}"
    )


def _trial_dirs(outputs: Path) -> list[Path]:
    dirs = sorted(outputs.glob("*/trials/*")) + sorted(outputs.glob("*/single/*"))
    return [d for d in dirs if d.is_dir()]


def _label(trial_dir: Path) -> str:
    try:
        return str(json.loads((trial_dir / "result.json").read_text())["run"].get("label", ""))
    except (OSError, ValueError, KeyError):
        return ""


def _local_matches(text: str, outputs: Path) -> list[Path]:
    """Trial dirs matching `text`, closest kind of match first ('lora r=16' is not 'qlora r=16')."""
    dirs = _trial_dirs(outputs)
    labels = {d: _label(d) for d in dirs}
    tiers = (
        lambda d: d.name == text,
        lambda d: labels[d] == text,
        lambda d: d.name.partition("-")[2] == text,  # the label's slug in <NNNN>-<slug>
        lambda d: text in str(d.relative_to(outputs)) or text in labels[d],
    )
    for matches in ([d for d in dirs if tier(d)] for tier in tiers):
        if matches:
            return matches
    return []


def _from_mlflow(run_id: str, outputs: Path) -> Path | None:
    """The local trial dir of an MLflow trial run, else a temp dir rebuilt from its artifacts."""
    from mlflow.exceptions import MlflowException

    from sweep.tracking import client

    c = client()
    try:
        c.get_run(run_id)
    except MlflowException:
        return None
    tmp = Path(tempfile.mkdtemp(prefix=f"sweep-run-{run_id[:8]}-"))
    try:
        c.download_artifacts(run_id, "result.json", str(tmp))
    except (MlflowException, OSError):
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"MLflow run {run_id} has no result.json (not a trial run)") from None
    text = (tmp / "result.json").read_text()
    record = json.loads(text)
    for d in _trial_dirs(outputs):  # the same record on disk: use that dir (and its adapter)
        if (d / "result.json").is_file() and (d / "result.json").read_text() == text:
            shutil.rmtree(tmp, ignore_errors=True)
            return d
    if record["run"].get("method") == "full":
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(
            f"MLflow run {run_id} is full fine-tuning: its checkpoint is not logged to MLflow, "
            f"only kept in its trial dir, and no trial under {outputs}/ has this record"
        )
    (tmp / "config.json").write_text(json.dumps(record["run"]["config"], indent=2))
    # No adapter logged (full FT checkpoints stay on disk): adapter_dir() says so.
    with contextlib.suppress(MlflowException, OSError):
        c.download_artifacts(run_id, ADAPTER, str(tmp))
    return tmp


# ---- loading --------------------------------------------------------------------------------


def trial_config(trial_dir: Path, overrides: Sequence[str] = ()) -> Config:
    """The trial's resolved config (config.json, else the record's run block), plus dotted overrides."""
    if (trial_dir / "config.json").is_file():
        raw = json.loads((trial_dir / "config.json").read_text())
    elif (trial_dir / "result.json").is_file():
        raw = json.loads((trial_dir / "result.json").read_text())["run"]["config"]
    else:
        raise ConfigError(f"{trial_dir}: no config.json or result.json; not a trial directory")
    if overrides:
        from omegaconf import OmegaConf

        raw = OmegaConf.merge(OmegaConf.create(raw), OmegaConf.from_dotlist(list(overrides)))
    return to_config(raw)


def adapter_dir(trial_dir: Path, full: bool = False) -> Path:
    """`<trial>/adapter` (a full checkpoint when `full`), or a one-line error saying why not."""
    d = trial_dir / ADAPTER
    if (d / ("config.json" if full else "adapter_config.json")).is_file():
        return d
    why = ""
    try:
        train = json.loads((trial_dir / "result.json").read_text())["train"]
        error = str(train.get("error") or "").strip().splitlines()
        why = f" (trial status {train.get('status')}{': ' + error[0][:160] if error else ''})"
    except (OSError, ValueError, KeyError):
        pass
    raise ConfigError(f"{trial_dir}: no adapter saved in {d}{why}")


def _clock() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def load_base(cfg: Config, quantized: bool) -> tuple[Any, Any, str]:
    """(model, tokenizer, base path) loaded as the trial did; `quantized`: the QLoRA 4-bit base."""
    path = models.resolve(cfg.model, cfg.cache_dir)
    tok = models.load_tokenizer(path, cfg.model.trust_remote_code)
    kwargs = methods.load_kwargs(cfg.method, cfg.train.precision) if quantized else {}
    dtype = methods.dtype_for(cfg.train.precision)
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
    trial_dir = find_trial(run)
    cfg = trial_config(trial_dir, overrides)
    adapter = adapter_dir(trial_dir, full=cfg.method.name == "full")
    start = _clock()
    if cfg.method.name == "full":
        base = models.resolve(cfg.model, cfg.cache_dir)
        tok = models.load_tokenizer(base, cfg.model.trust_remote_code)
        dtype = methods.dtype_for(cfg.train.precision)
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
    return Loaded(model, tok, cfg, trial_dir, merged, _clock() - start, weights)


def load_adapters(runs: Sequence[str | Path], overrides: Sequence[str] = ()) -> Loaded:
    """Several trials' adapters on one base (loaded once); the first is active.

    All must share the base: model, quantization and precision. Switch with `switch()`.
    """
    if not runs:
        raise ConfigError("load_adapters needs at least one trial")
    dirs = [find_trial(r) for r in runs]
    cfgs = [trial_config(d, overrides) for d in dirs]
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
    start = _clock()
    model, tok, path = load_base(cfgs[0], quantized=cfgs[0].method.quant is not None)
    for d, name in zip(dirs, names, strict=True):
        model = _attach(model, adapter_dir(d), path, name)
    model.set_adapter(names[0])
    model.eval()
    weights = "4-bit" if cfgs[0].method.quant is not None else "float"
    return Loaded(model, tok, cfgs[0], dirs[0], False, _clock() - start, weights, names)


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
    start = _clock()
    loaded.model.set_adapter(name)
    loaded.model.eval()
    return _clock() - start


# ---- using it ---------------------------------------------------------------------------------


def answers(loaded: Loaded, prompts: Sequence[str], max_new_tokens: int = 64) -> list[str]:
    """Greedy answers through the model's chat template (and the trial's system prompt)."""
    sp = loaded.cfg.dataset.system_prompt
    ids = [data.prompt_ids(loaded.tok, p, sp) for p in prompts]
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
        ids = torch.tensor([data.prompt_ids(loaded.tok, p, sp)], device=device)
        out.append(loaded.model(input_ids=ids).logits[0].float().cpu())
    return out


def max_abs_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def export(run: str | Path, out_dir: str | Path, overrides: Sequence[str] = ()) -> Path:
    """A merged standalone model + tokenizer that plain AutoModelForCausalLM loads (safetensors)."""
    loaded = load(run, merged=True, overrides=overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(out)
    loaded.tok.save_pretrained(out)
    record = _record_run(loaded.trial_dir)
    provenance = {
        "trial_dir": str(loaded.trial_dir.resolve()),
        "label": record.get("label"),
        "method": loaded.cfg.method.name,
        "config_hash": record.get("config_hash"),
        "base_weights": loaded.base_weights,
        "dtype": str(loaded.model.dtype),
    }
    (out / "sweep_export.json").write_text(json.dumps(provenance, indent=2))
    return out


def _record_run(trial_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((trial_dir / "result.json").read_text())["run"]
    except (OSError, ValueError, KeyError):
        return {}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---- the inference block of a trial's record ------------------------------------------------


@torch.no_grad()
def tokens_per_s(
    loaded: Loaded, prompts: Sequence[str], new_tokens: int, repeats: int = 2
) -> float:
    """Greedy decoding speed at batch size 1, in generated tokens per second.

    Exactly `new_tokens` per prompt (end of turn ignored, so short answers do not turn it into a
    prefill benchmark); the best of `repeats` runs after a warm-up, since a busy machine only ever
    slows a run down.
    """
    model, tok, sp = loaded.model, loaded.tok, loaded.cfg.dataset.system_prompt
    device = next(model.parameters()).device
    ids = [torch.tensor([data.prompt_ids(tok, p, sp)], device=device) for p in prompts]

    def run(n: int) -> float:
        start = _clock()
        for x in ids:
            model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                use_cache=True,
            )
        return _clock() - start

    run(2)
    best = min(run(new_tokens) for _ in range(repeats))
    return len(ids) * new_tokens / best if best > 0 else float("nan")


def _measure(
    trial_dir: Path, merged: bool, prompts: list[str], max_new_tokens: int
) -> dict[str, Any]:
    """Load one way, measure, and let the model go (one model in memory at a time)."""
    loaded = load(trial_dir, merged=merged)
    out = {
        "load_s": loaded.load_s,
        "base": loaded.base_weights,
        "answers": answers(loaded, prompts, max_new_tokens),
        "tokens_per_s": tokens_per_s(loaded, prompts, max_new_tokens),
        "logits": logits(loaded, prompts),
    }
    del loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def inference_block(
    trial_dir: str | Path, prompts: Sequence[str], max_new_tokens: int = 16
) -> dict[str, Any]:
    """Adapter size, load time and generation speed separate vs merged, and their logit gap.

    Separate is the trial's own model (QLoRA: the 4-bit base); merged folds the adapter into the
    weights (QLoRA: into the dequantized base). Load times exclude one-time imports; tokens/s is
    greedy decoding at batch size 1, `max_new_tokens` per prompt (`tokens_per_s`); the answers
    are compared as generated (greedy, stopping at end of turn); the logit gap is over one
    unpadded forward pass per prompt. Raises ConfigError for a trial without an adapter.
    """
    import peft  # noqa: F401  (one-time import cost, seconds, is not load time)

    trial_dir, prompts = Path(trial_dir), list(prompts)
    if not prompts:
        raise ConfigError("inference_block needs at least one prompt")
    sep = _measure(trial_dir, False, prompts, max_new_tokens)
    mer = _measure(trial_dir, True, prompts, max_new_tokens)
    return {
        "adapter_bytes": dir_bytes(find_trial(trial_dir) / ADAPTER),
        "load_separate_s": sep["load_s"],
        "load_merged_s": mer["load_s"],
        "gen_tokens_per_s_separate": sep["tokens_per_s"],
        "gen_tokens_per_s_merged": mer["tokens_per_s"],
        "max_abs_logit_diff": max_abs_diff(sep["logits"], mer["logits"]),
        "same_greedy_answers": sep["answers"] == mer["answers"],
        "n_prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "separate_base": sep["base"],
        "merged_base": mer["base"],
    }


def inference_report(
    experiment: str,
    outputs: str | Path = "outputs",
    report_dir: str | Path = "reports",
    n_prompts: int = 3,
    max_new_tokens: int = 8,
) -> Path:
    """Inference block for every ok trial of a sweep -> reports/<experiment>/inference.{json,md}.

    Prompts are the first eval prompts the trial recorded. Also times switching between the
    sweep's LoRA adapters on one base. `make report` includes inference.md when it exists.
    """
    import pandas as pd

    rows, lora_dirs = [], []
    for trial_dir in sorted(Path(outputs, experiment, "trials").glob("*")):
        rec = _record_run(trial_dir) if (trial_dir / "result.json").exists() else {}
        result = json.loads((trial_dir / "result.json").read_text()) if rec else {}
        if result.get("train", {}).get("status") != "ok":
            continue
        prompts = [s["prompt"] for s in result["train"].get("samples", [])][:n_prompts] or [
            "2 + 2 ="
        ]
        print(
            f"[inference] {rec.get('label')}: separate vs merged on {len(prompts)} prompt(s)",
            flush=True,
        )
        rows.append(
            {"approach": rec.get("label"), **inference_block(trial_dir, prompts, max_new_tokens)}
        )
        if rec.get("method") == "lora":
            lora_dirs.append(trial_dir)
    if not rows:
        raise ConfigError(
            f"experiment {experiment!r}: no finished trials under {outputs}/{experiment}/trials"
        )
    switch_ms = None
    if len(lora_dirs) >= 2:
        loaded = load_adapters(lora_dirs)
        switch_ms = 1000 * max(switch(loaded, name) for name in reversed(loaded.adapters))
    out_dir = Path(report_dir, experiment)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "inference.json").write_text(
        json.dumps({"trials": rows, "switch_ms": switch_ms}, indent=2)
    )
    table = pd.DataFrame(rows)[
        [
            "approach",
            "adapter_bytes",
            "load_separate_s",
            "load_merged_s",
            "gen_tokens_per_s_separate",
            "gen_tokens_per_s_merged",
            "max_abs_logit_diff",
            "same_greedy_answers",
            "merged_base",
        ]
    ]
    lines = [
        "## Inference: adapter separate vs merged",
        "",
        table.to_markdown(index=False, floatfmt=".3g"),
        "",
        f"Greedy decoding at batch size 1, {max_new_tokens} new tokens per prompt. Load times "
        "exclude one-time imports. The logit gap is the largest absolute difference between "
        "the separate and merged model over the prompts (float rounding expected).",
        ""
        if switch_ms is None
        else f"Switching between {len(lora_dirs)} LoRA adapters loaded on one base: "
        f"{switch_ms:.1f} ms at most (PEFT set_adapter, no reload).",
        "",
    ]
    path = out_dir / "inference.md"
    path.write_text("\n".join(lines))
    return path
