#!/usr/bin/env bash
# The GPU measurements of the README (run on a lent NVIDIA H200 through the project's device
# tool; any CUDA machine with JAX works): benchmark.py's JSON for SSD300 / SSD512 / SSDLite,
# inference and train step, bf16 and fp32, and a jax.export artifact made on the CPU run on the
# GPU against mmdetection's reference detections.
#
#   OUT=results bash scripts/gpu_benchmark.sh   [EXPORTED=path/to/ssdlite.jaxexport FIXTURE=dir]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
if [ -n "${EXPORTED:-}" ]; then
  timeout 120 python3 scripts/check_exported.py "$EXPORTED" "$FIXTURE" 2>&1 | tee "$OUT/exported.txt"
fi
run() {  # name, then benchmark.py flags
  local name=$1; shift
  timeout ${PER_RUN:-150} python3 benchmark.py --skip-input --iters ${ITERS:-10} --out "$OUT/$name.json" "$@" \
    > "$OUT/$name.log" 2>&1 || echo "$name failed: $(tail -3 "$OUT/$name.log")"
  python3 -c "import json; r = json.load(open('$OUT/$name.json')); \
print('$name', 'infer+NMS img/s', round(r['inference']['with_postprocess_images_per_s']), \
'train img/s', round(r.get('train', {}).get('images_per_s', 0)), \
'peak MiB', round(r.get('peak_device_memory_mb', 0)))" 2>/dev/null
}
run ssd300_b64_bf16 --config ssd300_coco --batch-size 64 --precision bf16
run ssd300_b64_fp32 --config ssd300_coco --batch-size 64 --precision fp32
run ssdlite_b192_bf16 --config ssdlite_mobilenetv2_320_coco --batch-size 192 --precision bf16
run ssd512_b64_bf16 --config ssd512_coco --batch-size 64 --precision bf16 --skip-train
