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

# ftx inspect: a hand-made safetensors file (u64 header length, JSON header, data).
st="$TEST_TMPDIR/inspect.safetensors"
header='{"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F16","shape":[],"data_offsets":[8,10]},"__metadata__":{"format":"pt"}}'
{
  printf "$(printf '\\x%02x' "${#header}")\x00\x00\x00\x00\x00\x00\x00"
  printf '%s' "$header"
  printf '\x00\x00\x80\x3f\x00\x00\x00\x40\x00\x3c'
} >"$st"
inspect=$("$ftx" inspect "$st") || fail "ftx inspect exited non-zero on a valid file"
grep -qE '^  a +F16 +\[\] +2$' <<<"$inspect" || fail "inspect does not list the scalar a"
grep -qE '^  b +F32 +\[2\] +8$' <<<"$inspect" || fail "inspect does not list b"
grep -A1 '^tensors:' <<<"$inspect" | tail -1 | grep -qE '^  name ' || fail "inspect has no column header"
[[ $(grep -E '^  (a|b) ' <<<"$inspect" | cut -c3) == $'a\nb' ]] || fail "inspect is not sorted by name"
grep -q '^  format: pt$' <<<"$inspect" || fail "inspect does not show the metadata"
grep -q '^2 tensors, 3 parameters, 10 bytes$' <<<"$inspect" || fail "inspect totals"

head -c 20 "$st" >"$TEST_TMPDIR/truncated.safetensors"
"$ftx" inspect "$TEST_TMPDIR/truncated.safetensors" 2>"$TEST_TMPDIR/err"
[[ $? -eq 2 ]] || fail "inspect of a truncated file did not exit 2"
grep -q "not a valid safetensors file: header length" "$TEST_TMPDIR/err" ||
  fail "inspect of a truncated file: $(cat "$TEST_TMPDIR/err")"
"$ftx" inspect "$TEST_TMPDIR/absent.safetensors" 2>"$TEST_TMPDIR/err"
[[ $? -eq 2 ]] || fail "inspect of a missing file did not exit 2"
grep -q "cannot open .*absent.safetensors: No such file" "$TEST_TMPDIR/err" ||
  fail "inspect of a missing file: $(cat "$TEST_TMPDIR/err")"
"$ftx" help | grep -q "inspect FILE" || fail "help does not mention inspect"

[[ $failures -eq 0 ]] && echo "ftx CLI: all checks passed"
exit $failures
