#!/usr/bin/env bash
# Prepares the serving load test for a GPU machine (no network, no TensorFlow/SeqIO/gin/FastAPI):
# wheels of the serve extra (+ gin-config, sentencepiece) for CPython 3.10-3.13, the T5X fixture,
# the vocabulary and the tasks' inputs formatted here. Run on a CPU machine with the data extra:
#
#   PROMPT_TUNING_SHARED=../shared bash benchmarks/serve_bundle.sh
#
# then, on the device tool (about 5 minutes; or `bash benchmarks/gpu_check.sh serve`):
#   run(command="python -m pip install -q --no-index --find-links .serve_bundle/wheels fastapi \
#       uvicorn httptools gin-config sentencepiece; PYTHONPATH=$PWD python -m benchmarks.serve_load \
#       --inputs_json .serve_bundle/inputs.json --fixture .serve_bundle/t5x_tiny/checkpoint_3 \
#       --vocab .serve_bundle/sentencepiece.model --time_limit_s 45 \
#       --json $OUT/gpu_serve_load.json", timeout_s=540, carry=[".serve_bundle"])
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${PROMPT_TUNING_SHARED:-../shared}"
B=.serve_bundle
mkdir -p "$B/wheels"
for v in 3.10 3.11 3.12 3.13; do
  pip download -q --only-binary=:all: --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --python-version "$v" \
    -d "$B/wheels" fastapi uvicorn httptools gin-config sentencepiece
done
cp -r "$SHARED/fixtures/t5x_tiny" "$B/"
cp "$SHARED/fixtures/t5_vocab/sentencepiece.model" "$B/"
PROMPT_TUNING_SHARED="$SHARED" python - <<'PY'
import json
from benchmarks.serve_load import task_inputs
json.dump(task_inputs(), open('.serve_bundle/inputs.json', 'w'))
PY
du -sh "$B"
