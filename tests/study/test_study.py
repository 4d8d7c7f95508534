import optuna
import pandas as pd
import psutil
import pytest

from sweep.launch.memory import WorkerMemory
from sweep.results import tracking
from sweep.results.record import load
from sweep.results.storage import open_storage
from sweep.settings.compose import ConfigError, compose
from sweep.study.points import grid_points, is_final, merge_overrides
from sweep.study.study import run_sweep


def test_grid_points_do_not_multiply_full_ft_by_ranks():
    grid = compose([]).sweep.grid
    labels = [p.label for p in grid_points(grid)]
    assert labels == ["full", "lora r=4", "lora r=16", "lora r=64", "qlora r=16"]
    assert grid_points(grid)[1].overrides == ["method=lora", "method.r=4"]


def test_grid_axes_cross_within_an_approach():
    pts = grid_points({"lora": {"method": {"r": [4, 8]}, "train": {"seed": [0, 1]}}, "full": {}})
    assert [p.name for p in pts] == [
        "lora r=4 seed=0",
        "lora r=4 seed=1",
        "lora r=8 seed=0",
        "lora r=8 seed=1",
        "full",
    ]
    assert [p.label for p in pts[:2]] == ["lora r=4", "lora r=4"]  # a seed axis: repeats


def test_seeds_repeat_every_point_under_the_approach_label():
    pts = grid_points({"full": {}, "lora": {"method": {"r": [16]}}}, seeds=[0, 1])
    assert [p.name for p in pts] == [
        "full seed=0",
        "full seed=1",
        "lora r=16 seed=0",
        "lora r=16 seed=1",
    ]
    assert pts[3].overrides == ["method=lora", "method.r=16", "train.seed=1"]
    assert (pts[3].label, pts[3].seed) == ("lora r=16", 1)
    with pytest.raises(ConfigError, match="sweep.seeds and a train.seed grid axis"):
        grid_points({"full": {"train": {"seed": [0, 1]}}}, seeds=[0])


def test_seed_data_gives_each_seed_its_own_data_sample_shared_by_every_approach():
    pts = grid_points({"full": {}, "lora": {"method": {"r": [4]}}}, seeds=[0, 2], data_seed=100)
    by = {p.name: p.overrides for p in pts}
    assert "dataset.seed=102" in by["full seed=2"] and "dataset.seed=102" in by["lora r=4 seed=2"]
    assert "dataset.seed=100" in by["lora r=4 seed=0"]
    assert not any(
        "dataset.seed" in o for p in grid_points({"full": {}}, [0, 1]) for o in p.overrides
    )


def test_rank_grid_override_from_the_command_line():
    cfg = compose(["sweep=rank_grid", "sweep.grid.lora.method.r=[2,8]"])
    assert [p.label for p in grid_points(cfg.sweep.grid)] == ["full", "lora r=2", "lora r=8"]


def test_later_overrides_win():
    assert merge_overrides(
        ["model=tiny_llama", "train.steps=6"], ["train.steps=9"], ["method=lora"]
    ) == ["model=tiny_llama", "train.steps=9", "method=lora"]


