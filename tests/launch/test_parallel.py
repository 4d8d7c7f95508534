"""One trial over several processes (train.gpus): accelerate's launcher, DDP on gloo on CPU,
the FSDP helpers on gloo, per-device planning and the checks on the settings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sweep.launch import parallel
from sweep.launch.launch import launch
from sweep.planning import activations, plan
from sweep.planning.arch import load_arch
from sweep.settings.compose import ConfigError, compose
from sweep.trial import ranks
from sweep.trial.run import run_trial
from tests.conftest import REPO, tiny

# Two ranks at half the batch each against one process at the whole batch: the same examples in
# each step (accelerate hands rank k the k-th slice of the sampler's order), and the loss is
# averaged over the tokens of all ranks (Trainer's average_tokens_across_devices), so the
# curves agree up to fp32 summation order. Full FT: a fresh LoRA's B is zero, so its A gets
# gradients of exactly zero or of rounding size, which Adam turns into steps of +-lr or none,
# and the curves part at the third step (5e-4); full FT's gradients are all well above rounding.
LOSS_RTOL = 1e-4


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() < 2,
    reason="a GPU host runs train.gpus=2 on two GPUs (tests/test_gpu.py)",
)
def test_two_gloo_processes_train_as_one_process_at_the_same_global_batch(tmp_path):
    overrides = tiny("method=full", "train.steps=6", "eval.base=false", "eval.retention_size=0")
    one = run_trial(compose(overrides), tmp_path / "one")
    two = launch(compose([*overrides, "train.gpus=2"]), tmp_path / "two", 0)
    assert one.status == "ok" and two.status == "ok", two.train.get("error")
    assert len(two.train["loss_curve"]) == len(one.train["loss_curve"]) == 6
    assert two.train["loss_curve"] == pytest.approx(one.train["loss_curve"], rel=LOSS_RTOL)
    m = two.metrics
    assert m["world_size"] == 2 and [r["rank"] for r in two.train["ranks"]] == [0, 1]
    # the trial's peak is the largest rank's (what every device must hold)
    assert m["train_peak_host_rss_gib"] == max(
        r["train_peak_host_rss_gib"] for r in two.train["ranks"]
    )
    assert m["tokens_seen"] == one.metrics["tokens_seen"]  # counted over both ranks
    assert m["n_eval"] == one.metrics["n_eval"] and "accuracy" in m
    assert (tmp_path / "two" / "adapter" / "config.json").is_file()  # full FT: the model
    launched = json.loads((tmp_path / "two" / ranks.LAUNCH_FILE).read_text())
    assert launched["pruning"] is None and "storage" not in json.dumps(launched)
    assert "rank 1" not in (tmp_path / "two" / parallel.LOG_FILE).read_text()  # no failure


FSDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from pathlib import Path
from peft import LoraConfig, get_peft_model
from torch.distributed.fsdp import fully_shard
from transformers import LlamaConfig, LlamaForCausalLM
from sweep.trial import methods, ranks

dist.init_process_group("gloo")
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4)
model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=4, target_modules="all-linear"))
for p in model.parameters():  # an adapter that is not zero, so saving it is visible
    if p.requires_grad:
        torch.nn.init.normal_(p, std=0.02)
x = torch.randint(0, 96, (2, 8))
before = model(input_ids=x).logits.detach()
for layer in model.base_model.model.model.layers:
    fully_shard(layer)
fully_shard(model)
out = Path(sys.argv[1])
written = ranks.save(model, out / "adapter", methods.save)
assert ranks.unshard(model)
after = model(input_ids=x).logits.detach()  # whole weights: no collective, rank alone
print(f"RANK {dist.get_rank()} bytes={written} diff={(after - before).abs().max().item()}")
dist.barrier()
"""


