#!/usr/bin/env bash
# Train the text-to-video teacher on a lent GPU machine in one call, and bring the run back.
#
# Here, once (the device machine has torch, accelerate, peft, safetensors, typer, rich and PyYAML, not diffusers):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1
# Then, through the device tool:
#   run(command="bash scripts/device_teacher.sh 7", carry=[".whl"], timeout_s=600)
# It builds the latent cache (render workers on the CPUs, the CV-VAE on the GPU), trains configs/teacher_gpu.yaml
# for MINUTES (extra key=value overrides follow), exports the EMA weights in fp16 and packs them with the run's
# curves into $OUT/teacher_gpu.tar (the best-reading checkpoint into teacher_gpu_best.tar). Here: untar, copy the
# export over src/reelkit/assets/teacher and let `reelkit bench generate` decide whether it stays (check the
# folder out again if the bench does not improve).
set -euo pipefail
MINUTES=${1:-7}
shift || true
OUT=${OUT:-runs/device_out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -m reelkit train t2v --config configs/teacher_gpu.yaml "time_limit_minutes=$MINUTES" "$@" 2>&1 \
    | tee "$OUT/train.log"
RUN=$(python3 -c "import sys, yaml; c = yaml.safe_load(open('configs/teacher_gpu.yaml')); \
print(next((a.split('=', 1)[1] for a in sys.argv[1:] if a.startswith('output_dir=')), c['output_dir']))" "$@")
# one fp16 export a file: what comes back is at most 16 MiB a file
python3 -m reelkit train export "$RUN/model" -o "$RUN/export"
tar -cf "$OUT/teacher_gpu.tar" -C "$RUN" export $(cd "$RUN" && ls loss.csv loss.png adherence.csv adherence.png \
    2>/dev/null)
if [ -d "$RUN/best" ]; then
    python3 -m reelkit train export "$RUN/best" -o "$RUN/best_export"
    tar -cf "$OUT/teacher_gpu_best.tar" -C "$RUN" best_export
fi
ls -la "$OUT"
