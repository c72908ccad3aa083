#!/usr/bin/env bash
# GPU checks, one command on a CUDA machine with the project installed (see README for the CUDA build of torch):
#   1. training and generation speed, ours against transformers' LlamaForCausalLM, bf16 (model_speed.py);
#   2. pretraining under torchrun in bf16 autocast: two uninterrupted runs (run-to-run noise) and one killed with
#      SIGKILL (agent and worker) after its second checkpoint, then resumed; losses and weights compared;
#   3. HF parity of the pretrained checkpoint in bf16; 4. FSDP2 (fully_shard) against the plain model.
# Usage: bash benchmarks/gpu_check.sh RUN_WITH_SHARDS_AND_TOKENIZER [OUT]   (e.g. runs/demo after `make demo`)
# SMOKE=1 runs the same steps on CPU with the tiny preset, to check the script itself.
set -u
RUN=${1:?usage: gpu_check.sh RUN [OUT]}; O=${2:-gpu-check}; mkdir -p "$O"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python}; HERE=$(dirname "$0")
if [ -z "${SMOKE:-}" ]; then DEV=cuda DT=bfloat16 P1=125m P2=1b PP=350m B=32 MB=16 SEQ=1024 N=30 K=10 R=3 FP=125m
else DEV=cpu DT=float32 P1=tiny P2=tiny PP=tiny B=4 MB=2 SEQ=128 N=6 K=2 R=1 FP=tiny; fi
[ "$DEV" = cuda ] && $PY -c "import torch; from openhcx.train.trainer import matmul_flops as f
print(torch.cuda.get_device_name(), torch.__version__, 'bf16 matmul 8192: %.0f TFLOP/s' % (max(f(8192, torch.bfloat16, torch.device('cuda')) for _ in range(3)) / 1e12))"
echo "== 1. speed, ours against transformers ($DT on $DEV)"
$PY "$HERE/model_speed.py" --preset $P1 --device $DEV --dtype $DT --batch 8 --seq $SEQ --repeats $R 2>&1 | tee "$O/speed-$P1.txt"
$PY "$HERE/model_speed.py" --preset $P2 --device $DEV --dtype $DT --batch 4 --seq $((SEQ * 2)) --repeats $R 2>&1 | tee "$O/speed-$P2.txt"
echo "== 2. pretraining under torchrun: A and A2 uninterrupted, B killed after step $((K * 2)) and resumed"
rm -rf "$O/ptA" "$O/ptA2" "$O/ptB"
PT="-m openhcx.cli pretrain --shards $RUN/shards --tokenizer $RUN/tokenizer --model $PP --steps $N --batch_size $B
    --micro_batch_size $MB --seq_len $SEQ --warmup_steps 3 --checkpoint_every $K --mlflow false --progress false"
for r in A A2; do $PY -m torch.distributed.run --standalone --nproc_per_node 1 $PT --out "$O/pt$r" > "$O/pt$r.log" 2>&1
  echo "$r rc=$?: $(tail -1 "$O/pt$r.log")"; done
$PY -m torch.distributed.run --standalone --nproc_per_node 1 $PT --out "$O/ptB" > "$O/ptB.log" 2>&1 &
for _ in $(seq 1200); do [ -d "$O/ptB/checkpoints/step-$(printf %08d $((K * 2)))" ] && break; sleep 0.1; done
# SIGKILL cannot be forwarded: killing only the torchrun agent would leave its worker training on
pkill -9 -f -- "--out $O/ptB"; wait 2>/dev/null
echo "killed after $(wc -l < "$O/ptB/metrics.jsonl") logged steps"
$PY -m torch.distributed.run --standalone --nproc_per_node 1 $PT --out "$O/ptB" >> "$O/ptB.log" 2>&1
echo "B rc=$?: $(tail -1 "$O/ptB.log")"
$PY "$HERE/gpu_compare.py" runs "$O/ptA" "$O/ptA2" "$O/ptB"
echo "== 3. HF parity of the pretrained checkpoint"
$PY "$HERE/gpu_compare.py" parity "$O/ptA/model" $DEV
echo "== 4. FSDP2 against the plain model"
$PY "$HERE/gpu_compare.py" fsdp $DEV $FP
