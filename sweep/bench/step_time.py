"""The time model checked on this machine: predicted vs measured step time of the default grid.

    python -m sweep.bench.step_time          # part of make bench-plan

`make probe`'s fit at batches 4 and 16 (into a calibration of the bench's own, not this
machine's .cache/calibration.yaml) predicts every point of the default grid (full FT, LoRA at
ranks 4, 16, 64, QLoRA r=16) at the grid's own batch of 8, which the fit never saw; each point
then runs its short harness trials (ROUNDS each, the quickest counts). On a CPU the peak is a short matmul probe's. The fit brackets
the grid's batch: on a shared 2-core machine one trial's step time moves by 10-30% from run to
run, and a fit over a short span of batches (2 and 4) extrapolates that noise.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd

from sweep import cost, probe

CALIBRATE_AT = (4, 16)
GRID = [("full", []), ("lora", ["method.r=4"]), ("lora", ["method.r=16"]),
        ("lora", ["method.r=64"]), ("qlora", ["method.r=16"])]  # fmt: skip
BATCH = 8  # conf/train/default.yaml
BAND = 0.20
ROUNDS = 2  # trials per point; the quickest counts (noise on a shared machine only adds time)


def check(overrides: list[str], work: Path) -> pd.DataFrame:
    """Calibrate at CALIBRATE_AT, then predict and measure each GRID point at BATCH."""
    cal = work / "calibration"
    fitted = probe.probe(
        overrides, work / "probe", str(cal), CALIBRATE_AT, probe.this_device(), ROUNDS
    )
    device = fitted.attrs["device"]
    entries = cost.load_calibration(cal)
    rows = []
    for approach, extra in GRID:
        label = approach if approach == "full" else f"{approach} {extra[0].split('.')[-1]}"
        print(f"[bench-plan] step time: {label} batch {BATCH}", flush=True)
        p = probe.run_point([*overrides, *extra], approach, BATCH, work / "grid", ROUNDS)
        peak = cost.peak_tflops(device, p.precision)
        predicted = cost.step_seconds(
            p.flops_per_token,
            p.tokens,
            peak,
            cost.rate(entries, device.name, approach, p.precision),
        )
        rows.append(
            {
                "point": label,
                "batch": BATCH,
                "tokens/step": round(p.tokens),
                "predicted s/step": predicted,
                "measured s/step": p.step_s,
                "measured / predicted": p.step_s / predicted,
            }
        )
    table = pd.DataFrame(rows)
    table.attrs["device"] = device
    table.attrs["fits"] = fitted.attrs["fits"]
    return table


def section(table: pd.DataFrame) -> str:
    """The markdown section: the table, the rates it used, and the worst error against BAND."""
    device = table.attrs["device"]
    worst = float((table["measured / predicted"] - 1).abs().max())
    rates = "; ".join(
        f"{a} ({p}): MFU {mfu:.1%}, fixed {fixed * 1e3:.0f} ms"
        for (a, p), (mfu, fixed) in table.attrs["fits"].items()
    )
    return "\n".join(
        [
            "## Time model vs measured step time, this machine",
            "",
            f"{device.name}, dense peak {cost.peak_tflops(device, 'fp32'):.3g} TFLOP/s fp32 "
            f"(matmul probe on a CPU). Calibrated by `make probe`'s fit at batches "
            f"{' and '.join(map(str, CALIBRATE_AT))} ({rates}); predicted at the default "
            f"grid's batch {BATCH}, which the fit never saw.",
            "",
            table.to_markdown(index=False, floatfmt=".3f"),
            "",
            f"Worst step-time error: {worst:.1%} (target: within {BAND:.0%})."
            + ("" if worst <= BAND else " Outside the target."),
            "",
        ]
    )


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        table = check(argv, Path(tmp))
    text = section(table)
    print(text)
    return 0 if (table["measured / predicted"] - 1).abs().max() <= BAND else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
