#!/usr/bin/env bash
# Runs every fuzz target in the module for a while each: scripts/fuzz.sh 30s
set -euo pipefail
t="${1:-30s}"
cd "$(dirname "$0")/.."
fail=0
while IFS= read -r line; do
  file="${line%%:*}"
  name="$(sed -E 's/^.*func (Fuzz[A-Za-z0-9_]*)\(.*/\1/' <<<"$line")"
  pkg="./$(dirname "$file")"
  echo "== $pkg $name ($t)"
  if ! go test "$pkg" -run '^$' -fuzz "^${name}\$" -fuzztime "$t" >/tmp/ferry-fuzz.log 2>&1; then
    cat /tmp/ferry-fuzz.log; fail=1
  else
    tail -1 /tmp/ferry-fuzz.log
  fi
done < <(grep -rn --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' . | sort)
exit $fail
