"""`make bench`'s six parts as a registry: what each runs, keeps, contributes and renders.

    from sweep.bench.parts import PARTS, write
    write(json.loads(Path("reports/bench/harness.json").read_text()))  # harness.md again

A Part owns some entries of the results (written to reports/bench/harness.json), its rows of
the ratio table at the top of harness.md, and its section below it. The ratio table and the
sections follow their own explicit orders (RATIO_ORDER, SECTION_ORDER); both derive from the
results alone, so a part kept from the last run (keep_previous) renders as when it ran.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.bench.part_kit import Ratio, Settings
from sweep.bench.parts_harness import (
    eval_ratios,
    eval_section,
    run_eval,
    run_step,
    run_sweep,
    run_throughput,
    step_section,
    sweep_ratios,
    sweep_section,
    throughput_ratios,
    throughput_section,
)
from sweep.bench.parts_peers import (
    kernel_ratios,
    kernel_section,
    packing_ratios,
    packing_section,
    run_kernels,
    run_packing,
    run_sft,
    sft_ratios,
    sft_section,
)

OUT = Path("reports/bench")


@dataclass(frozen=True)
class Part:
    """One comparison. `keys`: the results entries it writes (the first present iff it ran);
    `run`: measures and returns those entries; `ratios`: its rows of the ratio table, in order;
    `section`: its lines of harness.md. Both take the whole results (a section may cite another
    part's)."""

    name: str
    keys: tuple[str, ...]
    run: Callable[[Settings], dict[str, Any]]
    ratios: Callable[[dict[str, Any]], list[Ratio]]
    section: Callable[[dict[str, Any]], list[str]]

    def ran(self, results: dict[str, Any]) -> bool:
        """Whether `results` hold this part (measured now or kept from the last run)."""
        return self.keys[0] in results


# The registry, in run order (the order --only lists them in).
PARTS: dict[str, Part] = {
    p.name: p
    for p in (
        Part("eval", ("eval",), run_eval, eval_ratios, eval_section),
        Part(
            "throughput",
            ("throughput", "throughput_steps", "warmup_steps", "pairing"),
            run_throughput,
            throughput_ratios,
            throughput_section,
        ),
        Part("step", ("step_cost",), run_step, lambda results: [], step_section),
        Part("sweep", ("sweep", "trials", "overhead"), run_sweep, sweep_ratios, sweep_section),
        Part(
            "sft",
            ("sft", "sft_steps", "sft_warmup_steps", "sft_pairing"),
            run_sft,
            sft_ratios,
            sft_section,
        ),
        Part("packing", ("packing",), run_packing, packing_ratios, packing_section),
        Part(
            "kernels",
            ("kernels", "kernels_steps", "kernels_pairing"),
            run_kernels,
            kernel_ratios,
            kernel_section,
        ),
    )
}
# The ratio table: 4. eval, 1. throughput per approach, 2. sweep time, 3. overhead, 5. TRL,
# 6. packing, 7. kernel switches.
RATIO_ORDER = ("eval", "throughput", "step", "sweep", "sft", "packing", "kernels")
# The sections: 1. throughput, its per-step cost, 2. sweep time and 3. overhead, 4. eval, 5. TRL,
# 6. packing, 7. kernel switches.
SECTION_ORDER = ("throughput", "step", "sweep", "eval", "sft", "packing", "kernels")


def ratio_rows(results: dict[str, Any]) -> list[Ratio]:
    """The ratio table's rows of every part the results hold, in RATIO_ORDER."""
    return [
        row
        for name in RATIO_ORDER
        if PARTS[name].ran(results)
        for row in PARTS[name].ratios(results)
    ]


def keep_previous(results: dict[str, Any], parts: set[str], previous: Path) -> None:
    """Carry over the parts not run this time from the last run at the same overrides, so that
    `--only sweep` refreshes one part of the reference results and keeps the others."""
    if not previous.exists():
        return
    old = json.loads(previous.read_text())
    if old.get("overrides") != results["overrides"]:
        return
    for part in PARTS.values():
        if part.name in parts or not part.ran(old):
            continue
        results.update({k: old[k] for k in part.keys if k in old})
        # the date of the run that measured it (an older one if that run kept it too)
        results.setdefault("kept", {})[part.name] = old.get("kept", {}).get(
            part.name, old.get("date")
        )


def write(results: dict[str, Any], out: Path = OUT) -> Path:
    """reports/bench/harness.md (+ harness.json) from the measured results: the ratio table
    (results["ratios"], see ratio_rows), then each part's section in SECTION_ORDER."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "harness.json").write_text(json.dumps(results, indent=2, default=str))
    env = results["environment"]
    lines = [
        "# Harness benchmark: the harness against what users would write instead",
        "",
        f"Measured {results['date']} on {env.get('cpu')} x {env.get('cpu_count')} "
        f"({env.get('device')}, {env.get('device_name')}); torch {env['versions'].get('torch')}, "
        f"transformers {env['versions'].get('transformers')}. Overrides: "
        f"`{' '.join(results['overrides']) or '(defaults)'}`. Regenerate with `make bench`."
        + "".join(f" Part {p}: from the run of {d}." for p, d in results.get("kept", {}).items()),
        "",
        "| comparison | ratio | target |",
        "|---|---|---|",
        *(f"| {name} | {value} | {target} |" for name, value, target in results["ratios"]),
    ]
    for name in SECTION_ORDER:
        if PARTS[name].ran(results):
            lines += PARTS[name].section(results)
    path = out / "harness.md"
    path.write_text("\n".join(lines) + "\n")
    return path
