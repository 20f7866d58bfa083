#!/bin/bash
# Issue 9 "done when" measurement: full Fashion-MNIST training split less 1,000 validation points,
# 2 epochs of 461 iterations = 922, AutoAttack standard on 1,000 test points.
cd /work/main
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# as run: art-generalist benchmark --dataset fashion_mnist --data-root /work/shared/data --eps 0.1 --max-iter 5 --epochs 2 --n-val 1000 --n-eval 1000 --per-iteration-schedules --aa-version standard --no-base-learners --threads 1 --seed 0 --methods generalist,art_madry,art_trades@1 --out /work/runs/fmnist_full922 --resume --quiet
art-generalist benchmark --dataset fashion_mnist --data-root /work/shared/data --eps 0.1 --max-iter 5 --epochs 2 --n-val 1000 --n-eval 1000 --per-iteration-schedules --aa-version standard --no-base-learners --threads 1 --seed 0 --methods generalist,art_madry,art_trades@1 --out lab/results/fmnist_full922 --resume --quiet