def test_a_bad_point_fails_before_any_trial(tmp_path):
    with pytest.raises(ConfigError, match="method.r=0 is not allowed"):
        run_sweep(["sweep=smoke", "sweep.grid.lora.method.r=[0]"])
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_smoke_sweep_end_to_end_and_rerun_runs_nothing_new(tmp_path, capsys):
    assert run_sweep(["sweep=smoke"]) == 0
    out = capsys.readouterr().out
    assert out.count(": start (") == 4 and "[trial 4/4]" in out
    trial_dirs = sorted((tmp_path / "outputs" / "smoke" / "trials").iterdir())
    assert len(trial_dirs) == 4
    records = [load(d / "result.json") for d in trial_dirs]
    assert {r.run["label"] for r in records} == {"full", "lora r=4", "lora r=16", "qlora r=8"}
    assert all(r.status == "ok" for r in records), [r.train.get("error") for r in records]

    # MLflow: one parent run with one nested run per trial
    c = tracking.client()
    parent = tracking.find_parent("smoke")
    exp = c.get_experiment_by_name("smoke")
    runs = c.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(runs) == 5 and len(children) == 4
    assert all(
        "accuracy" in r.data.metrics and "peak_host_rss_gib" in r.data.metrics for r in children
    )
    assert all(r.info.status == "FINISHED" for r in runs)
    report = {a.path for a in c.list_artifacts(parent, "report")}  # on the parent run
    assert {"report/report.md", "report/accuracy_vs_peak_memory_gib.png"} <= report

    # the report: one headline row per approach, numbers equal to the records
    report_dir = tmp_path / "reports" / "smoke"
    text = (report_dir / "report.md").read_text()
    for r in records:
        assert f"| {r.run['label']}" in text
        assert f"{r.metrics['accuracy']:.1%}" in text
        # the sweep clocks each trial process; the trial clocks its phases inside it
        m = r.metrics
        assert m["trial_wall_s"] > m["train_phase_s"] + m["eval_s"] > 0
        assert 0 <= m["startup_s"] < m["trial_wall_s"]
    assert "## Overhead" in text and "of trial wall time" in text
    csv = pd.read_csv(report_dir / "results.csv").set_index("label")
    for r in records:
        assert csv.loc[r.run["label"], "peak_memory_gib"] == pytest.approx(
            r.metrics["peak_memory_gib"]
        )
        assert csv.loc[r.run["label"], "train_s"] == pytest.approx(r.metrics["train_s"])

    # a finished sweep re-run runs nothing new
    assert run_sweep(["sweep=smoke"]) == 0
    assert "nothing to run" in capsys.readouterr().out
    assert len(list((tmp_path / "outputs" / "smoke" / "trials").iterdir())) == 4
    assert len(c.search_runs([exp.experiment_id])) == 5

    # make report rebuilds from MLflow alone
    (report_dir / "report.md").unlink()
    from sweep.results.report import rebuild

    assert rebuild("smoke").read_text() == text


TINY_SWEEP = '["model=tiny_llama","train.steps=4","train.batch_size=4","train.max_seq_len=48","train.measure_warmup_steps=1","eval.size=4","eval.max_new_tokens=4"]'


@pytest.mark.slow
def test_lr_search_samples_per_approach_ranges_and_can_prune(tmp_path):
    import optuna

    overrides = TINY_SWEEP[:-1] + ',"eval.every=2","train.steps=6","eval.select_size=6"]'
    args = [
        "sweep=lr_search",
        "sweep.n_trials=3",
        f"sweep.overrides={overrides}",
        "~sweep.grid.qlora",
        "~sweep.grid.full",
    ]
    assert run_sweep(args) == 0
    storage = open_storage(f"journal://{tmp_path / 'outputs' / 'lr_search' / 'optuna.journal'}")
    study = optuna.load_study(study_name="lr_search:lora r=16", storage=storage)
    trials = study.get_trials()
    assert len(trials) == 3
    for t in trials:
        assert 1e-4 <= t.params["method.lr"] <= 5e-3  # LoRA's own range, not full FT's
        assert t.intermediate_values  # eval loss reported every 2 steps for the pruner
    recs = [
        load(d / "result.json") for d in (tmp_path / "outputs" / "lr_search" / "trials").iterdir()
    ]
    assert sorted(r.run["lr"] for r in recs) == sorted(t.params["method.lr"] for t in trials)
    # the study optimizes the selection split's loss; the report shows the trial chosen on it
    done = [r for r in recs if r.status == "ok"]
    assert all(r.metrics["select_loss"] > 0 for r in done)
    best = min(done, key=lambda r: r.metrics["select_loss"])
    csv = pd.read_csv(tmp_path / "reports" / "lr_search" / "results.csv")
    assert csv.selected.sum() == 1
    assert csv.loc[csv.selected, "lr"].item() == pytest.approx(best.run["lr"])
    text = (tmp_path / "reports" / "lr_search" / "report.md").read_text()
    assert "the trial with the lowest `select_loss`" in text


def test_choosing_on_the_selection_split_needs_one(tmp_path):
    overrides = TINY_SWEEP[:-1] + ',"eval.every=2"]'
    with pytest.raises(ConfigError, match="eval.select_size > 0"):
        run_sweep(["sweep=lr_search", f"sweep.overrides={overrides}"])


