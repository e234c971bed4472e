#!/usr/bin/env bash
# Prints, after a test run, the tests that could not run and why, then one
# closing line that counts them as skipped, not passed:
#
#   N passed, N failed, N skipped
#
# A test that lacks Docker or sshd returns early, so the test runner counts
# it as passed; it also leaves a record (test name, a tab, the reason) in
# the directory AGENT_SKIP_LOG names (tests/support/skip.rs).
#
# Usage: summary.sh SKIP_DIR RUNNER_OUTPUT
#   RUNNER_OUTPUT is what `cargo nextest run` or `cargo test` printed; its
#   counts are read from nextest's `Summary` line or added up over cargo
#   test's `test result:` lines.
set -euo pipefail
skip_dir=$1 output=$2

records=()
if [[ -d $skip_dir ]]; then
    shopt -s nullglob
    records=("$skip_dir"/*.skip)
fi
n_skips=0
if ((${#records[@]})); then
    n_skips=$(cat "${records[@]}" | wc -l)
fi

if ((n_skips)); then
    printf '\n'
    printf '!!! %d tests could not run on this machine; they are counted as skipped below:\n' "$n_skips"
    # Grouped by reason, the most frequent first; the tests of each reason
    # on the lines after it.
    cat "${records[@]}" | awk -F'\t' '
        { n[$2]++; tests[$2] = tests[$2] "      " $1 "\n" }
        END { for (r in n) printf "%d\t%s\n%s", n[r], r, tests[r] }' |
        awk -F'\t' '/^[0-9]+\t/ { printf "  %d for: %s\n", $1, $2; next } { print }'
    printf '!!! Install what is missing (README, "Start here") and run `make test` again to run them.\n'
fi

# The runner's counts. nextest: "Summary [ 1.2s] 192 tests run: 190 passed,
# 2 failed, 3 skipped"; cargo test: one "test result: ok. 86 passed; 0
# failed; 2 ignored; ..." per test binary.
# (A count the line lacks is 0; grep finding nothing is not an error.)
count() { { grep -oE "[0-9]+ $1" <<<"$2" || true; } | awk '{ s += $1 } END { print s + 0 }'; }
summary=$(grep -E '^ *Summary \[' "$output" | tail -n 1 || true)
if [[ -n $summary ]]; then
    passed=$(count passed "$summary")
    failed=$(($(count failed "$summary") + $(count 'timed out' "$summary")))
    skipped=$(count skipped "$summary")
else
    results=$(grep -E '^test result: ' "$output" || true)
    [[ -n $results ]] || exit 0
    passed=$(count passed "$results")
    failed=$(count failed "$results")
    skipped=$(count ignored "$results")
fi
# A skipped test never fails: it returned, so the runner counted it passed.
passed=$((passed - n_skips))
((passed >= 0)) || passed=0
printf '%d passed, %d failed, %d skipped\n' "$passed" "$failed" "$((skipped + n_skips))"
