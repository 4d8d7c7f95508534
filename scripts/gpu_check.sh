#!/usr/bin/env bash
# GPU check on a CUDA machine: the GPU tests, a default-grid sweep with its report and inference
# block, and `make bench` throughput + eval parts, each under its own time limit; logs and
# reports go to $OUT (default gpu-check/). Runs in the repo root with a python that has CUDA torch.
#
#   OUT=/tmp/gpu bash scripts/gpu_check.sh            # on a machine with the project installed
#
# Offline machines: a bundle of the project's other dependencies (.gpu/site.tar.xz, Python 3.12)
# is unpacked onto PYTHONPATH when present. The packaged SmolLM2 GGUF is too large to carry, so
# the model is SmolLM2-135M's architecture and tokenizer (.gpu/smol/) with random weights: memory,
# time, tokens/s and MFU are those of the real model; accuracy is meaningless.
set -uo pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false SWEEP_CACHE=/tmp/sweep-cache
PY=${PY:-python3}
if ! $PY -c "import mlflow, hydra, optuna" 2>/dev/null && [ -f .gpu/site.tar.xz ]; then
  mkdir -p /tmp/site && tar -C /tmp/site -xJf .gpu/site.tar.xz
  export PYTHONPATH=/tmp/site:$PWD
fi
step() { echo "=== $1 ($(date +%T))"; }

step environment
{ nvidia-smi; $PY -c "import torch, transformers, peft, bitsandbytes; print(torch.__version__, torch.cuda.get_device_name(), transformers.__version__, peft.__version__, bitsandbytes.__version__)"; } >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | tail -3

MODEL=/tmp/smollm2-random
$PY - "$MODEL" <<'EOF'
import shutil, sys, torch
from pathlib import Path
from transformers import AutoConfig, AutoModelForCausalLM
src, out = Path(".gpu/smol"), Path(sys.argv[1])
if not (out / "model.safetensors").exists():
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src)).save_pretrained(out)
    for f in src.iterdir():
        if f.name != "config.json":
            shutil.copy(f, out / f.name)
print("model", out, sorted(p.name for p in out.iterdir()))
EOF
read -r -a EXTRA <<<"${EXTRA:-}"   # more overrides, e.g. EXTRA="train.steps=4" for a dry run
M=(model=hf "model.name_or_path=$MODEL" "${EXTRA[@]}")

PARTS=${PARTS:-savers probe sweep inference tests bench speed1b mfu realshape cudatests}   # which parts to run
has() { [[ " $PARTS " == *" $1 "* ]]; }


has sweep && step "default sweep on the GPU" && timeout ${SWEEP_S:-120} $PY -m sweep run sweep=default "${M[@]}" experiment=gpu_default 2>&1 | tee "$OUT/sweep.log" | grep -v "^train\|it/s\]" | tail -25
has sweep && { [ -f reports/gpu_default/report.md ] || timeout 30 $PY -m sweep report gpu_default >/dev/null 2>&1; }
has inference && timeout 45 $PY -m sweep inference gpu_default 2>&1 | tail -5

has tests && step "gpu tests" && timeout ${TESTS_S:-120} $PY -m pytest -q -m gpu tests/test_gpu.py tests/trial/test_measure.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.log" | tail -15

# make bench, one part at a time (each keeps the parts already written). The sweep part gives the
# GPU rows of issue 17: sweep wall harness / peer (<= 1.0) and the per-trial fixed cost (<= 10%).
for part in ${BENCH_ONLY:-eval throughput sweep}; do
  has bench && step "bench: $part" && timeout ${BENCH_S:-300} $PY -m sweep.bench ${BENCH_ARGS:---sweep-rounds 1} --only "$part" --out reports/bench-gpu "${M[@]}" 2>&1 | tee -a "$OUT/bench.log" | grep "^\[bench\]\|Error" | tail -20
done

