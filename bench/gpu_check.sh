#!/usr/bin/env bash
# The GPU checks behind docs/BENCHMARKS.md ("Conv net on CUDA"), in one go, on a CUDA machine with
# metasweep installed, from the repository root:
#
#     bash bench/gpu_check.sh OUTDIR [tests,precision,determinism,bench,train,sweep] [OMNIGLOT_ROOT]
#
# tests: tests/test_cuda.py (GPU = CPU float64 meta-gradients, float32 accuracy, exact resume, a trial)
# bench: bench/bench_conv.py on cuda - Omniglot 5-way 1-shot, meta-batch 32: MAML and MT-net with and
#        without CUDA graphs, 1 and 15 queries, the vmap and loop engines, TF32 on, real episodes from
#        the cache (with the sampling rate); ANIL, T-net, Meta-SGD; MiniImagenet 5-way (meta-batch 4, 5 steps)
# train: `metasweep train` MAML and MT-net on cuda (real Omniglot under OMNIGLOT_ROOT), 2000 meta-steps
# precision: bench/conv_precision.py (float32 vs float64 meta-gradient per math setting)
# determinism: bench_conv with deterministic cuDNN (the default) and without
# sweep: `metasweep sweep omniglot-smoke` through Ray Tune with 0.25 GPU per trial, 4 trials at a time
# OMNIGLOT_ROOT defaults to the two minimal background sets unzipped from shared/data/omniglot
# (then the small split 200,40,52 is used). Every part's output lands in OUTDIR.
set -u
OUT=${1:-gpu-check}
PARTS=${2:-tests,precision,determinism,bench,train,sweep}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SPLITS=()
ROOT=${3:-}
if [ -z "$ROOT" ]; then
    ROOT=/tmp/metasweep-omniglot
    python3 -c "import sys; sys.path.insert(0, 'tests'); from pathlib import Path; \
from test_images import unzip_omniglot; unzip_omniglot(Path('$ROOT'))"
    SPLITS=(--splits 200,40,52)
fi
export METASWEEP_CACHE_DIR=${METASWEEP_CACHE_DIR:-/tmp/metasweep-cache}
MS=(python3 -c 'import sys; from metasweep.sweeps.cli import main; sys.argv[0] = "metasweep"; main()')

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', \
torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'tf32 conv default', torch.backends.cudnn.allow_tf32)"
} 2>&1 | tee "$OUT/gpu.txt"

if [[ $PARTS == *tests* ]]; then
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/tests.txt" | tail -25
fi

if [[ $PARTS == *precision* ]]; then
    timeout 90 python3 bench/conv_precision.py --device cuda --variants maml,mt-net 2>&1 | tee "$OUT/precision.jsonl"
fi

if [[ $PARTS == *determinism* ]]; then  # what deterministic cuDNN costs, with CUDA graphs and without
    for v in maml mt-net; do for nd in "" --nondeterministic; do
        timeout 60 python3 bench/bench_conv.py --device cuda --meta-batch 32 --variant "$v" --queries 1 --steps 40 \
            --rounds 5 --engines batched-graph,batched $nd
    done; done 2>&1 | tee "$OUT/determinism.jsonl"
fi

if [[ $PARTS == *bench* ]]; then
    B=(python3 bench/bench_conv.py --device cuda --meta-batch 32)
    for v in maml mt-net; do
        for q in 1 15; do timeout 60 "${B[@]}" --variant "$v" --queries "$q" --steps 40 --rounds 5 \
            --engines batched-graph,batched; done
        timeout 90 "${B[@]}" --variant "$v" --queries 1 --steps 4 --rounds 3 --engines vmap,loop
        timeout 60 "${B[@]}" --variant "$v" --queries 1 --steps 40 --rounds 5 --engines batched-graph,batched --tf32
        timeout 60 "${B[@]}" --variant "$v" --queries 1 --steps 40 --rounds 5 --engines batched-graph \
            --data-root "$ROOT" "${SPLITS[@]}"
    done 2>&1 | tee "$OUT/bench.jsonl"
    for v in anil t-net meta-sgd; do timeout 60 "${B[@]}" --variant "$v" --queries 1 --steps 40 --rounds 5 \
        --engines batched-graph,batched; done 2>&1 | tee -a "$OUT/bench.jsonl"
    for v in maml mt-net; do timeout 60 python3 bench/bench_conv.py --device cuda --task miniimagenet --meta-batch 4 \
        --variant "$v" --queries 15 --inner-steps 5 --steps 20 --rounds 5 --engines batched-graph,batched,loop; \
    done 2>&1 | tee -a "$OUT/bench.jsonl"
fi

if [[ $PARTS == *train* ]]; then
    for v in maml mt-net; do
        timeout 110 "${MS[@]}" train --task omniglot --data-root "$ROOT" "${SPLITS[@]}" --ways 5 --train-shots 1 \
            --queries 1 --variant "$v" --alpha 2.0 --beta 0.001 --meta-batch 32 --meta-steps 2000 \
            --report-every 500 --val-tasks 100 --eval-tasks 600 --eval-steps 1,3,10 --device cuda \
            --out "$OUT/train-$v" 2>&1 | tail -12
    done 2>&1 | tee "$OUT/train.txt"
fi

if [[ $PARTS == *sweep* ]]; then
    python3 - "$OUT/omniglot-gpu.yaml" "$ROOT" <<'EOF'
import sys, yaml
from metasweep.sweeps.spec import load_spec
_, text, _ = load_spec("omniglot-smoke")
spec = yaml.safe_load(text)
spec["experiment"] = "omniglot-gpu"
spec["resources"] = {"cpu": 2, "gpu": 0.25}
spec["max_concurrent"] = 4
spec["task"]["options"]["data_root"] = sys.argv[2]
if not sys.argv[2].startswith("/tmp/metasweep-omniglot"):
    spec["task"]["options"].pop("splits", None)
yaml.safe_dump(spec, open(sys.argv[1], "w"), sort_keys=False)
EOF
    timeout 180 "${MS[@]}" sweep "$OUT/omniglot-gpu.yaml" --storage "$OUT/results" 2>&1 | tee "$OUT/sweep.txt" | tail -30
    python3 -c "
import collections
from metasweep.analysis.store import read_dataset
t = read_dataset('$OUT/results/omniglot-gpu')['trials']
print('trials by (stage, status, device):',
      dict(collections.Counter(zip(t['stage'].to_pylist(), t['status'].to_pylist(), t['device'].to_pylist()))))
" 2>&1 | tee -a "$OUT/sweep.txt"
fi
