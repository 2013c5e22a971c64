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

# ftx train: a few steps of the default copy-task run, the byte task, a JSON
# config, and bad arguments.
train=$("$ftx" train --steps 4 --seed 3 --out "$TEST_TMPDIR/train_out") ||
  fail "ftx train exited non-zero"
grep -q "^training causal-linear decoder" <<<"$train" || fail "train header: $train"
grep -qE "^step 4/4  loss [0-9.]+  lr .* tokens/s  ETA " <<<"$train" || fail "train progress: $train"
grep -qE "^final exact-copy accuracy: [0-9.]+ % of [0-9]+ sequences$" <<<"$train" ||
  fail "train final accuracy: $train"
[[ -s "$TEST_TMPDIR/train_out/model.safetensors" ]] || fail "train wrote no model.safetensors"
grep -q '"step": 4' "$TEST_TMPDIR/train_out/checkpoint.json" || fail "train checkpoint.json"
"$ftx" inspect "$TEST_TMPDIR/train_out/model.safetensors" | grep -q "token_emb.weight" ||
  fail "the trained model.safetensors does not list token_emb.weight"

# ftx train --resume: continue the 4-step run above to 6 steps; a finished run
# has nothing to do; a different config, a missing or a corrupt checkpoint exit 2.
train=$("$ftx" train --steps 6 --seed 3 --resume "$TEST_TMPDIR/train_out") ||
  fail "ftx train --resume exited non-zero"
grep -q "^resuming from .*train_out at step 4$" <<<"$train" || fail "train --resume header: $train"
grep -qE "^step 5/6  loss [0-9.]+" <<<"$train" || fail "train --resume did not start at step 5: $train"
grep -qE "^step 6/6  loss [0-9.]+" <<<"$train" || fail "train --resume progress: $train"
grep -q '"step": 6' "$TEST_TMPDIR/train_out/checkpoint.json" || fail "train --resume checkpoint.json"
[[ -s "$TEST_TMPDIR/train_out/optimizer.safetensors" ]] || fail "train wrote no optimizer.safetensors"
inspect=$("$ftx" inspect "$TEST_TMPDIR/train_out/optimizer.safetensors") ||
  fail "ftx inspect optimizer.safetensors exited non-zero"
grep -qE '^  m/token_emb.weight +F32' <<<"$inspect" && grep -qE '^  v/token_emb.weight +F32' <<<"$inspect" ||
  fail "optimizer.safetensors does not list the moments of token_emb.weight"
# ftx eval: the held-out evaluation of the checkpoint; a missing one exits 2.
evaluation=$("$ftx" eval --checkpoint "$TEST_TMPDIR/train_out") || fail "ftx eval exited non-zero"
grep -qE "^step 6: held-out loss [0-9.]+  token accuracy [0-9.]+ %  exact-copy accuracy [0-9.]+ %" \
  <<<"$evaluation" || fail "ftx eval output: $evaluation"
"$ftx" eval --checkpoint "$TEST_TMPDIR/no_such_dir" 2>/dev/null
[[ $? -eq 2 ]] || fail "ftx eval of a missing checkpoint did not exit 2"
"$ftx" train --seed 3 --resume "$TEST_TMPDIR/train_out" | grep -q "nothing to do" ||
  fail "train --resume of a finished run"
cp -r "$TEST_TMPDIR/train_out" "$TEST_TMPDIR/corrupt_out"
truncate -s 100 "$TEST_TMPDIR/corrupt_out/optimizer.safetensors"

for i in $(seq 40); do printf 'hello ftx, byte by byte. '; done >"$TEST_TMPDIR/text.txt"
cat >"$TEST_TMPDIR/tiny.json" <<'JSON'
{"dim": 16, "depth": 1, "heads": 2, "dim_head": 8, "causal": true, "attention": "causal-linear"}
JSON
train=$("$ftx" train --steps 2 --data "$TEST_TMPDIR/text.txt" --config "$TEST_TMPDIR/tiny.json") ||
  fail "ftx train --data --config exited non-zero"
grep -q "on bytes of .*text.txt" <<<"$train" || fail "train --data header: $train"
grep -qE "^final held-out loss: [0-9.]+" <<<"$train" || fail "train --data final loss: $train"
"$ftx" train --steps 2 --attention full --config "$TEST_TMPDIR/tiny.json" >/dev/null ||
  fail "ftx train --attention full exited non-zero"

expect_train_error() {  # message, arguments...
  local message=$1
  shift
  "$ftx" train "$@" >/dev/null 2>"$TEST_TMPDIR/err"
  [[ $? -eq 2 ]] || fail "ftx train $* did not exit 2"
  grep -q -- "$message" "$TEST_TMPDIR/err" || fail "ftx train $*: $(cat "$TEST_TMPDIR/err")"
}
expect_train_error 'cannot open "[^"]*absent.txt"' --data "$TEST_TMPDIR/absent.txt"
expect_train_error 'cannot open config' --config "$TEST_TMPDIR/absent.json"
expect_train_error '--steps expects an integer >= 1, got "abc"' --steps abc
expect_train_error '--steps expects an integer >= 1, got "0"' --steps 0
expect_train_error 'unknown argument "--bogus"' --bogus 1
expect_train_error '--seed needs a value' --seed
expect_train_error 'no-such-mechanism' --attention no-such-mechanism --steps 1
expect_train_error 'seed = 3 but the requested config has 4' --steps 8 --seed 4 \
  --resume "$TEST_TMPDIR/train_out"
