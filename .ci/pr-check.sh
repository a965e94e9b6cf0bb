#!/usr/bin/env bash
# Check a pull request's unlearnspec changes against BASE (a git ref): validate and doctor the changed
# specs, and diff every changed report JSON against its BASE version. Writes a Markdown summary to
# OUT (default pr-comment.md) for a PR comment. Exit 1 if validation/doctor failed or a report cell
# changed beyond noise, else 0. Used by .ci/examples/github-workflow.yml; runs anywhere git does.
set -uo pipefail
BASE="${1:?usage: pr-check.sh BASE_REF [OUT]}"
OUT="${2:-pr-comment.md}"
status=0
mapfile -t changed < <(git diff --name-only --diff-filter=AMR "$BASE"...HEAD)
specs=(); reports=()
for f in "${changed[@]}"; do
  case "$f" in
    specs/profiles/*) specs+=("$f") ;;
    specs/*.yaml|specs/*.yml) specs+=("$f") ;;
    reports/reference/*) ;;
    reports/*.json) reports+=("$f") ;;
  esac
done
{
  echo "## unlearnspec"
  echo
  if [ ${#specs[@]} -gt 0 ]; then
    echo "### validate + doctor (${#specs[@]} changed spec file(s))"
    echo
    echo '```'
    unlearnspec validate "${specs[@]}" 2>&1 || status=1
    doctor_specs=()
    for f in "${specs[@]}"; do case "$f" in specs/profiles/*) ;; *) doctor_specs+=("$f") ;; esac; done
    if [ ${#doctor_specs[@]} -gt 0 ]; then unlearnspec doctor --strict "${doctor_specs[@]}" 2>&1 || status=1; fi
    echo '```'
    echo
  fi
  for f in "${reports[@]}"; do
    old="$(mktemp --suffix .json)"
    if git show "$BASE:$f" > "$old" 2>/dev/null; then
      unlearnspec diff "$old" "$f" --format markdown 2>&1 | sed "s#\`$old\`#\`$BASE:$f\`#" || status=1
    else
      echo "### $f: new report"
    fi
    rm -f "$old"
    echo
  done
  [ ${#specs[@]} -eq 0 ] && [ ${#reports[@]} -eq 0 ] && echo "No spec or report changed."
} > "$OUT"
cat "$OUT"
exit $status
