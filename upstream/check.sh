#!/usr/bin/env bash
# Applies the patch series in upstream/patches to a TorchRL source checkout and runs the tests the series adds.
#
#   bash upstream/check.sh /path/to/rl      # a clone of pytorch/rl, best at the commit in upstream/patches/BASE
#
# The patches are written with no context lines (git diff -U0) and applied with git apply --unidiff-zero, in the
# order of upstream/patches/series; the tests run against the checkout's own torchrl (PYTHONPATH), whose C++
# extension need not be built for them. The Python that runs them (PYTHON, default python) needs torch, tensordict,
# pytest and what the tests import (pettingzoo, gymnasium): the project's virtual environment has them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ $# -ne 1 ] || ! git -C "$1" rev-parse --git-dir > /dev/null 2>&1; then
  echo "usage: bash upstream/check.sh TORCHRL_CHECKOUT (a git clone of pytorch/rl)" >&2
  exit 2
fi
rl="$(cd "$1" && pwd)"
if [ -n "$(git -C "$rl" status --porcelain --untracked-files=no)" ]; then
  echo "$rl has uncommitted changes (a series applied before?): give a clean checkout (git -C $rl checkout -- .)" >&2
  exit 2
fi
python="${PYTHON:-python}"
if [[ "$python" == */* ]]; then  # a relative path would break once the script runs pytest from the checkout
  python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
fi
base="$(tr -d '[:space:]' < "$here/patches/BASE")"
head="$(git -C "$rl" rev-parse HEAD)"
echo "TorchRL checkout: $rl at $head (series made against $base)"
if [ "$head" != "$base" ]; then
  echo "note: not the base commit; the patches may still apply" >&2
fi
tests=()
while read -r patch patch_tests; do
  case "$patch" in ''|'#'*) continue ;; esac
  git -C "$rl" apply --unidiff-zero --check "$here/patches/$patch"
  git -C "$rl" apply --unidiff-zero "$here/patches/$patch"
  echo "applied $patch"
  read -r -a patch_test_list <<< "$patch_tests"  # a line may name several tests, separated by spaces
  for test in "${patch_test_list[@]}"; do
    tests+=("$rl/$test")
  done
done < "$here/patches/series"
cd "$rl"
PYTHONPATH="$rl${PYTHONPATH:+:$PYTHONPATH}" "$python" -m pytest -q -p no:cacheprovider -W ignore::UserWarning \
  "${tests[@]}"
