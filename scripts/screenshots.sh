#!/usr/bin/env bash
# The README's MLflow screenshots, taken during a live sweep with Debian's chromium, headless:
#   apt-get install chromium && bash scripts/screenshots.sh      # writes docs/mlflow-*.png
# A short default sweep runs into a store of its own; once a trial has finished and another
# is training, the runs table and the training trial's metric charts are captured.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s install && .venv/bin/pip install -q -c constraints.txt -e '.[dev,docs]'  # + Playwright
OUT=${OUT:-docs}
PORT=${PORT:-5055}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
.venv/bin/python -m sweep run sweep=default experiment=live-demo "output_dir=$WORK/outputs" \
  "report.dir=$WORK/reports" train.steps=40 eval.size=30 eval.every=10 >"$WORK/sweep.log" 2>&1 &
SWEEP=$!
.venv/bin/mlflow ui --backend-store-uri "$MLFLOW_TRACKING_URI" --host 127.0.0.1 --port "$PORT" \
  >"$WORK/ui.log" 2>&1 &
UI=$!
trap 'kill $SWEEP $UI 2>/dev/null || true' EXIT

# until a trial is FINISHED and one RUNNING has logged 10 steps: "<experiment id> <run id>"
ids=""
for _ in $(seq 1 240); do
  sleep 5
  ids=$(.venv/bin/python - <<'PY' 2>/dev/null || true
from sweep.results import tracking
c = tracking.client()
exp = c.get_experiment_by_name("live-demo")
runs = c.search_runs([exp.experiment_id]) if exp else []
kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
done = [r for r in kids if r.info.status == "FINISHED"]
live = [r for r in kids if r.info.status == "RUNNING"]
if done and live and len(c.get_metric_history(live[0].info.run_id, "train_loss")) >= 10:
    print(exp.experiment_id, live[0].info.run_id)
PY
)
  [ -n "$ids" ] && break
done
[ -n "$ids" ] || { echo "no running trial to capture; see $WORK/sweep.log" >&2; exit 1; }
read -r EXP RUN <<<"$ids"
# scripts/shot.py drives chromium with Playwright: `chromium --screenshot` fires at the load
# event, when the trial's charts still are spinners (they load lazily afterwards). It waits
# until no spinner or skeleton shows, the --require element does, and every chart has drawn.
shot() {  # shot FILE URL [shot.py option...]
  .venv/bin/python scripts/shot.py "$2" "$1" --wait-s 90 "${@:3}"
}
# workflowType: MLflow 3.17's UI opens in its GenAI view without it (sweep.results.tracking.ui_url).
UI_URL="http://127.0.0.1:$PORT/#/experiments/$EXP/runs"
CLOSE_ASSISTANT='[data-component-id="mlflow.assistant.chat_panel.close"]'  # the side panel
# the parent run's row opens onto its trials; a trial's 7 charts take 3 rows of 3;
# plotly's toolbar over every chart is hidden
shot "$OUT/mlflow-runs.png" "$UI_URL?workflowType=machine_learning" --size 1600x1000 \
  --require .ag-row \
  --click "$CLOSE_ASSISTANT" --click '.ag-row [data-component-id$="runnamecellrenderer.tsx_46"]'
shot "$OUT/mlflow-trial.png" "$UI_URL/$RUN/model-metrics?workflowType=machine_learning" \
  --size 1600x1400 --require .js-plotly-plot --click "$CLOSE_ASSISTANT" \
  --css '.modebar-container { display: none !important; }'
echo "screenshots in $OUT/ (experiment $EXP, running trial $RUN)"
