#!/usr/bin/env bash
# End-to-end checks of the ftx command-line tool: listed mechanisms and error exits.
set -uo pipefail
ftx="$TEST_SRCDIR/ftx/tools/ftx"
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

list=$("$ftx" attention list) || fail "ftx attention list exited non-zero"
for name in full linear causal-linear favor linformer local local-windowed mixed-local-linear clustered improved-clustered causal-improved-clustered reformer exact-topk talking-heads conditional-full aft-full aft-simple; do
  grep -q "^$name" <<<"$list" || fail "ftx attention list does not show \"$name\""
done
grep -q -- "--attention_dropout (float, default 0.1)" <<<"$list" ||
  fail "full's attention_dropout default is not listed"

if "$ftx" no-such-command 2>/tmp/ftx_err; then fail "unknown command exited 0"; fi
grep -q 'unknown command "no-such-command"' /tmp/ftx_err || fail "unknown command message"
"$ftx" help | grep -q "attention list" || fail "help does not mention attention list"

[[ $failures -eq 0 ]] && echo "ftx CLI: all checks passed"
exit $failures
