"""The time model checked on this machine, across model sizes: predicted vs measured step time.

    python -m sweep.bench.step_time          # part of make bench-plan

    python -m sweep.bench.step_time --from reports/bench/step_time.json   # refit a saved run

`make probe`'s fit (sweep.cli.rates.fit) on a random-weight model of SmolLM2-135M's shape:
full FT, LoRA r=16 and QLoRA r=16 at batches 2, 4 and 16 (MFU and half_tokens, least squares;
LoRA's and QLoRA's trials together, as they run the same matmuls),
with the optimizer's and 4-bit dequantization's share of the bandwidth from micro-benchmarks
and the per-layer and per-step latency from trials with next to no compute (a width-64 Llama,
1 and 4 layers, 1 and 16 rows of 64 tokens a step; sweep/cli/rates.py).
Without refitting, it then predicts points it never saw: the default grid (full FT, LoRA at
ranks 4, 16 and 64, QLoRA r=16) at the grid's batch of 8, and the three approaches on two other
sizes: tiny_llama (2 layers, 0.4M parameters) and a random-weight model of Qwen2.5-0.5B's shape
(24 layers; no download). Every point is a short harness trial on rows of 64 tokens.

Beside each prediction is the model this one replaced ("before"): the MFU fitted the same way
plus the step time at zero tokens as one constant per approach (`fixed_s`), which carried the
SmolLM2 optimizer's seconds to every other size.

Noise on a shared 2-core machine: one trial's step time moves 10-30% from run to run and drifts
over minutes, so the fit brackets the grid's batch, all trials run in ABBA rounds (the list,
then the list reversed), and each point's quickest run counts.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from sweep.cli import probe, rates
from sweep.cli.rates import Point
from sweep.planning import cost
from sweep.planning.arch import arch_for_model
from sweep.settings.compose import compose
from sweep.settings.errors import ConfigError
from sweep.settings.schema import GpuClass

CALIBRATE_AT = (2, 4, 16)
GRID = {  # the default grid's points, per approach
    "full": [[]],
    "lora": [["method.r=4"], ["method.r=16"], ["method.r=64"]],
    "qlora": [["method.r=16"]],
}
BATCH = 8  # conf/train/default.yaml
SIZES = {"tiny_llama": 8, "qwen2_5_0_5b": 2}  # other model shapes, each at its batch
BAND = 0.25
HEADING = "## Time model vs measured step time"
ROUNDS = 3  # ABBA rounds; each point's quickest run counts (noise only ever adds time)
SAVED = "step_time.json"  # beside plan.md: the run's trials, for `--from` (refit without rerunning)

Job = tuple[str, list[str], str, int]  # (key, overrides, approach, batch)


def jobs(overrides: list[str], work: Path) -> tuple[list[Job], list[Job], list[Job]]:
    """The fit's trials (latency ones included), the grid's and the other sizes'."""
    deep, short = probe.shape(overrides, work), rates.latency_overrides(work)
    fit = [(f"fit {a} b{b}", deep, a, b) for a in rates.APPROACHES for b in CALIBRATE_AT]
    fit += [(f"latency {a} {n} b{b}", [*overrides, *short[n]], a, b)
            for a in rates.APPROACHES for n in rates.LATENCY_LAYERS
            for b in rates.LATENCY_BATCHES]  # fmt: skip
    grid = [
        (f"grid {a} {' '.join(x)}", [*deep, *x], a, BATCH) for a, xs in GRID.items() for x in xs
    ]
    sizes = []
    for name, batch in SIZES.items():
        arch = arch_for_model(compose([*overrides, f"model={name}"]).model)
        over = [*overrides, *rates.shape_overrides(arch, work, name)]
        sizes += [(f"{name} {a}", over, a, batch) for a in rates.APPROACHES]
    return fit, grid, sizes


def measure(todo: list[Job], work: Path) -> dict[str, Point]:
    """Each job's quickest run over ROUNDS rounds, in ABBA order."""
    best: dict[str, Point] = {}
    for i in range(ROUNDS):
        for key, over, approach, batch in todo if i % 2 == 0 else todo[::-1]:
            print(f"[bench-plan] step time: {key} (round {i + 1}/{ROUNDS})", flush=True)
            p = rates.run_point(over, approach, batch, work)
            best[key] = min(best.get(key, p), p, key=lambda q: q.step_s)
    return best


def check(overrides: list[str], work: Path, saved: Path | None = None) -> pd.DataFrame:
    """Fit on the SmolLM2 shape, predict the grid and the other sizes, measured beside; the
    trials and micro-benchmarks are written to `saved` (JSON) for `refit`."""
    device = rates.this_device()
    precision = compose(overrides).train.precision
    fit_jobs, grid_jobs, size_jobs = jobs(overrides, work)
    best = measure([*fit_jobs, *grid_jobs, *size_jobs], work)
    run = {
        "device": asdict(device),
        "precision": precision,
        "shares": rates.micro(device, precision),
        "predict": [key for key, *_ in [*grid_jobs, *size_jobs]],
        "points": best,
    }
    if saved is not None:
        points = {key: asdict(p) for key, p in best.items()}
        saved.write_text(json.dumps({**run, "points": points}, indent=1) + "\n")
    return table(run)


