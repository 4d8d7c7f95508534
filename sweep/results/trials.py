"""Finding a trial and reading its files: its directory, record, resolved config and adapter.

    python -c "from sweep.results.trials import find_trial; print(find_trial('lora r=16'))"

A trial is named by its directory, a fragment of its directory name or label under
outputs/*/trials or outputs/*/single, or its MLflow run id (`find_trial`). A run that is only in
MLflow is rebuilt in a temporary directory from its logged record and adapter. The record is read
with `sweep.results.record.load`; the config is config.json, else the record's run block
(`trial_config`); the adapter (or a full checkpoint) is `<trial>/adapter` (`adapter_dir`).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sweep.results import record
from sweep.results.record import TrialResult
from sweep.settings.compose import ConfigError, to_config
from sweep.settings.schema import Config

ADAPTER = "adapter"
RESULT = "result.json"
RUN_ID = re.compile(r"[0-9a-f]{32}")  # an MLflow run id


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
    from sweep.results.tracking import uri

    mlflow = f"no MLflow run with that id in {uri()}" if is_run_id else "not an MLflow run id"
    raise ConfigError(
        f"no trial {text!r}: not a directory, no trial under {outputs}/*/trials or "
        f"{outputs}/*/single whose name or label contains it, and {mlflow}"
    )


def read_record(trial_dir: Path) -> TrialResult | None:
    """The trial's record (`sweep.results.record.load`), or None when it is missing or unreadable."""
    try:
        return record.load(trial_dir / RESULT)
    except (OSError, ValueError):
        return None


def _trial_dirs(outputs: Path) -> list[Path]:
    dirs = sorted(outputs.glob("*/trials/*")) + sorted(outputs.glob("*/single/*"))
    return [d for d in dirs if d.is_dir()]


def _label(trial_dir: Path) -> str:
    rec = read_record(trial_dir)
    return str(rec.run.get("label", "")) if rec is not None else ""


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

    from sweep.results.tracking import client

    c = client()
    try:
        c.get_run(run_id)
    except MlflowException:
        return None
    tmp = Path(tempfile.mkdtemp(prefix=f"sweep-run-{run_id[:8]}-"))
    try:
        c.download_artifacts(run_id, RESULT, str(tmp))
    except (MlflowException, OSError):
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"MLflow run {run_id} has no {RESULT} (not a trial run)") from None
    text = (tmp / RESULT).read_text()
    rec = record.load(tmp / RESULT)
    for d in _trial_dirs(outputs):  # the same record on disk: use that dir (and its adapter)
        if (d / RESULT).is_file() and (d / RESULT).read_text() == text:
            shutil.rmtree(tmp, ignore_errors=True)
            return d
    if rec.run.get("method") == "full":
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(
            f"MLflow run {run_id} is full fine-tuning: its checkpoint is not logged to MLflow, "
            f"only kept in its trial dir, and no trial under {outputs}/ has this record"
        )
    (tmp / "config.json").write_text(json.dumps(rec.run["config"], indent=2))
    # No adapter logged (full FT checkpoints stay on disk): adapter_dir() says so.
    with contextlib.suppress(MlflowException, OSError):
        c.download_artifacts(run_id, ADAPTER, str(tmp))
    return tmp


def trial_config(trial_dir: Path, overrides: Sequence[str] = ()) -> Config:
    """The trial's resolved config (config.json, else the record's run block), plus dotted overrides."""
    if (trial_dir / "config.json").is_file():
        raw = json.loads((trial_dir / "config.json").read_text())
    elif (trial_dir / RESULT).is_file():
        raw = record.load(trial_dir / RESULT).run["config"]
    else:
        raise ConfigError(f"{trial_dir}: no config.json or {RESULT}; not a trial directory")
    if overrides:
        from omegaconf import OmegaConf

        raw = OmegaConf.merge(OmegaConf.create(raw), OmegaConf.from_dotlist(list(overrides)))
    return to_config(raw)


def adapter_dir(trial_dir: Path, full: bool = False) -> Path:
    """`<trial>/adapter` (a full checkpoint when `full`), or a one-line error saying why not."""
    d = trial_dir / ADAPTER
    if (d / ("config.json" if full else "adapter_config.json")).is_file():
        return d
    rec, why = read_record(trial_dir), ""
    if rec is not None:
        error = str(rec.train.get("error") or "").strip().splitlines()
        why = f" (trial status {rec.train.get('status')}{': ' + error[0][:160] if error else ''})"
    raise ConfigError(f"{trial_dir}: no adapter saved in {d}{why}")
