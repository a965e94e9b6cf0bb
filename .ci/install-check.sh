#!/usr/bin/env bash
# The package works installed, not just from a checkout: a fresh virtualenv outside the repository,
# `pip install torch==2.13.0` then `pip install <repo>` (not editable), and from a folder outside the
# repository, with an empty cache, install the shipped pretrained toy world (package data: no pretraining),
# run a shipped spec on it and print the recorded reference tables.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d /tmp/unlearnspec-install-check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
python3 -m venv "$WORK/venv"
# shellcheck disable=SC1091
. "$WORK/venv/bin/activate"
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet "$REPO" -c "$REPO/.ci/constraints.txt"
mkdir "$WORK/elsewhere" && cd "$WORK/elsewhere"
python -c "import unlearnspec, sys; assert '$REPO' not in unlearnspec.__file__, unlearnspec.__file__; print('installed at', unlearnspec.__file__)"
export UNLEARNSPEC_CACHE="$WORK/cache"
unlearnspec toy build | tee "$WORK/toy-build.log"
grep -q "the shipped pretrained model, installed in" "$WORK/toy-build.log"
# one LR of the four and 100 questions a task: the installed package runs a shipped spec end to end (CI time)
unlearnspec run "$REPO/specs/exp7_all_tokens.yaml" --toy --out "$WORK/out" --set training.lr=1.0e-3 --set eval.tasks.0.limit=100 --set eval.tasks.1.limit=100
test -f "$WORK/out/results.json" && test -f "$WORK/out/reports/exp7_all_tokens.md"
unlearnspec report --reference-only > "$WORK/recorded.md"
grep -q "Failed Experiment 1" "$WORK/recorded.md"
echo "install check: ok (non-editable install, run from $WORK/elsewhere)"
