#!/usr/bin/env bash
# GPU benchmark pass for a session with a device machine (one H100; bf16 activations).
# Shape: batch 32, inputs 512 + prompt 100, targets 16. Writes one JSON per run, a log and a
# markdown summary under $OUT.
#
#   bash benchmarks/gpu_check.sh            # everything (~10+ min: more than one device call)
#   bash benchmarks/gpu_check.sh base       # base train + inference, each beside HF PEFT
#   bash benchmarks/gpu_check.sh big        # large, xl, xxl train steps (ours only)
#   bash benchmarks/gpu_check.sh variants   # base with the fold off; base with fused attention
#   bash benchmarks/gpu_check.sh table      # base step with a table of 8 prompts (mixed rows)
#                                           # beside train_base; mixed batch == each prompt alone
#   bash benchmarks/gpu_check.sh train_xl   # one run by name (several may follow)
#   bash benchmarks/gpu_check.sh real       # real RTE batches, base, ours beside PEFT, per
#                                           # batching mode (benchmarks/real_data.py; ~5-9 min)
#   bash benchmarks/gpu_check.sh cost       # base: model tuning beside prompt tuning (step time,
#                                           # memory plan, optimizer state, checkpoint bytes)
#   bash benchmarks/gpu_check.sh real_causal_lm  # decoder-only (#25): a random Llama (d 512, 8
#                                           # layers, GQA) on real RTE / BoolQ / SST-2 rows, ours
#                                           # beside PEFT CAUSAL_LM (causal_lm_real_data.py)
#
# On the device tool, run the two halves as two calls (each command may run 10 minutes):
#   run(command="bash benchmarks/gpu_check.sh base", timeout_s=560)
#   run(command="bash benchmarks/gpu_check.sh big",  timeout_s=560)
#   run(command="bash benchmarks/gpu_check.sh cost", timeout_s=540)   # model vs prompt tuning
#
# The real-data run needs RTE tokenized beforehand: the GPU machine has no TensorFlow/SeqIO.
# On a CPU machine with them (and $PROMPT_TUNING_DATA_DIR, $PROMPT_TUNING_VOCAB set):
#   python -m benchmarks.real_data --task rte --prepare_only --out benchmarks/data/rte_i512_t8.npz
# (276 KB; benchmarks/data/ is git-ignored, so carry it), then on the device tool:
#   run(command="bash benchmarks/gpu_check.sh real", timeout_s=580, carry=["benchmarks/data"])
# The decoder-only part reads its own .npz files (rows tokenized by data/causal_lm.py with T5's
# SentencePiece as a tokenizer.json; ~1 MB together), prepared the same way on the CPU machine:
#   for t in rte boolq sst2; do python -m benchmarks.causal_lm_real_data --task $t \
#     --prepare_only --out benchmarks/data/clm_${t}_i512_t8.npz; done
#   run(command="bash benchmarks/gpu_check.sh real_causal_lm", timeout_s=580,
#       carry=["benchmarks/data"])
#
# The serving load test (#13) needs the bundle benchmarks/serve_bundle.sh builds on a CPU machine
# (wheels of the serve extra, the T5X fixture, the vocabulary, the tasks' inputs), then:
#   run(command="bash benchmarks/gpu_check.sh serve", timeout_s=540, carry=[".serve_bundle"])
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu_check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Runs without the PEFT side may use more of the card than JAX's default 75%.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
PY="${PYTHON:-python3}"
PARTS=("${@:-all}")
LIMIT="${LIMIT:-270}"  # seconds per benchmark process
SHAPE=(--batch 32 --inputs 512 --prompt 100 --targets 16 --dtype bfloat16 --warmup 3 --steps 10)
LOG="$OUT/gpu_check.log"
REAL_DATA="${REAL_DATA:-benchmarks/data}"  # the tokenized .npz files (benchmarks/real_data.py)

