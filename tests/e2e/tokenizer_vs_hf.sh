#!/usr/bin/env bash
# deepmoe's tokenizer against HF tokenizers' JavaScript port, id for id, on a varied corpus
# (Brown, nlp-corpus, hand-written edge cases), for the DeepSeek-V3, Llama 3 and GPT-2
# tokenizers and one trained here by `deepmoe tokenizer-train` (HF's loader must read it as we
# do); invalid UTF-8 files against WHATWG decoding; and decode(encode(x)) == x.
#   tests/e2e/tokenizer_vs_hf.sh path/to/deepmoe work-dir
set -euo pipefail
deepmoe=$1
work=$2
npm_dir=$(cd "$(dirname "$0")/../npm" && pwd)
mkdir -p "$work"
node "$npm_dir/make_corpus.mjs" "$work/corpus.jsonl"

# Invalid UTF-8: truncated, overlong, surrogate, out of range, stray continuation bytes.
printf 'ab\xe4\xb8' >"$work/bad1.bin"
printf '\xff\xfe plain \x80\x80 text' >"$work/bad2.bin"
printf 'overlong \xc0\xaf and surrogate \xed\xa0\x80 and big \xf4\x90\x80\x80!' >"$work/bad3.bin"
printf 'emoji cut \xf0\x9f\x98 then more \xf0\x9f\x98\x80 whole' >"$work/bad4.bin"

node "$npm_dir/brown_text.mjs" "$work/brown.txt" 4
"$deepmoe" tokenizer-train --vocab-size 3000 --out "$work/trained" "$work/brown.txt" 2>/dev/null

status=0
for model in deepseek_v3 llama3 gpt2 trained; do
  dir=$npm_dir/node_modules/@lenml/tokenizer-$model/models
  [ "$model" = trained ] && dir=$work/trained
  node "$npm_dir/hf_encode.mjs" "$dir" "$work/corpus.jsonl" >"$work/$model.expected"
  "$deepmoe" tokenize --tokenizer "$dir" --jsonl "$work/corpus.jsonl" >"$work/$model.actual"
  lines=$(wc -l <"$work/corpus.jsonl")
  differing=$(diff "$work/$model.expected" "$work/$model.actual" | grep -c '^<' || true)
  echo "$model: $((lines - differing))/$lines strings encode identically"
  if [ "$differing" -ne 0 ]; then
    status=1
    diff "$work/$model.expected" "$work/$model.actual" | head -6
  fi

  node "$npm_dir/hf_encode.mjs" "$dir" --raw "$work"/bad*.bin >"$work/$model.raw.expected"
  : >"$work/$model.raw.actual"
  for f in "$work"/bad*.bin; do "$deepmoe" tokenize --tokenizer "$dir" --file "$f" --json >>"$work/$model.raw.actual"; done
  if cmp -s "$work/$model.raw.expected" "$work/$model.raw.actual"; then
    echo "$model: invalid UTF-8 files encode identically"
  else
    echo "$model: FAIL on invalid UTF-8"; diff "$work/$model.raw.expected" "$work/$model.raw.actual" | head -6; status=1
  fi

  "$deepmoe" detokenize --tokenizer "$dir" --jsonl "$work/$model.actual" >"$work/$model.decoded"
  if python3 -c "
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
bad = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
sys.exit(1 if bad or len(a) != len(b) else 0)
" "$work/corpus.jsonl" "$work/$model.decoded"; then
    echo "$model: decode(encode(x)) == x for every string"
  else
    echo "$model: FAIL round trip"; status=1
  fi

  # The same tokenizer carried inside a GGUF file (deepmoe convert) and rebuilt from it.
  vocab=$(python3 -c "
import json, sys
t = json.load(open(sys.argv[1]))
print(max(list(t['model']['vocab'].values()) + [a['id'] for a in t.get('added_tokens', [])]) + 1)" "$dir/tokenizer.json")
  cat >"$work/$model.config.json" <<JSON
{"model_type": "deepseek_v3", "vocab_size": $vocab, "hidden_size": 32, "intermediate_size": 32,
 "moe_intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 1, "q_lora_rank": 32,
 "kv_lora_rank": 32, "qk_nope_head_dim": 32, "qk_rope_head_dim": 32, "v_head_dim": 32, "n_routed_experts": 0}
JSON
  "$deepmoe" init --config "$work/$model.config.json" --out "$work/$model.model" --tokenizer "$dir" --dtype bf16 >/dev/null
  "$deepmoe" convert --to gguf --model "$work/$model.model" --out "$work/$model.gguf" --type f16 >/dev/null
  "$deepmoe" tokenize --tokenizer "$work/$model.gguf" --jsonl "$work/corpus.jsonl" >"$work/$model.gguf.actual"
  if cmp -s "$work/$model.expected" "$work/$model.gguf.actual"; then
    echo "$model: the tokenizer rebuilt from a GGUF file encodes identically"
  else
    echo "$model: FAIL through GGUF"; diff "$work/$model.expected" "$work/$model.gguf.actual" | head -6; status=1
  fi
done
exit $status