expect_train_error 'model.attention' --steps 8 --seed 3 --attention full \
  --resume "$TEST_TMPDIR/train_out"
expect_train_error 'cannot open "[^"]*absent_dir/checkpoint.json"' --resume "$TEST_TMPDIR/absent_dir"
expect_train_error 'optimizer.safetensors" is corrupt or from another save' --steps 8 --seed 3 \
  --resume "$TEST_TMPDIR/corrupt_out"
"$ftx" help | grep -q "train \[flags\]" || fail "help does not mention train"
"$ftx" help | grep -q -- "--resume DIR" || fail "help does not mention --resume"

# ftx generate: the copy-task checkpoint written above (ids in, ids out), a byte
# model (text in, bytes out), determinism for a seed, and bad arguments.
copy_dir="$TEST_TMPDIR/train_out"
out=$("$ftx" generate --checkpoint "$copy_dir" --prompt "1 2 3 10" --max-new 5 --greedy) ||
  fail "ftx generate (copy task) exited non-zero"
grep -qE '^([0-9]|10)( ([0-9]|10)){4}$' <<<"$out" || fail "generate copy ids: $out"
first=$("$ftx" generate --checkpoint "$copy_dir" --prompt "4 4 10" --seed 5 --top-k 3 --temperature 2)
second=$("$ftx" generate --checkpoint "$copy_dir" --prompt "4 4 10" --seed 5 --top-k 3 --temperature 2)
[[ -n "$first" && "$first" == "$second" ]] || fail "generate is not deterministic: $first / $second"
grep -qE '^[0-9]+( [0-9]+){31}$' <<<"$first" || fail "generate default --max-new is not 32: $first"

"$ftx" train --steps 2 --data "$TEST_TMPDIR/text.txt" --config "$TEST_TMPDIR/tiny.json" \
  --out "$TEST_TMPDIR/bytes_out" >/dev/null || fail "ftx train --data --out exited non-zero"
"$ftx" generate --checkpoint "$TEST_TMPDIR/bytes_out" --prompt "hello" --max-new 7 --top-p 0.9 \
  >"$TEST_TMPDIR/bytes.txt" || fail "ftx generate (bytes) exited non-zero"
[[ $(wc -c <"$TEST_TMPDIR/bytes.txt") -eq 8 ]] ||
  fail "generate bytes: expected 7 bytes and a newline, got $(wc -c <"$TEST_TMPDIR/bytes.txt")"

expect_generate_error() {  # message, arguments...
  local message=$1
  shift
  "$ftx" generate "$@" >/dev/null 2>"$TEST_TMPDIR/err"
  [[ $? -eq 2 ]] || fail "ftx generate $* did not exit 2"
  grep -q -- "$message" "$TEST_TMPDIR/err" || fail "ftx generate $*: $(cat "$TEST_TMPDIR/err")"
}
mkdir -p "$TEST_TMPDIR/corrupt"
cp "$copy_dir/model.safetensors" "$TEST_TMPDIR/corrupt/"
echo '{"step": "x"}' >"$TEST_TMPDIR/corrupt/checkpoint.json"
expect_generate_error 'cannot open "[^"]*absent/checkpoint.json"' \
  --checkpoint "$TEST_TMPDIR/absent" --prompt "1"
expect_generate_error 'is not a checkpoint' --checkpoint "$TEST_TMPDIR/corrupt" --prompt "1"
expect_generate_error '--checkpoint DIR is required' --prompt "1"
expect_generate_error 'non-empty --prompt is required' --checkpoint "$copy_dir"
expect_generate_error 'space-separated ids in \[0, 11)' --checkpoint "$copy_dir" --prompt "1 x"
expect_generate_error 'got "11"' --checkpoint "$copy_dir" --prompt "11"
expect_generate_error '--top-k expects an integer >= 1, got "0"' --checkpoint "$copy_dir" --top-k 0
expect_generate_error '--temperature expects a number > 0, got "-1"' --temperature -1
expect_generate_error '--top-p expects a number in (0, 1\], got "2"' --top-p 2
expect_generate_error '--max-new expects an integer >= 1, got "abc"' --max-new abc
expect_generate_error '--seed needs a value' --seed
expect_generate_error 'unknown argument "--bogus"' --bogus
"$ftx" help | grep -q "generate \[flags\]" || fail "help does not mention generate"

# ftx train --task listops with gradient accumulation; bad --task/--accumulate.
train=$("$ftx" train --task listops --accumulate 2 --steps 2 --seed 1) ||
  fail "ftx train --task listops exited non-zero"
