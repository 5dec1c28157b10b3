#!/usr/bin/env bash
# The GPU check of the pretraining and fine-tuning issues, as one script with a time budget.
# Runs on the lent GPU machine from the repo root, with .gpu/ carried beside it:
#   .gpu/monuseg/{images,masks}: the 30 MoNuSeg training tiles (PNG, lossless) and masks
#   .gpu/whl: wheels of the packages that machine lacks (monai, pytorch-ignite, fire, ...)
# SMOKE=1 runs the same steps with tiny settings (any machine) to check the script itself.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
WORK=${WORK:-/tmp/gpu_work}; rm -rf "$WORK"; mkdir -p "$WORK"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
if [ -d .gpu/whl ] && [ -z "${SMOKE:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl && export PYTHONPATH=/tmp/site
fi
if [ -n "${SMOKE:-}" ]; then
  SIZE=(--backbone resnet10 --crop_size 128 --max_shift 32 --negative_sizes "[96,64,32]" --num_workers 0)
  PRE=(--batch_size 2 --triplets_per_epoch 4 --max_epochs 2); FT=(--batch_size 2 --crops_per_tile 1 --max_epochs 2 --val_interval 1)
  T_PRE=120; T_FT=120; BENCH=(--backbone resnet10 --crop_size 128 --batch 2 --triplets 4 --repeats 2)
else
  SIZE=(--backbone resnet101 --crop_size 768 --num_workers 14)
  PRE=(--batch_size 8 --triplets_per_epoch 160 --max_epochs 25 --log_every 5 --checkpoint_interval 5)
  FT=(--batch_size 2 --crops_per_tile 4 --max_epochs 25 --val_interval 5 --checkpoint_interval 5 --sw_batch_size 4 --learning_rate 0.0003)
  T_PRE=130; T_FT=130; BENCH=(--backbone resnet101 --crop_size 768 --batch 8 --triplets 40 --repeats 5)
fi
run() { local budget=$1; shift; echo "+ $*"; local t0=$(date +%s); timeout "$budget" "$@"; local rc=$?; echo "= rc $rc in $(( $(date +%s) - t0 )) s"; }
nvidia-smi --query-gpu=timestamp,name,memory.used,utilization.gpu --format=csv -l 2 > "$OUT/gpu_usage.csv" 2>/dev/null &
{
  $PY -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', 'monai', monai.__version__)"
  run 60 $PY scripts/prepare.py prepare .gpu/monuseg "$WORK/prepared" --labels masks
  run 90 $PY scripts/benchmark.py pretrain "${BENCH[@]}"
  run $T_PRE $PY -m monai.bundle run --config_file configs/pretrain.json --bundle_root "$WORK/ssl" --dataset_dir "$WORK/prepared" "${SIZE[@]}" "${PRE[@]}"
  # a pretraining cut short by its budget still leaves epoch checkpoints: take the encoder from the last one
  [ -f "$WORK/ssl/models/pretrained_encoder.pt" ] || $PY -c "
import glob, torch, sys
path = sorted(glob.glob('$WORK/ssl/models/pretrain/checkpoint_epoch=*.pt'), key=lambda p: int(p.split('=')[-1][:-3]))[-1]
state = torch.load(path, weights_only=True)['network']
torch.save({k[len('encoder.'):]: v for k, v in state.items() if k.startswith('encoder.')}, '$WORK/ssl/models/pretrained_encoder.pt')
print('encoder taken from', path)"
  for init in ssl scratch; do
    # bundle_root $WORK/ssl holds models/pretrained_encoder.pt, train.json's default for --init ssl
    run $T_FT $PY -m monai.bundle run --config_file configs/train.json --bundle_root "$WORK/$init" --dataset_dir "$WORK/prepared" --init $init "${SIZE[@]}" "${FT[@]}"
    run 40 $PY -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" --bundle_root "$WORK/$init" --dataset_dir "$WORK/prepared" "${SIZE[@]}"
    cp "$WORK/$init/eval/metrics.csv" "$OUT/eval_$init.csv" 2>/dev/null
    $PY scripts/tb_to_csv.py "$WORK/$init/runs/train" "$OUT/train_curves_$init.csv"
  done
  $PY scripts/tb_to_csv.py "$WORK/ssl/runs/pretrain" "$OUT/pretrain_curves.csv"
  for init in ssl scratch; do echo "$init: $(cat "$WORK/$init/eval/metrics_summary.json" 2>/dev/null | tr -d '\n ')"; done
} 2>&1 | grep -v -E "Warning|warnings.warn|%\|" | tee "$OUT/gpu_log.txt"
kill %1 2>/dev/null
