"""The time model checked on this machine: predicted vs measured step time of the default grid.

    python -m sweep.bench.step_time          # part of make bench-plan

`make probe`'s fit (sweep.cli.probe.fit: MFU and fixed cost from two batch sizes, here 4 and 16)
predicts every point of the default grid (full FT, LoRA at ranks 4, 16, 64, QLoRA r=16) at the
grid's own batch of 8, which the fit never saw; each point runs short harness trials beside
it. On a CPU the peak is a short matmul probe's. Noise on a shared 2-core machine: one trial's
step time moves 10-30% from run to run and drifts over minutes, so the fit brackets the grid's
batch (a fit over batches 2 and 4 extrapolated that noise), each approach's fit and checks run
together in ABBA rounds, and each point's quickest run counts.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd

from sweep.cli import probe
from sweep.planning import cost

CALIBRATE_AT = (4, 16)
GRID = {  # the default grid's points, per approach (each calibrated at the approach's default)
    "full": [[]],
    "lora": [["method.r=4"], ["method.r=16"], ["method.r=64"]],
    "qlora": [["method.r=16"]],
}
BATCH = 8  # conf/train/default.yaml
BAND = 0.20
ROUNDS = 2  # ABBA rounds; each point's quickest run counts (noise only ever adds time)


def check(overrides: list[str], work: Path) -> pd.DataFrame:
    """Per approach, in ABBA rounds: calibration batch, grid points, the other calibration
    batch (then reversed), so the machine's drift over minutes hits fit and check alike; fit at
    CALIBRATE_AT, predict each grid point at BATCH, set the measured beside it."""
    device = probe.this_device()
    small, large = CALIBRATE_AT
    rows, fits = [], {}
    for approach, points in GRID.items():
        plan = [(small, []), *[(BATCH, extra) for extra in points], (large, [])]
        best: dict[tuple[int, str], probe.Point] = {}
        for i in range(ROUNDS):
            for batch, extra in plan if i % 2 == 0 else plan[::-1]:
                print(f"[bench-plan] step time: {approach} {' '.join(extra)} batch {batch}",
                      flush=True)  # fmt: skip
                p = probe.run_point([*overrides, *extra], approach, batch, work)
                key = (batch, " ".join(extra))
                best[key] = min(best.get(key, p), p, key=lambda q: q.step_s)
        peak = cost.peak_tflops(device, best[(small, "")].precision)
        mfu, fixed = probe.fit(best[(small, "")], best[(large, "")], peak)
        fits[(approach, best[(small, "")].precision)] = (mfu, fixed)
        r = cost.Rate(mfu, fixed, "fit")
        for extra in points:
            p = best[(BATCH, " ".join(extra))]
            predicted = cost.step_seconds(p.flops_per_token, p.tokens, peak, r)
            rank = f" {extra[0].split('.')[-1]}" if extra else ""
            rows.append(
                {
                    "point": approach + rank,
                    "batch": BATCH,
                    "tokens/step": round(p.tokens),
                    "predicted s/step": predicted,
                    "measured s/step": p.step_s,
                    "measured / predicted": p.step_s / predicted,
                }
            )
    table = pd.DataFrame(rows)
    table.attrs["device"] = device
    table.attrs["fits"] = fits
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
