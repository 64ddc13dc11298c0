#!/usr/bin/env bash
# One prepared GPU benchmark (issue 15): random-init ~1.1B Llama in bf16 on a CUDA machine with no network.
#   bash benchmarks/gpu.sh --out DIR             # < 8 minutes; DIR/gpu_bench.json + a table on stdout
#   bash benchmarks/gpu.sh --out DIR --dry_run   # CPU, tiny model, seconds (what the tests run)
# See benchmarks/gpu_bench.py and docs/scale_out.md, section 4.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# hard stop at 8 minutes; the JSON is rewritten after every section, so finished sections survive
exec timeout --signal=TERM 475 "$PY" "$HERE/gpu_bench.py" "$@"
