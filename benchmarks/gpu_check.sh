#!/usr/bin/env bash
# One GPU check, under 8 minutes on one GPU (H100 class; each step has a timeout, 450 s in all): the benchmarks on the GPU, then CPU against GPU.
#
#   bash benchmarks/gpu_check.sh                  # on a machine with CUDA
#   bash benchmarks/gpu_check.sh --device cpu     # smoke run without a GPU: the CUDA benchmarks are skipped
#
# 1. benchmarks/bench_interp.py --device cuda --quick  (the medium preset and ~100M parameters: recording
#    against a plain forward pass, TransformerLens and nnsight);
# 2. benchmarks/bench_real_width.py --device cuda      (LLaDA-8B's and Dream-7B's widths, 2 layers,
#    bfloat16 and float32, 1 and 50 masks; the full models extrapolated to batch 1-16);
# 3. benchmarks/gpu_agreement.py --device cuda         (organism-llada, organism-dream and medium, float32
#    and bfloat16: logits and every recorded quantity, CPU against GPU; one table of difference /
#    tolerance ratios, the tolerances stated in that script; a ratio above 1 fails).
# Other arguments go to gpu_agreement.py (e.g. --models organism-llada --dtypes float32).
# Exit code: 0 when every step ran and the agreement passed.
set -euo pipefail

device=cuda
if [[ "${1:-}" == "--device" ]]; then
    device="$2"
    shift 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 MALLOC_MMAP_THRESHOLD_=65536
start=$SECONDS

if [[ "$device" == cuda* ]]; then
    "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run with --device cpu for a smoke run')"
    nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader || true
    echo "== bench_interp.py --device $device --quick"
    timeout 120 "$python" "$here/bench_interp.py" --device "$device" --quick
    echo "== bench_real_width.py --device $device"
    timeout 180 "$python" "$here/bench_real_width.py" --device "$device"
else
    echo "== benchmarks on $device: skipped (the CUDA parts; run them with --device cuda)"
fi

echo "== gpu_agreement.py --device $device"
timeout 150 "$python" "$here/gpu_agreement.py" --device "$device" "$@"
echo "== gpu_check.sh done in $((SECONDS - start)) s"