def test_fsdp_save_gathers_the_whole_adapter_and_unshard_lets_each_rank_run_alone(tmp_path):
    # accelerate shards with FSDP on GPUs only; its two steps after training, saving the
    # gathered weights and evaluating unsharded, are checked here with torch's own FSDP2 on gloo
    script = tmp_path / "fsdp.py"
    script.write_text(FSDP_SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(parallel.free_port()), str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the two ranks print at once: their lines may run together
    found = sorted(re.findall(r"RANK (\d) bytes=(\d+) diff=(\S+?)(?=RANK|\s|$)", proc.stdout))
    assert [r for r, _, _ in found] == ["0", "1"], proc.stdout[-1000:]
    assert int(found[0][1]) > 0 and found[1][1] == "0"  # rank 0 alone writes
    assert all(float(diff) == 0.0 for _, _, diff in found)
    from peft import PeftConfig
    from safetensors.torch import load_file

    assert PeftConfig.from_pretrained(str(tmp_path / "adapter")).r == 4
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    lora_a = [v for k, v in saved.items() if "q_proj.lora_A" in k]
    # whole tensors, not one rank's shard: r x hidden
    assert lora_a and all(tuple(t.shape) == (4, 32) and t.abs().sum() > 0 for t in lora_a)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.gpus=0"], "train.gpus"),
        (["train.gpus=3"], "a multiple of train.gpus=3"),
        (["train.gpus=2", "train.parallel=zero3"], "train.parallel"),
        (["train.gpus=2", "train.parallel=fsdp"], "ddp on a CPU host"),
    ],
)
def test_bad_parallel_settings_are_one_line_errors(overrides, message):
    if torch.cuda.is_available() and "fsdp" in " ".join(overrides):
        pytest.skip("FSDP is allowed on a GPU host")
    with pytest.raises(ConfigError) as err:
        compose(tiny(*overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_plan_per_device_divides_sharded_states_and_the_batch():
    arch = load_arch("llama3_8b")
    recs = plan.plan_recipes(plan.Settings())
    full = recs[0]
    one = plan.plan_row(arch, plan.Settings(batch_size=8, seq_len=1024), full, [])
    fsdp = plan.plan_row(arch, plan.Settings(batch_size=8, seq_len=1024, gpus=4,
                                             parallel="fsdp"), full, [])  # fmt: skip
    ddp = plan.plan_row(arch, plan.Settings(batch_size=8, seq_len=1024, gpus=4), full, [])
    half = plan.plan_row(arch, plan.Settings(batch_size=2, seq_len=1024), full, [])
    assert fsdp.optimizer_gib == pytest.approx(one.optimizer_gib / 4)
    assert fsdp.grads_gib == pytest.approx(one.grads_gib / 4)
    layer = one.weights_gib / (arch.layers + 2)
    assert fsdp.weights_gib == pytest.approx(one.weights_gib / 4 + 2 * layer)
    assert ddp.activations_gib == pytest.approx(half.activations_gib)  # batch 8 / 4 GPUs
    # FSDP gathers 16-bit weights: no autocast copies of the fp32 ones (16 GB for an 8B)
    copies = activations.weight_copy_bytes(arch, plan.Settings(batch_size=2, seq_len=1024), full)
    assert fsdp.activations_gib == pytest.approx(half.activations_gib - copies / plan.GIB)
    assert ddp.weights_gib == one.weights_gib and ddp.grads_gib == 2 * one.grads_gib  # buckets
    assert fsdp.total_gib < one.total_gib / 2 < ddp.total_gib
    qlora = recs[-1]  # run under DDP whatever train.parallel says (a 4-bit base is not sharded)
    q_fsdp = plan.plan_row(arch, plan.Settings(gpus=4, parallel="fsdp"), qlora, [])
    assert q_fsdp == plan.plan_row(arch, plan.Settings(gpus=4, parallel="ddp"), qlora, [])


def test_trial_settings_carry_gpus_and_parallel_into_the_plan():
    cfg = compose(tiny("train.gpus=2"))
    s = plan.trial_settings(cfg, cuda=False)
    assert (s.gpus, s.parallel, s.batch_size) == (2, "ddp", 4)


def test_peaks_over_ranks_take_the_largest_and_count_the_ranks():
    per_rank = [
        {"rank": 0, "peak_vram_gib": 3.0, "peak_alloc_gib": 2.0, "peak_host_rss_gib": 1.0},
        {"rank": 1, "peak_vram_gib": 3.5, "peak_alloc_gib": 1.5, "peak_host_rss_gib": None},
    ]
    out = ranks.peaks_over(per_rank)
    assert out == {"world_size": 2, "peak_vram_gib": 3.5, "peak_alloc_gib": 2.0,
                   "peak_host_rss_gib": 1.0}  # fmt: skip


def test_the_launch_command_starts_one_process_per_device_through_accelerate(tmp_path):
    cmd = parallel.command(Path(tmp_path), 4, 29999)
    assert Path(cmd[0]).name == "accelerate" and cmd[1] == "launch"
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[-3:] == ["-m", "sweep.trial", str(tmp_path)]
    assert not any("postgresql" in c for c in cmd)
