#!/usr/bin/env bash
# Train one run on several machines with torchrun (no Slurm). Run this same script on every
# node, with NODE_RANK=0 on the first and 1, 2, ... on the others; MASTER_ADDR is the first
# node's address, reachable from all of them. Each node starts GPUS_PER_NODE processes.
#
#   MASTER_ADDR=10.0.0.1 NODE_RANK=0 NNODES=2 bash examples/multinode-torchrun.sh
#   MASTER_ADDR=10.0.0.1 NODE_RANK=1 NNODES=2 bash examples/multinode-torchrun.sh
#
# The run directory (--out) and the token shards must be on storage every node sees (NFS, a
# parallel file system): rank 0 writes the logs and plots, every rank writes its checkpoint
# shards, and a resume may happen at another world size.
set -euo pipefail

: "${MASTER_ADDR:?set MASTER_ADDR to the address of the first node}"
: "${NODE_RANK:?set NODE_RANK (0 on the first node)}"
NNODES=${NNODES:-2}
if [[ -z "${GPUS_PER_NODE:-}" ]]; then
    GPUS_PER_NODE=$( (nvidia-smi -L 2>/dev/null || true) | wc -l)
    (( GPUS_PER_NODE > 0 )) || GPUS_PER_NODE=1  # a CPU node: one process
fi
MASTER_PORT=${MASTER_PORT:-29500}
RECIPE=${RECIPE:-recipes/shakespeare-char.toml}
OUT=${OUT:-runs/multinode}

exec torchrun \
    --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id lmforge \
    -m lmforge train --recipe "$RECIPE" --out "$OUT" \
    --distributed.strategy fsdp "$@"
