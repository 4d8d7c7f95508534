"""Benchmark: peak memory of real-size fine-tuning on this GPU, measured against the planner and
the published ranges, on random-weight models built from real architectures (no download).

    python -m sweep.bench.real_shape                       # Llama-2-7B shape, batch 1 x 512
    python -m sweep.bench.real_shape --model llama3_8b --out reports/bench
    python -m sweep.bench.real_shape --speed --model llama3_2_1b --seq 1024   # reports/bench-llama3_2_1b/
    python -m sweep.bench.real_shape --savers --model llama3_2_1b --seq 2048 --batch 2   # savers.md

For each approach (full FT with 8-bit AdamW and gradient checkpointing, in bf16-mixed and in pure
bf16; LoRA r=16 on a 16-bit base; QLoRA r=16) it runs a short harness trial (a fresh process,
as a sweep runs it) on rows of about `--seq` tokens, and writes measured peak VRAM (NVML), the
allocator's peak and the planner's total beside the published range for a 7B (full FT 32-48 GB,
LoRA 12-16 GB, QLoRA 6-8 GB) to <out>/real_shape.md. The memory and time are the real model's;
the accuracy is not. On a CPU it runs the same path (useful only as a check of the script).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from sweep.cli.rates import rows
from sweep.launch.launch import launch
from sweep.planning.arch import llama_config, load_arch
from sweep.settings.compose import ConfigError, compose
from sweep.trial import models

PUBLISHED_GB = {"full": "32-48", "lora": "12-16", "qlora": "6-8"}  # 7B, batch 1 x 512 (seed)
APPROACHES = {
    "full 8-bit AdamW, bf16-mixed": ["method=full", "train.optimizer=adamw_8bit"],
    "full 8-bit AdamW, bf16": [
        "method=full",
        "train.optimizer=adamw_8bit",
        "train.precision=bf16",
    ],
    "lora r=16 (16-bit base)": ["method=lora", "method.r=16"],
    "qlora r=16": ["method=qlora", "method.r=16"],
}


def build(name: str, out: Path) -> Path:
    """A random-weight model of `name`'s architecture with the character tokenizer, saved."""
    arch = load_arch(name)
    tok = models.char_tokenizer()
    config = llama_config(
        arch,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    from transformers import LlamaForCausalLM

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    with torch.device(dev):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    if dev == "cuda":
        torch.cuda.empty_cache()
    return out


def run(name: str, seq: int, work: Path, steps: int = 3) -> list[dict[str, object]]:
    model_dir = build(name, work / "model")
    data = rows(work / "rows.jsonl", seq, 16)
    common = [
        "model=hf",
        f"model.name_or_path={model_dir}",
        f"model.name={name}-random",
        "dataset=file",
        f"dataset.path={data}",
        "train.batch_size=1",
        f"train.max_seq_len={seq}",
        f"train.steps={steps}",
        "train.measure_warmup_steps=1",
        "train.gradient_checkpointing=true",
        "eval.size=2",
        "eval.max_new_tokens=2",
        "eval.base=false",
        "eval.retention_size=0",
    ]
    out = []
    for label, overrides in APPROACHES.items():
        cfg = compose([*common, *overrides])
        result = launch(cfg, work / "trials" / label.replace(" ", "_"), 0)
        m = result.metrics
        kind = cfg.method.name
        out.append(
            {
                "approach": label,
                "status": result.status,
                "peak VRAM (GiB, NVML)": m.get("peak_vram_gib"),
                "allocator peak (GiB)": m.get("peak_alloc_gib"),
                "host peak (GiB)": m.get("train_peak_host_rss_gib"),
                "planner (GiB)": m.get("plan_total_gib"),
                "published 7B (GB)": PUBLISHED_GB[kind],
                "s/step": m.get("s_per_step_median"),
                "error": (result.train.get("error") or "")[:120],
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


def write(table: list[dict[str, object]], name: str, seq: int, out: Path) -> Path:
    import pandas as pd

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    text = (
        f"# Real-shape fine-tuning memory: {name} (random weights), batch 1 x {seq}, on {device}\n\n"
        + pd.DataFrame(table).to_markdown(index=False, floatfmt=".2f")
        + "\n\nGradient checkpointing on. Published ranges are for a 7B at batch 1 x 512 in 16-bit"
        " weights. Regenerate: `python -m sweep.bench.real_shape`.\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "real_shape.md"
    path.write_text(text)
    print(text)
    return path


# (saver, the approach it serves, its overrides off, on): issue 29's GPU check
SAVERS = [
    ("chunked loss", ["method=lora", "method.r=16"], ["train.loss_impl=full"],
     ["train.loss_impl=chunked"]),
    ("QLoRA compute-dtype embeddings", ["method=qlora", "method.r=16"],
     ["method.kbit_fp32=true"], ["method.kbit_fp32=false"]),
    ("optimizer in backward", ["method=full", "train.precision=bf16",
     "train.optimizer=paged_adamw_8bit", "train.max_grad_norm=0"],
     ["train.optimizer_in_backward=false"], ["train.optimizer_in_backward=true"]),
]  # fmt: skip


def savers(name: str, seq: int, batch: int, work: Path, out: Path, steps: int) -> int:
    """Each memory saver off and on at batch x seq (a fresh process each): NVML and allocator
    peaks against the plan, the paged states (NVML less the allocator's reserve: CUDA managed
    memory is outside it), tokens/s; to <out>/savers.md."""
    import pandas as pd

    model_dir = build(name, work / "model")
    data = rows(work / "rows.jsonl", seq, n=max(64, 4 * batch))
    common = ["model=hf", f"model.name_or_path={model_dir}", f"model.name={name}-random",
              "dataset=file", f"dataset.path={data}", f"train.batch_size={batch}",
              f"train.max_seq_len={seq}", f"train.steps={steps}", "train.measure_warmup_steps=2",
              "train.gradient_checkpointing=true", "eval.size=2", "eval.max_new_tokens=2",
              "eval.base=false", "eval.retention_size=0"]  # fmt: skip
    table = []
    for saver, approach, off, on in SAVERS:
        for state, extra in (("off", off), ("on", on)):
            cfg = compose([*common, *approach, *extra])
            label = f"{saver} {state}".replace(" ", "_")
            m = launch(cfg, work / "trials" / label, 0).metrics
            nvml, reserved = m.get("peak_vram_gib"), m.get("peak_reserved_gib")
            table.append({
                "saver": saver, "state": state,
                "NVML peak (GiB)": nvml, "allocator peak (GiB)": m.get("peak_alloc_gib"),
                "planned total (GiB)": m.get("plan_total_gib"),
                "NVML / plan": nvml / m["plan_total_gib"] if nvml and m.get("plan_total_gib") else None,
                "outside the allocator (GiB)": nvml - reserved if nvml and reserved else None,
                "tokens/s": m.get("train_tokens_per_s"),
            })  # fmt: skip
            print(json.dumps(table[-1]), flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    text = (f"# Memory savers at {name} (random weights), batch {batch} x {seq}, on {device}\n\n"
            + pd.DataFrame(table).to_markdown(index=False, floatfmt=".3g")
            + "\n\nTarget: NVML and allocator peaks within 10% of the plan. Regenerate: "
            "`python -m sweep.bench.real_shape --savers`.\n")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "savers.md").write_text(text)
    print(text)
    return 0


def speed(name: str, seq: int, batch: int, work: Path, out: Path, steps: int, repeats: int) -> int:
    """`make bench`'s throughput (harness vs bare loop) and sft (harness vs SFTTrainer) parts on
    a random-weight `name` at batch x seq tokens; their report goes to <out>/harness.md."""
    from sweep.bench.__main__ import main as bench

    model_dir = build(name, work / "model")
    data = rows(work / "rows.jsonl", seq, n=max(64, 4 * batch))
    overrides = [
        "model=hf",
        f"model.name_or_path={model_dir}",
        f"model.name={name}-random",
        "dataset=file",
        f"dataset.path={data}",
        f"train.batch_size={batch}",
        f"train.max_seq_len={seq}",
    ]
    args = ["--only", "throughput,sft", "--steps", str(steps), "--repeats", str(repeats)]
    return bench([*args, "--out", str(out), *overrides])


def main(argv: list[str]) -> int:
    from sweep.bench.__main__ import _positive  # an integer >= 1, else one clear line

    ap = argparse.ArgumentParser(prog="python -m sweep.bench.real_shape")
    ap.add_argument("--model", default="llama2_7b", help="a conf/model/ name with an arch")
    ap.add_argument("--seq", type=_positive, default=512)
    ap.add_argument("--steps", type=_positive, help="default 3, with --speed 12")
    ap.add_argument("--out", help="default reports/bench, with --speed reports/bench-<model>")
    ap.add_argument("--speed", action="store_true", help="tokens/s and MFU vs bare loop and TRL")
    ap.add_argument("--batch", type=_positive, default=8, help="--speed's batch size (default 8)")
    ap.add_argument("--repeats", type=_positive, default=2, help="--speed's rounds (default 2)")
    ap.add_argument("--savers", action="store_true", help="each memory saver off and on")
    args = ap.parse_args(argv)
    if args.savers:
        with tempfile.TemporaryDirectory(prefix="real_shape-") as tmp:
            return savers(args.model, args.seq, args.batch, Path(tmp), Path(args.out or
                          "reports/bench"), args.steps or 6)  # fmt: skip
    args.out = args.out or ("reports/bench-" + args.model if args.speed else "reports/bench")
    if args.speed:  # steps past the 2 warm-up steps the parts leave out
        steps = max(args.steps or 12, 3)
        with tempfile.TemporaryDirectory(prefix="real_shape-") as tmp:
            return speed(
                args.model, args.seq, args.batch, Path(tmp), Path(args.out), steps, args.repeats
            )
    with tempfile.TemporaryDirectory(prefix="real_shape-") as tmp:
        table = run(args.model, args.seq, Path(tmp), args.steps or 3)
    write(table, args.model, args.seq, Path(args.out))
    return 0 if all(r["status"] == "ok" for r in table) else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except ConfigError as exc:  # an unknown model or a bad override: one line, before any work
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
