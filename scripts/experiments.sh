#!/usr/bin/env bash
# Regenerates every committed run record in results/ (the reference progression), one run at a time,
# then the README's result sections. Takes about 1.5 hours on 2 CPU cores; run it in the background:
#   nohup scripts/experiments.sh > experiments.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
tinymnist train Model_6 --seeds 1-5 --quiet
for m in Model_1 Model_2 Model_3 Model_4 Model_5; do
  tinymnist train "$m" --seed 1 --quiet
done
tinymnist report