def load(path: Path) -> dict[str, Any]:
    """A run `check` saved: its points as Points again; ConfigError (one line) if it is not one."""
    try:
        run = json.loads(path.read_text())
        missing = {"device", "precision", "shares", "predict"} - set(run)
        if missing:
            raise KeyError(", ".join(sorted(missing)))
        GpuClass(**run["device"])
        run["points"] = {
            k: rates.Point(**{**p, "work": cost.Work(**p["work"])})
            for k, p in run["points"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f"--from {path}: not a step-time run saved by make bench-plan "
            f"({type(e).__name__}: {e}); expected reports/bench/{SAVED}"
        ) from None
    return run


def table(run: dict[str, Any]) -> pd.DataFrame:
    """The fit and its predictions from one run's trials (`check`'s, or `load`ed)."""
    device, precision, best = GpuClass(**run["device"]), run["precision"], run["points"]
    latency = {
        a: [best[f"latency {a} {n} b{b}"] for n in rates.LATENCY_LAYERS
            for b in rates.LATENCY_BATCHES]
        for a in rates.APPROACHES
    }  # fmt: skip
    measured = rates.measure(device, precision, latency, run["shares"])
    deep = {a: [best[f"fit {a} b{b}"] for b in CALIBRATE_AT] for a in rates.APPROACHES}
    fits = rates.fit(deep, device, measured, "make bench-plan")
    before = {
        a: rates.slope_fit(pts, cost.peak_tflops(device, precision)) for a, pts in deep.items()
    }
    rows = []
    for key in run["predict"]:
        p = best[key]
        predicted = rates.predict(p, device, fits[(p.approach, p.precision)])
        mfu, fixed = before[p.approach]
        old = p.work.flops / (mfu * cost.peak_tflops(device, p.precision) * 1e12) + fixed
        rows.append(
            {
                "point": key.removeprefix("grid ").replace("method.r=", "r="),
                "layers": p.work.layers,
                "batch": p.batch,
                "tokens/step": round(p.tokens),
                "measured s/step": p.step_s,
                "predicted s/step": predicted,
                "measured / predicted": p.step_s / predicted,
                "before: predicted": old,
                "before: measured / predicted": p.step_s / old,
            }
        )
    out = pd.DataFrame(rows)
    out.attrs.update(device=device, fits=fits, before=before)
    return out


def calibration_lines(table: pd.DataFrame, stamp: str) -> list[str]:
    """The fitted rates as conf/calibration.yaml entries for CPUs."""
    out = []
    for (a, _), r in table.attrs["fits"].items():
        fields = ", ".join(f"{f}: {getattr(r, f):.4g}" for f in probe.FIELDS)
        out.append(
            f'  - {{device: cpu, approach: {a}, basis: fitted, precision: "*", {fields}, '
            f'source: "make bench-plan {stamp}, {table.attrs["device"].name}, random-weight '
            f"SmolLM2-135M shape, fp32, batches {'/'.join(map(str, CALIBRATE_AT))}; "
            'micro-benchmarks"}'
        )
    return out


def section(table: pd.DataFrame, stamp: str = "") -> str:
    """The markdown section: the table, the rates it used, and the worst error against BAND."""
    device = table.attrs["device"]
    ratio = table["measured / predicted"]
    worst = float((ratio - 1).abs().max())
    worst_before = float((table["before: measured / predicted"] - 1).abs().max())
    fitted = "; ".join(
        f"{a}: MFU {r.mfu:.1%}, half of it at {r.half_tokens:.0f} tokens a step, latency "
        f"{r.layer_s * 1e3:.2f} ms per layer, {r.layer_token_s * 1e6:.1f} us per layer and "
        f"token, {r.dispatch_s * 1e3:.1f} ms per step"
        for (a, _), r in table.attrs["fits"].items()
    )
    r = next(iter(table.attrs["fits"].values()))
    deq = min(f.dequant_eff for f in table.attrs["fits"].values())
    old = "; ".join(f"{a}: {fixed * 1e3:.0f} ms" for a, (_, fixed) in table.attrs["before"].items())
    return "\n".join(
        [
            f"{HEADING}, across sizes, this machine",
            "",
            f"{device.name}: dense peak {cost.peak_tflops(device, 'fp32'):.3g} TFLOP/s fp32 "
            f"(matmul probe), memory {device.mem_gbps:.3g} GB/s (copy probe); fused AdamW "
            f"reaches {r.opt_eff:.0%} of it (64M parameters, gradients made anew each step) and NF4 "
            f"dequantization {deq:.0%}. Fitted on a random-weight SmolLM2-135M shape at batches "
            f"{', '.join(map(str, CALIBRATE_AT))} ({fitted}); predicted without refitting at "
            f"the default grid's batch {BATCH} and on two other sizes. Before: the old model, "
            f"MFU from the same slope plus the step at zero tokens as one constant per "
            f"approach ({old}).",
            "",
            table.to_markdown(index=False, floatfmt=".3f"),
            "",
            f"Worst step-time error: {worst:.1%} (target: within {BAND:.0%}; before: "
            f"{worst_before:.0%})." + ("" if worst <= BAND else " Outside the target."),
            "",
            "As conf/calibration.yaml entries (the shipped CPU rates come from this):",
            "",
            "```yaml",
            *calibration_lines(table, stamp),
            "```",
            "",
        ]
    )


def main(argv: list[str]) -> int:
    """python -m sweep.bench.step_time [overrides]: print the section (make bench-plan writes it).
    python -m sweep.bench.step_time --from reports/bench/step_time.json: refit a saved run."""
    import time

    if argv[:1] == ["--from"] and len(argv) == 2:
        try:
            steps = table(load(Path(argv[1])))
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        with tempfile.TemporaryDirectory() as tmp:
            steps = check(argv, Path(tmp))
    print(section(steps, time.strftime("%Y-%m-%d %H:%M")))
    return 0 if (steps["measured / predicted"] - 1).abs().max() <= BAND else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
