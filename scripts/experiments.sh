#!/usr/bin/env bash
# Regenerates every committed record in results/, the training runs as Ray sweeps, then the README's generated sections,
# the figures and the shipped weights. About 12 hours of runs on 2 CPU cores; run it in the background:
#   nohup scripts/experiments.sh > experiments.log 2>&1 &
# Benchmarks last, on a quiet machine: their figures are only meaningful when nothing else runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# the training runs, as sweeps on a local Ray instance (`tinymnist sweep`: as many runs at a time as there are
# cores, one torch thread each, as the committed records were made); finished records are skipped, so a
# rerun after an interruption continues where it stopped
# the reference progression
tinymnist sweep Model_6 --seeds 1-5
tinymnist sweep Model_1 Model_2 Model_3 Model_4 Model_5 --seeds 1
# beyond the reference
tinymnist sweep Model_7 Model_9 Model_10 Model_11 Model_14 Model_15 --seeds 1-5
tinymnist sweep Model_8 Model_12 Model_13 --seeds 1  # Model_13 learns from Model_11's records (made above)
# Model_17 to 21: three Model_11 runs teach (their records are made above)
tinymnist sweep Model_16 Model_17 Model_18 Model_19 Model_20 Model_21 Model_22 Model_23 Model_24 Model_25 \
  Model_26 Model_27 Model_28 Model_29 --seeds 1-5
tinymnist sweep Model_30 --seeds 1-2  # stopped after two seeds: both missed (step 30 in the README)
tinymnist sweep Model_31 Model_32 Model_33 Model_34 Model_35 Model_36 Model_37 Model_38 Model_39 Model_40 \
  Model_41 --seeds 1-5  # 35 to 38: three Model_11 runs teach
tinymnist sweep Model_7 Model_9 Model_11 Model_26 Model_41 --seeds 1 --val 10000 --out results/val
# the role models on seeds they were not chosen on (docs/results.md, Other seeds)
tinymnist sweep Model_41 Model_21 --seeds 6-10 --out results/other-seeds --teachers results
# speed
tinymnist bench Model_6 --repeat 7 --save results/bench/1-same-network.json
tinymnist bench Model_6 --batch-size 256 --repeat 7 --save results/bench/2-same-network-batch256.json
tinymnist bench Model_6 --batch-size 128 --repeat 7 --save results/bench/19-same-network-batch128.json
tinymnist bench Model_26 --epochs 15 --repeat 3 --save results/bench/3-end-to-end.json
tinymnist bench Model_6 --options --repeat 7 --save results/bench/4-options.json
tinymnist bench Model_9 --epochs 15 --save results/bench/5-end-to-end-Model_9.json
tinymnist bench Model_7 --epochs 15 --save results/bench/8-end-to-end-Model_7.json
tinymnist bench Model_11 --repeat 5 --save results/bench/6-final-channels-last.json
tinymnist bench Model_11 --channels-last no --repeat 5 --save results/bench/7-final-nchw.json
tinymnist bench Model_11 --options --save results/bench/9-options-final.json
tinymnist bench Model_24 --epochs 15 --save results/bench/10-end-to-end-Model_24.json
tinymnist bench Model_23 --epochs 15 --save results/bench/11-end-to-end-Model_23.json
tinymnist bench Model_25 --epochs 15 --save results/bench/12-end-to-end-Model_25.json
tinymnist bench Model_11 --epochs 15 --repeat 3 --save results/bench/13-end-to-end-Model_11.json
tinymnist bench Model_27 --epochs 15 --repeat 3 --save results/bench/14-end-to-end-Model_27.json
tinymnist bench Model_29 --epochs 15 --repeat 3 --save results/bench/15-end-to-end-Model_29.json
tinymnist bench Model_35 --options --save results/bench/16-options-Model_35.json
tinymnist bench Model_35 --epochs 15 --repeat 3 --save results/bench/17-end-to-end-Model_35.json
tinymnist bench Model_33 --epochs 15 --repeat 3 --save results/bench/18-end-to-end-Model_33.json
tinymnist bench Model_41 --epochs 15 --repeat 5 --save results/bench/20-end-to-end-Model_41.json  # the final model
# the same with the baseline's whole run measured, evaluations included (bench.baseline_run)
tinymnist bench Model_41 --epochs 15 --save results/bench/23-end-to-end-Model_41-measured.json
# many runs at once: a sweep against one run after another, on runs that learn (all the data, 3 epochs, the
# schedule's warm-up shortened to match and no weight average, which would not warm up in 3 epochs)
tinymnist bench --sweep Model_41 --set epochs=3 --set warmup=1 --set ema=0 --seeds 1-2 --repeat 3 \
  --save results/bench/22-sweep.json
tinymnist report
