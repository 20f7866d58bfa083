#!/bin/bash
cd /work/main
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# as run: art-generalist transfer --source-dataset fashion_mnist --target-dataset mnist --data-root /work/shared/data --model smallcnn --source-eps 0,0.05,0.1,0.2 --generalist-eps 0.1 --source-epochs 10 --source-n-train 10000 --target-n-train 2000 --target-epochs 6 --seeds 0,1,2 --n-eval 1000 --threads 1 --quiet --out /work/runs/transfer_fmnist_mnist
art-generalist transfer --source-dataset fashion_mnist --target-dataset mnist --data-root /work/shared/data --model smallcnn --source-eps 0,0.05,0.1,0.2 --generalist-eps 0.1 --source-epochs 10 --source-n-train 10000 --target-n-train 2000 --target-epochs 6 --seeds 0,1,2 --n-eval 1000 --threads 1 --quiet --out lab/results/transfer_fmnist_mnist