# Issue 17's GPU benchmark at a real shape: random-weight Llama-3.2-1B, bf16-mixed, batch 8 x 1024;
# tokens/s, MFU and peak VRAM of full FT, LoRA r=16, QLoRA r=16 against the bare loop and TRL's
# SFTTrainer in one run (make bench's throughput and sft parts), to $OUT/bench-1b/harness.md.
has speed1b && step "1B shape: harness vs bare loop vs SFTTrainer" && timeout ${SPEED_S:-420} $PY -m sweep.bench.real_shape --speed --model llama3_2_1b --seq 1024 --batch 8 --steps ${SPEED_STEPS:-12} --repeats 1 --out "$OUT/bench-1b" 2>&1 | tee "$OUT/speed-1b.log" | grep "^\[bench\]\|rror" | tail -20

# MFU where the GPU has work to do: batch 16 x 512 tokens (long prompts, short answers)
if has mfu; then
  step "MFU at batch 16 x 512 tokens"
  $PY - <<'EOF'
import json, random
rng = random.Random(0)
words = "the of and to in is was for on that with as by at from it his an were are which this".split()
with open("/tmp/long.jsonl", "w") as f:
    for _ in range(400):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        filler = " ".join(rng.choice(words) for _ in range(520))
        f.write(json.dumps({"prompt": f"{filler}\nWhat is {a} + {b}?", "answer": str(a + b)}) + "\n")
EOF
  for m in full lora qlora; do
    timeout ${MFU_S:-40} $PY -m sweep trial "method=$m" "${M[@]}" dataset=file dataset.path=/tmp/long.jsonl \
      train.batch_size=16 train.max_seq_len=512 train.steps=20 eval.size=4 eval.base=false experiment=gpu_mfu \
      2>&1 | tee -a "$OUT/mfu.log" | grep "trial \|^speed\|^memory\|rror"
  done
fi

# Real-size memory (issue 13): random-weight Llama-2-7B shape, batch 1 x 512, full FT (8-bit AdamW,
# checkpointing; bf16-mixed and pure bf16), LoRA r=16 on a bf16 base, QLoRA r=16: measured peak
# VRAM vs planner vs the published ranges. About 3-4 minutes on an H200 (most of it writing and
# loading the 13 GB model).
has realshape && step "real-shape memory (llama2_7b, random weights)" && timeout ${REAL_S:-300} $PY -m sweep.bench.real_shape --out "$OUT" 2>&1 | tee "$OUT/real-shape.log" | grep -v "^train\|it/s\]" | tail -20

# Issue 29: each memory saver off and on at a random-weight 1B shape, batch 2 x 2048: NVML and
# allocator peaks against the plan (within 10%), the paged states outside the allocator, tokens/s.
has savers && step "memory savers (llama3_2_1b, 2 x 2048)" && timeout ${SAVERS_S:-300} $PY -m sweep.bench.real_shape --savers --model llama3_2_1b --seq 2048 --batch 2 --out "$OUT" 2>&1 | tee "$OUT/savers.log" | grep -v "^train\|it/s\]" | tail -12

# Issue 30: make probe on this GPU at two shapes, SmolLM2-135M's and a random-weight Llama-3.2-1B:
# each prints the A100-derived prediction ("time ratio": measured / predicted before) and writes
# the rates it fitted (optimizer and dequantization efficiency, MFU, per-layer latency).
if has probe; then
  for shape in smol llama3_2_1b; do
    step "make probe: $shape"
    if [ "$shape" = smol ]; then args=("${M[@]}"); else args=("model=$shape" "${EXTRA[@]}"); fi
    timeout ${PROBE_S:-240} $PY -m sweep probe "${args[@]}" 2>&1 | tee "$OUT/probe-$shape.log" | grep -v "^train\|it/s\]" | tail -16
    cp "$SWEEP_CACHE/calibration.yaml" "$OUT/probe-$shape-calibration.yaml" 2>/dev/null
  done
fi

has cudatests && step "trial and adapter tests on the GPU" && timeout 90 $PY -m pytest -q tests/trial/test_run.py tests/adapters/test_trained.py -p no:cacheprovider 2>&1 | tee "$OUT/cuda-tests.log" | tail -8

step done
tar -czf "$OUT/reports.tar.gz" reports/gpu_default reports/bench-gpu outputs/gpu_*/*/*/result.json 2>/dev/null
ls -la "$OUT"