@pytest.mark.slow
def test_multi_objective_grid_gives_a_pareto_front(tmp_path):
    import optuna

    args = [
        "sweep=smoke",
        "sweep.objectives=[accuracy,peak_memory_gib]",
        "~sweep.grid.full",
        "sweep.grid.lora.method.r=[4]",
        "~sweep.grid.qlora",
    ]
    assert run_sweep(args) == 0
    storage = open_storage(f"journal://{tmp_path / 'outputs' / 'smoke' / 'optuna.journal'}")
    study = optuna.load_study(study_name="smoke", storage=storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert len(study.best_trials) >= 1


@pytest.mark.slow
def test_oom_and_divergence_are_recorded_and_the_sweep_goes_on(tmp_path):
    args = [
        "sweep=smoke",
        "experiment=faults",
        "sweep.memory_limit_gib=3",
        # LoRA with an absurd batch under a 3 GiB address-space limit (the trial process maps
        # about 2.3 GiB of libraries before it trains): out of memory
        "sweep.grid.lora.method.r=[4]",
        "+sweep.grid.lora.train.batch_size=[2048]",
        "+sweep.grid.lora.train.max_seq_len=[512]",
        "+sweep.grid.lora.dataset.task_args.chain_sum.min_terms=[20]",
        "+sweep.grid.lora.dataset.task_args.chain_sum.max_terms=[20]",
        # full FT at an absurd learning rate: NaN or exploding loss
        "+sweep.grid.full.method.lr=[0.9]",
        "+sweep.grid.full.train.steps=[40]",
        "+sweep.grid.full.train.precision=[fp32]",
        "+sweep.grid.full.train.diverge_factor=[1.5]",
    ]
    assert run_sweep(args) == 0
    records = {
        r.run["method"]: r
        for r in (
            load(d / "result.json") for d in (tmp_path / "outputs" / "faults" / "trials").iterdir()
        )
    }
    assert records["lora"].status == "oom" and "allocate memory" in records["lora"].train["error"]
    assert records["full"].status == "diverged" and records["full"].metrics["steps"] < 40
    assert records["qlora"].status == "ok"
    text = (tmp_path / "reports" / "faults" / "report.md").read_text()
    assert "| oom " in text and "| diverged " in text


@pytest.mark.slow
def test_a_limit_below_what_the_trial_process_holds_is_recorded_oom(tmp_path):
    args = ["sweep=smoke", "experiment=tight", "sweep.memory_limit_gib=0.3", "~sweep.grid.full"]
    args += ["~sweep.grid.qlora", "sweep.grid.lora.method.r=[4]"]
    assert run_sweep(args) == 0  # the sweep goes on
    (trial,) = (tmp_path / "outputs" / "tight" / "trials").iterdir()
    rec = load(trial / "result.json")
    # where the first allocation fails varies: in the trial (its MemoryError recorded), before it
    # could record (exit OOM_EXIT), or in a crash (a signal): each is oom, none a retried failure
    assert rec.status == "oom", rec.train["error"]
    error = rec.train["error"]
    assert error.startswith("MemoryError") or "0.3 GiB address-space limit" in error


@pytest.mark.slow
def test_predicted_oom_is_skipped_and_seeds_repeat(tmp_path):
    import optuna

    args = [
        "sweep=smoke",
        "experiment=skip",
        "~sweep.grid.qlora",
        "sweep.grid.lora.method.r=[4]",
        "+sweep.grid.full.train.batch_size=[256]",  # predicted ~0.1 GiB: above the limit
        "sweep.max_memory_gib=0.02",  # the LoRA points (~0.003 GiB predicted) run
        "sweep.seeds=[0,1]",
    ]
    assert run_sweep(args) == 0
    trials = tmp_path / "outputs" / "skip" / "trials"
    recs = [load(d / "result.json") for d in sorted(trials.iterdir())]
    by_status = {}
    for r in recs:
        by_status.setdefault(r.status, []).append(r)
    assert len(by_status["skipped_predicted_oom"]) == 2 and len(by_status["ok"]) == 2
    for r in by_status["skipped_predicted_oom"]:
        assert r.metrics["plan_total_gib"] > 0.02 and "predicted peak" in r.train["error"]
        assert r.run["label"] == "full batch_size=256"
    assert {r.run["label"] for r in by_status["ok"]} == {"lora r=4"}
    assert sorted(r.run["seed"] for r in by_status["ok"]) == [0, 1]
    assert all(r.metrics["ledger_params_bytes"] > 0 for r in by_status["ok"])
    storage = open_storage(f"journal://{tmp_path / 'outputs' / 'skip' / 'optuna.journal'}")
    study = optuna.load_study(study_name="skip", storage=storage)
    states = sorted(t.state.name for t in study.get_trials())
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    text = (tmp_path / "reports" / "skip" / "report.md").read_text()
    assert "| skipped_predicted_oom " in text and "## Predicted vs measured memory" in text
    assert "| lora r=4" in text and " ± " in text  # two seeds: mean and interval
    assert run_sweep(args) == 0  # skipped points are final: nothing runs again
    assert len(list(trials.iterdir())) == 4


# ---------------------------------------------------------------- memory-bound outcomes per worker


def _frozen(status: str, limit: float | None) -> optuna.trial.FrozenTrial:
    state = {"skipped_predicted_oom": "PRUNED", "oom": "FAIL"}[status]
    attrs = {"status": status} | ({"memory_limit_gib": limit} if limit is not None else {})
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState[state],
        params={"point": "full"},
        distributions={"point": optuna.distributions.CategoricalDistribution(["full"])},
        user_attrs=attrs,
    )


