#!/usr/bin/env bash
# Issue 27: every GPU figure in one run, for a session that has a GPU (an H100/H200 class
# machine). It finishes in under 8 minutes there: each step has its own time limit, so a slow
# step costs its own figures only. Run from the repository root:
#     bash benchmarks/gpu_check.sh 2>&1 | tee gpu_check.log
# It needs the project's Python environment (torch with CUDA, torchvision, rasterio...):
# PYTHON=/path/to/python, else .venv/bin/python, else python3. ../shared/data, when present,
# adds real scenes to the parity check. It prints; it writes only under a temporary folder.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH=$PWD
step() {  # step SECONDS TITLE COMMAND...: run with a limit, say how it ended
    local limit=$1 title=$2; shift 2
    echo "=== $title (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    echo "=== $title: exit $rc after $((SECONDS - start)) s"
}
echo "=== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
echo "CPUs: $(nproc)"
"$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision",
    torchvision.__version__, "cuda", torch.version.cuda, "GPU seen:", torch.cuda.is_available())' \
    || { echo "no usable Python environment ($PY): set PYTHON"; exit 2; }
# 1. Same detections on the GPU as the CPU reference (simulated and real scenes).
step 100 "device parity" "$PY" benchmarks/device_parity.py --device cuda
# 2. In-process CPU (2 threads) and GPU (network alone, fp32; detect() end to end) on a
#    4096 x 4096 scene; Faster R-CNN in-process on the CPU; whole process (berthwatch detect
#    against benchmarks/rcnn_detect.py) on a 2048 x 2048 scene, on the CPU and on the GPU.
step 230 "throughput, 4096 x 4096 and whole process 2048 x 2048" \
    "$PY" benchmarks/detect_bench.py --device cuda --threads 2
# 3. A full 10980 x 10980 tile end to end on the GPU (reading included): seconds, peak RSS,
#    peak GPU memory. (The 2-core CPU full tile is measured by benchmarks/detect_bench.py
#    --full-tile --device cpu on a 2-core machine.)
step 140 "full tile on the GPU" \
    "$PY" benchmarks/detect_bench.py --device cuda --full-tile --gpu-only
echo "=== done after $SECONDS s"
