#!/usr/bin/env bash
# The GPU slice of the experiment issue: the `paper` preset (ResNet-101, 768 px) shortened to fit
# one short call, ssl vs scratch at 10 % labels, one seed. Run from the repo root with .gpu/
# carried (see scripts/gpu_check.sh); writes paper.md / paper.png and logs under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .gpu/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl && export PYTHONPATH=/tmp/site
fi
ARGS=(--preset paper --data .gpu/monuseg --out /tmp/exp_paper --inits scratch,ssl --fractions 0.1 --seeds 0 --report_to "$OUT")
timeout "${BUDGET:-270}" python3 scripts/experiment.py run "${ARGS[@]}" --finetune_steps "${STEPS:-200}" --pretrain_epochs "${PRE_EPOCHS:-3}"
python3 scripts/experiment.py report --preset paper --out /tmp/exp_paper --report_to "$OUT"
tail -n 5 /tmp/exp_paper/pretrain/*/log.txt /tmp/exp_paper/cells/*/eval_log.txt > "$OUT/tails.txt" 2>/dev/null
grep -h "val_mean_aji:" /tmp/exp_paper/cells/*/train_log.txt > "$OUT/val_curve.txt" 2>/dev/null