bench() {  # bench NAME MODULE ARGS...: one process, its JSON in $OUT/NAME.json
  local name=$1 module=$2
  shift 2
  echo "== $name: $module $*" | tee -a "$LOG"
  local start=$SECONDS
  if timeout "$LIMIT" "$PY" -m "$module" "$@" --json "$OUT/$name.json" >>"$LOG" 2>&1; then
    tail -n 1 "$LOG"
  else
    echo "!! $name failed or timed out (exit $?); see $LOG" | tee -a "$LOG"
  fi
  echo "   ($((SECONDS - start)) s)" | tee -a "$LOG"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c 'import jax, torch, transformers, peft; print("jax", jax.__version__, jax.devices(),
"| torch", torch.__version__, "| transformers", transformers.__version__, "| peft",
peft.__version__)'; } 2>&1 | tee -a "$LOG"

real_data() {  # real_data NAME TASK ARGS...: benchmarks.real_data on the prepared .npz
  local name=$1 task=$2 npz="$REAL_DATA/$2_i512_t8.npz"
  shift 2
  if [ ! -f "$npz" ]; then
    echo "!! $name: $npz is missing. Prepare it on a CPU machine with TensorFlow/SeqIO:" \
         "python -m benchmarks.real_data --task $task --prepare_only --out $npz;" \
         "then carry benchmarks/data (run(..., carry=[\"benchmarks/data\"]))." | tee -a "$LOG"
    return
  fi
  # Compiles one step per distinct batch shape (about 10 here) before timing: more than $LIMIT.
  LIMIT="${REAL_LIMIT:-540}" bench "$name" benchmarks.real_data --task "$task" --data "$npz" "$@"
}

causal_lm_real() {  # causal_lm_real NAME TASK: benchmarks.causal_lm_real_data on its .npz
  local name=$1 task=$2 npz="$REAL_DATA/clm_$2_i512_t8.npz"
  if [ ! -f "$npz" ]; then
    echo "!! $name: $npz is missing. Prepare it on a CPU machine with TensorFlow/SeqIO:" \
         "python -m benchmarks.causal_lm_real_data --task $task --prepare_only --out $npz;" \
         "then carry benchmarks/data (run(..., carry=[\"benchmarks/data\"]))." | tee -a "$LOG"
    return
  fi
  # bf16 on both sides (ours: activations; PEFT: autocast), batch 32 as the issue asks.
  LIMIT="${CLM_LIMIT:-180}" bench "$name" benchmarks.causal_lm_real_data --task "$task" \
    --data "$npz" --batch 32 --steps 8 --repeats 2
}

serve_load() {  # 2,000 mixed RTE/CB/BoolQ requests: 32 clients vs one at a time (loopback)
  local b=.serve_bundle
  if [ ! -f "$b/inputs.json" ]; then
    echo "!! serve_load: $b is missing. Build it on a CPU machine:" \
         "PROMPT_TUNING_SHARED=../shared bash benchmarks/serve_bundle.sh;" \
         "then carry it (run(..., carry=[\".serve_bundle\"]))." | tee -a "$LOG"
    return
  fi
  "$PY" -m pip install -q --no-index --find-links "$b/wheels" fastapi uvicorn httptools \
    gin-config sentencepiece >>"$LOG" 2>&1
  LIMIT="${SERVE_LIMIT:-480}" bench serve_load benchmarks.serve_load \
    --inputs_json "$b/inputs.json" --fixture "$b/t5x_tiny/checkpoint_3" \
    --vocab "$b/sentencepiece.model" --time_limit_s 45
}

