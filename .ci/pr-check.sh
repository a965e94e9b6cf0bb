#!/usr/bin/env bash
# Check a pull request's unlearnspec changes against BASE (a git ref): validate and doctor the changed specs,
# and diff every changed report JSON against its BASE version. Writes a Markdown summary to OUT (default
# pr-comment.md) for a PR comment. Exit 1 if validation/doctor failed or a report cell changed beyond noise,
# else 0 (2: BASE is not a commit). Used by .ci/examples/github-workflow.yml; runs anywhere git does.
# The logic is in pr_check.py: file names are passed as data there, never through this shell.
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname -- "${BASH_SOURCE[0]}")/pr_check.py" "$@"
