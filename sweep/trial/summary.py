"""A finished trial on one screen: what ran, what it cost, what it bought.

python -m sweep trial model=tiny_llama train.steps=4     # prints it at the end
"""

from __future__ import annotations

from sweep.results.record import TrialResult


def summary(result: TrialResult) -> str:
    """One screen: what ran, what it cost, what it bought, where the record is."""
    m, r = result.metrics, result.run

    def f(key: str, fmt: str = "{:.3g}") -> str:
        v = m.get(key)
        return "-" if v is None else fmt.format(v)

    scorer = (r.get("config") or {}).get("dataset", {}).get("scorer", "exact")
    right = "exact match" if scorer == "exact" else f"right by {scorer}"
    lines = [
        f"trial      {r.get('label')}  model={r.get('model')}  task={r.get('task') or r.get('dataset')}  "
        f"precision={r.get('precision')}  status={result.status}",
        f"accuracy   {f('accuracy', '{:.1%}')} {right} on {f('n_eval', '{}')} items, task score "
        f"{f('task_score', '{:.1%}')}  (untuned base {f('base_accuracy', '{:.1%}')})"
        f"  eval loss {f('eval_loss', '{:.3f}')}",
        f"retention  general-text loss {f('retention_loss_before', '{:.3f}')} -> "
        f"{f('retention_loss_after', '{:.3f}')} nats/token (+ is forgetting)",
        f"loss       {f('first_loss', '{:.3f}')} -> {f('final_loss', '{:.3f}')} over {f('steps', '{}')} steps",
        f"speed      {f('s_per_step', '{:.2f}')} s/step, {f('train_tokens_per_s', '{:.0f}')} tokens/s, "
        f"{f('train_tflops', '{:.3g}')} model TFLOP/s"
        + (f" (MFU {f('mfu', '{:.1%}')})" if m.get("mfu") is not None else ""),
        f"memory     peak host RSS {f('peak_host_rss_gib', '{:.2f}')} GiB"
        + (
            f", peak VRAM {f('peak_vram_gib', '{:.2f}')} GiB (allocator {f('peak_alloc_gib', '{:.2f}')})"
            if m.get("peak_vram_gib")
            else ""
        ),
        f"time       load {f('load_s', '{:.1f}')} s, train {f('train_phase_s', '{:.1f}')} s, "
        f"eval {f('eval_s', '{:.1f}')} s, total {f('total_s', '{:.1f}')} s",
        f"params     {f('trainable_params', '{:,}')} trainable of {f('total_params', '{:,}')} "
        f"({f('trainable_pct', '{:.2f}')}%), saved {f('adapter_bytes', '{:,}')} bytes",
    ]
    if result.train.get("error"):
        lines.append(f"error      {result.train['error']}")
    return "\n".join(lines)