run_one() {
  case "$1" in
    # Base beside PEFT: f32 frozen weights + bf16 activations here, torch.autocast(bf16) there.
    train_base) bench train_base benchmarks.train_step --size base "${SHAPE[@]}" --peft ;;
    # The same step with T5X's cross-attention key/value projection (the fold's effect).
    train_base_projected) bench train_base_projected benchmarks.train_step --size base \
        "${SHAPE[@]}" --cross_attention_fold never ;;
    # jax.nn.dot_product_attention (cuDNN's fused kernel where it applies) for the attention core.
    train_base_dpa) bench train_base_dpa benchmarks.train_step --size base "${SHAPE[@]}" \
        --attention_impl dot_product_attention ;;
    infer_base) bench infer_base benchmarks.inference --size base "${SHAPE[@]}" --peft ;;
    train_large) bench train_large benchmarks.train_step --size large "${SHAPE[@]}" ;;
    # xl: bf16 frozen weights (6 GB) and 'dots' remat (keeps the weight-matmul outputs,
    # recomputes attention) hold activations near 20 GB.
    train_xl) bench train_xl benchmarks.train_step --size xl "${SHAPE[@]}" \
        --frozen_dtype bfloat16 --remat dots ;;
    # xxl: 11B weights in bf16 (22 GB); full remat keeps only each layer's input.
    train_xxl) bench train_xxl benchmarks.train_step --size xxl "${SHAPE[@]}" \
        --frozen_dtype bfloat16 --remat full --warmup 2 --steps 6 ;;
    # Real RTE train batches at the paper shape (512 + 100 / 8): ours (length buckets: default,
    # grouped, fixed) beside PEFT (dynamic padding, group_by_length), bf16 on both sides.
    real_rte_base) real_data real_rte_base rte --size base --dtype bfloat16 --batch 32 \
        --steps 12 --fixed_steps 4 --repeats 2 ;;
    # A prompt table (#12): 8 prompts, row b asks prompt b % 8; compare with train_base (K = 1).
    table_base_k8) bench table_base_k8 benchmarks.train_step --size base "${SHAPE[@]}" \
        --num_prompts 8 ;;
    # Logits of a mixed batch vs each prompt's rows alone (float32 and bfloat16), greedy too.
    table_check) echo "== table_check" | tee -a "$LOG"
        timeout "$LIMIT" "$PY" -m benchmarks.table_check --size base \
          --json "$OUT/table_check.json.txt" >>"$LOG" 2>&1 || echo "!! table_check failed" ;;
    # Model tuning (every weight, model_tuning.gin's factored Adafactor, L tokens) beside prompt
    # tuning (the paper's Adafactor, L + P tokens), and one kept checkpoint of each after the
    # real loop (two saves of the whole base model: more than $LIMIT with the compiles).
    cost_base) LIMIT="${COST_LIMIT:-480}" bench cost_base benchmarks.tuning_cost --sizes base \
        "${SHAPE[@]}" ;;
    # Decoder-only prompt tuning (#25), ours (the library's grouped, bucketed batches) beside
    # PEFT CAUSAL_LM (dynamic padding, group_by_length), one task each.
    clm_rte|clm_boolq|clm_sst2) causal_lm_real "$1" "${1#clm_}" ;;
    serve_load) serve_load ;;
    *) echo "unknown run $1" | tee -a "$LOG" ;;
  esac
}

for part in "${PARTS[@]}"; do
  case "$part" in
    all) names=(train_base infer_base train_base_projected train_base_dpa train_large train_xl
                train_xxl real_rte_base cost_base clm_rte clm_boolq clm_sst2) ;;
    variants) names=(train_base_projected train_base_dpa) ;;
    base) names=(train_base infer_base) ;;
    real) names=(real_rte_base) ;;
    real_causal_lm) names=(clm_rte clm_boolq clm_sst2) ;;
    table) names=(table_base_k8 table_check) ;;
    serve) names=(serve_load) ;;
    cost) names=(cost_base) ;;
    big) names=(train_large train_xl train_xxl) ;;
    *) names=("$part") ;;
  esac
  for name in "${names[@]}"; do run_one "$name"; done
done

"$PY" -m benchmarks.summarize "$OUT"/*.json >"$OUT/summary.md" 2>>"$LOG"
cat "$OUT/summary.md"