grep -q "on ListOps (depth <= 4" <<<"$train" || fail "listops train header: $train"
grep -qE "^final answer accuracy: [0-9.]+ % of [0-9]+ expressions$" <<<"$train" ||
  fail "listops final accuracy: $train"
"$ftx" train --task copy --steps 1 >/dev/null || fail "ftx train --task copy exited non-zero"
"$ftx" train --task sorting --steps 1 2>"$TEST_TMPDIR/err"
[[ $? -eq 2 ]] && grep -q 'task expects copy or listops, got "sorting"' "$TEST_TMPDIR/err" ||
  fail "train --task sorting: $(cat "$TEST_TMPDIR/err")"
"$ftx" train --accumulate 0 --steps 1 2>"$TEST_TMPDIR/err"
[[ $? -eq 2 ]] && grep -q -- '--accumulate expects an integer >= 1' "$TEST_TMPDIR/err" ||
  fail "train --accumulate 0: $(cat "$TEST_TMPDIR/err")"

# ftx bench: a tiny table (one row per mechanism, ratio 1.00 for full), an
# unknown mechanism's error in its row, bad flags.
bench=$("$ftx" bench --lengths 32 --attention full,linear,no-such --repeats 2 --backward) ||
  fail "ftx bench exited non-zero"
grep -q "^attention Forward + Backward: N=1 H=8 E=D=64" <<<"$bench" || fail "bench header: $bench"
grep -qE "^mechanism +L +median ms +vs full$" <<<"$bench" || fail "bench column header: $bench"
grep -qE "^full +32 +[0-9.]+ +1\.00$" <<<"$bench" || fail "bench full row: $bench"
grep -qE "^linear +32 +[0-9.]+ +[0-9.]+$" <<<"$bench" || fail "bench linear row: $bench"
grep -qE '^no-such +32  error: unknown attention type "no-such"' <<<"$bench" ||
  fail "bench error row: $bench"
"$ftx" bench --lengths 0 2>"$TEST_TMPDIR/err"
[[ $? -eq 2 ]] && grep -q -- '--lengths expects comma-separated integers >= 1' "$TEST_TMPDIR/err" ||
  fail "bench --lengths 0: $(cat "$TEST_TMPDIR/err")"
"$ftx" help | grep -q "bench \[flags\]" || fail "help does not mention bench"

# ftx convert: an ftx checkpoint to x-transformers names and back; a second
# export of the re-imported weights is byte-identical; bad arguments exit 2.
config="$TEST_SRCDIR/ftx/models/configs/tiny_decoder.json"
"$ftx" train --config "$config" --steps 1 --out "$TEST_TMPDIR/convert_run" >/dev/null ||
  fail "ftx train --config tiny_decoder.json exited non-zero"
"$ftx" convert --list | grep -q "^x-transformers$" || fail "convert --list does not show x-transformers"
"$ftx" convert --library x-transformers --config "$config" --to reference \
  "$TEST_TMPDIR/convert_run/model.safetensors" "$TEST_TMPDIR/x.safetensors" >/dev/null ||
  fail "convert to x-transformers names exited non-zero"
"$ftx" inspect "$TEST_TMPDIR/x.safetensors" | grep -qE '^  attn_layers.layers.0.1.to_q.weight +F32 +\[64, 64\]' ||
  fail "the x-transformers file does not hold attn_layers.layers.0.1.to_q.weight"
"$ftx" convert --library x-transformers --config "$config" \
  "$TEST_TMPDIR/x.safetensors" "$TEST_TMPDIR/ftx.safetensors" >/dev/null ||
  fail "convert from x-transformers names exited non-zero"
"$ftx" convert --library x-transformers --config "$config" --to reference \
  "$TEST_TMPDIR/ftx.safetensors" "$TEST_TMPDIR/x2.safetensors" >/dev/null ||
  fail "second convert to x-transformers names exited non-zero"
cmp -s "$TEST_TMPDIR/x.safetensors" "$TEST_TMPDIR/x2.safetensors" ||
  fail "x-transformers -> ftx -> x-transformers is not byte-identical"
"$ftx" convert --library performer-pytorch --config "$config" \
  "$TEST_TMPDIR/x.safetensors" "$TEST_TMPDIR/bad.safetensors" 2>"$TEST_TMPDIR/err"
[[ $? -eq 2 ]] || fail "convert with a config of the wrong family did not exit 2"
grep -q 'unknown key "attention"' "$TEST_TMPDIR/err" || fail "convert wrong config: $(cat "$TEST_TMPDIR/err")"
"$ftx" convert --library nope --config "$config" a b 2>"$TEST_TMPDIR/err"
grep -q 'no state-dict converter for "nope"; known: ' "$TEST_TMPDIR/err" ||
  fail "convert unknown library: $(cat "$TEST_TMPDIR/err")"
[[ ! -e "$TEST_TMPDIR/bad.safetensors" ]] || fail "a failed convert left an output file"

[[ $failures -eq 0 ]] && echo "ftx CLI: all checks passed"
exit $failures