def test_a_memory_bound_outcome_is_final_only_for_workers_without_more_memory():
    skipped = _frozen("skipped_predicted_oom", 1.0)
    assert is_final(skipped, WorkerMemory(skip_gib=1.0, run_gib=64))
    assert is_final(skipped, WorkerMemory(skip_gib=1.01, run_gib=64))  # the same card, roughly
    assert not is_final(skipped, WorkerMemory(skip_gib=100.0, run_gib=64))
    assert not is_final(skipped, WorkerMemory(skip_gib=0.0, run_gib=64))  # no limit: runs it
    assert is_final(skipped)  # no worker named (reports): final
    oom = _frozen("oom", 23.6)  # judged against what the trial process could use
    assert is_final(oom, WorkerMemory(skip_gib=200.0, run_gib=23.6))
    assert not is_final(oom, WorkerMemory(skip_gib=0.0, run_gib=79.1))
    legacy = _frozen("oom", None)  # recorded before limits were: final everywhere, as then
    assert is_final(legacy, WorkerMemory(skip_gib=0.0, run_gib=1000.0))


def test_a_workers_run_limit_is_its_memory_or_the_cap():
    from sweep.launch.memory import run_memory_gib

    assert run_memory_gib(compose(["sweep.memory_limit_gib=2"])) == 2.0
    assert run_memory_gib(compose([])) == pytest.approx(psutil.virtual_memory().total / 1024**3)


def test_a_skip_record_on_disk_is_reused_only_by_a_worker_without_more_memory(tmp_path):
    from sweep.results import record
    from sweep.study import reuse

    cfg = compose(["model=tiny_llama", "method=full"])
    skipped = record.failed(record.run_info(cfg), "skipped_predicted_oom", "predicted peak")
    skipped.meta["memory_limit_gib"] = 1.0
    record.save(skipped, tmp_path / "trials" / "0000-full" / "result.json")
    small, large = WorkerMemory(skip_gib=1.0, run_gib=64), WorkerMemory(skip_gib=100.0, run_gib=64)
    assert (
        reuse.finished_record(tmp_path, "full", cfg, small)[0] == tmp_path / "trials" / "0000-full"
    )
    assert reuse.finished_record(tmp_path, "full", cfg, large) is None


@pytest.mark.slow
def test_a_point_skipped_on_a_small_worker_runs_on_a_larger_one(tmp_path, capsys):
    args = ["sweep=smoke", "experiment=pool", "~sweep.grid.lora", "~sweep.grid.qlora"]
    small, large = [*args, "sweep.max_memory_gib=0.001"], [*args, "sweep.max_memory_gib=100"]
    assert run_sweep(small) == 0  # full FT: ~0.003 GiB predicted, skipped
    assert run_sweep(small) == 0 and "nothing to run" in capsys.readouterr().out
    assert run_sweep(large) == 0  # another worker on the same storage, with more memory
    trials = tmp_path / "outputs" / "pool" / "trials"
    recs = sorted((load(d / "result.json") for d in trials.iterdir()), key=lambda r: r.status)
    assert [(r.status, r.meta["memory_limit_gib"]) for r in recs] == [
        ("ok", pytest.approx(psutil.virtual_memory().total / 1024**3)),
        ("skipped_predicted_oom", 0.001),
    ]
    storage = open_storage(f"journal://{tmp_path / 'outputs' / 'pool' / 'optuna.journal'}")
    study = optuna.load_study(study_name="pool", storage=storage)
    attrs = [(t.state.name, t.user_attrs["memory_limit_gib"]) for t in study.get_trials()]
    assert attrs == [
        ("PRUNED", 0.001),
        ("COMPLETE", pytest.approx(recs[0].meta["memory_limit_gib"])),
    ]
    assert all(t.user_attrs["device_name"] for t in study.get_trials())
