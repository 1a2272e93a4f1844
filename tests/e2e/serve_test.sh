#!/usr/bin/env bash
# `deepmoe serve` as clients drive it: OpenAI's npm client (tests/npm/serve_client.mjs) for the
# API, batch invariance, cancellation, the prefix cache, preemption and a load test; curl for
# every kind of bad input, auth, 413, 429 and the SIGTERM drain. Prints "N passed, M failed".
set -u
deepmoe=$1
work=$2
here=$(cd "$(dirname "$0")" && pwd)
client="$here/../npm/serve_client.mjs"
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "PASS $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null; done; }
trap cleanup EXIT

# A small random model with a tokenizer trained on part of the Brown corpus (chat template included).
node "$here/../npm/brown_text.mjs" brown.txt 50 && head -c 300000 brown.txt >text.txt
"$deepmoe" tokenizer-train --vocab-size 512 --out tok text.txt >/dev/null 2>&1 || bad "tokenizer-train"
cat >config.json <<'JSON'
{"model_type": "deepseek_v3", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
 "moe_intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "q_lora_rank": 32,
 "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
 "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
 "n_group": 4, "topk_group": 2, "max_position_embeddings": 512}
JSON
"$deepmoe" init --config config.json --out model --seed 3 --tokenizer tok >/dev/null || bad "init"
# A larger one whose replies take about a second (on one thread): the queue and drain tests need a request in flight.
cat >slow_config.json <<'JSON'
{"model_type": "deepseek_v3", "vocab_size": 512, "hidden_size": 384, "intermediate_size": 1024,
 "moe_intermediate_size": 192, "num_hidden_layers": 6, "num_attention_heads": 8, "q_lora_rank": 96,
 "kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
 "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
 "n_group": 4, "topk_group": 2, "max_position_embeddings": 1024}
JSON
"$deepmoe" init --config slow_config.json --out slow --seed 3 --tokenizer tok >/dev/null || bad "init slow"

# start_server NAME ARGS...: starts `deepmoe serve` on a free port; sets $url and $pid.
start_server() {
  local name=$1
  shift
  "$deepmoe" serve --port 0 "$@" 2>"$name.log" &
  pid=$!
  pids+=("$pid")
  url=""
  for _ in $(seq 1 300); do
    url=$(grep -o 'http://127.0.0.1:[0-9]*' "$name.log" | head -1)
    [ -n "$url" ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  bad "server $name did not start: $(cat "$name.log")"
  return 1
}

# expect_status NAME STATUS [PATTERN] CURL_ARGS...: the HTTP status, an OpenAI error object when
# it is >= 400, and PATTERN (if not empty) in the body.
expect_status() {
  local name=$1 status=$2 pattern=$3
  shift 3
  local got
  got=$(curl -s -o body.txt -w '%{http_code}' --max-time 30 "$@")
  if [ "$got" = "$status" ] && { [ "$status" -lt 400 ] || /usr/bin/python3 -c "import json,sys; e=json.load(open('body.txt'))['error']; assert e['message'] and e['type']" 2>/dev/null; } &&
     { [ -z "$pattern" ] || grep -q -- "$pattern" body.txt; }; then
    ok "$name"
  else
    bad "$name (status $got, body $(head -c 300 body.txt))"
  fi
}

run_client() {
  local output
  output=$(node "$client" "$@" 2>&1)
  echo "$output"
  passed=$((passed + $(echo "$output" | grep -c '^PASS')))
  failed=$((failed + $(echo "$output" | grep -c '^FAIL')))
  echo "$output" | grep -q -E '^(PASS|FAIL)' || bad "client $1 printed no result"
}

key=secret-key
auth=(-H "Authorization: Bearer $key")
start_server main --model model --threads 2 --api-key "$key" --max-batch 16 --max-batch-tokens 128 || exit 1
main_url=$url main_pid=$pid
model=$(curl -s "${auth[@]}" "$main_url/v1/models" | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['data'][0]['id'])")
[ "$model" = "model" ] && ok "GET /v1/models" || bad "GET /v1/models ($model)"

# Auth, routes, and every kind of bad request: a 4xx with an OpenAI error object, never a crash.
c=(-X POST "${auth[@]}" -H "Content-Type: application/json")
expect_status "/health needs no key" 200 '"ok"' "$main_url/health"
expect_status "no key: 401" 401 "API key" "$main_url/v1/models"
expect_status "wrong key: 401" 401 "API key" -H "Authorization: Bearer nope" "$main_url/v1/models"
expect_status "no key on completions: 401" 401 "" -X POST -d '{"prompt":"a"}' "$main_url/v1/completions"
expect_status "unknown route: 404" 404 "no route" "${auth[@]}" "$main_url/v1/nothing"
expect_status "malformed JSON: 400" 400 "not valid JSON" "${c[@]}" -d '{"prompt": "a",' "$main_url/v1/completions"
expect_status "body not an object: 400" 400 "JSON object" "${c[@]}" -d '[1,2]' "$main_url/v1/completions"
expect_status "wrong field type: 400 naming it" 400 '"param":"max_tokens"' "${c[@]}" -d '{"prompt":"a","max_tokens":"7"}' "$main_url/v1/completions"
expect_status "unknown model: 400" 400 '"param":"model"' "${c[@]}" -d '{"model":"gpt-9","prompt":"a"}' "$main_url/v1/completions"
expect_status "empty messages: 400" 400 '"param":"messages"' "${c[@]}" -d '{"messages":[]}' "$main_url/v1/chat/completions"
expect_status "message without content: 400" 400 'messages\[0\].content' "${c[@]}" -d '{"messages":[{"role":"user"}]}' "$main_url/v1/chat/completions"
long=$(/usr/bin/python3 -c "print('word ' * 2000)")
expect_status "prompt longer than the context: 400" 400 "context" "${c[@]}" -d "{\"prompt\":\"$long\"}" "$main_url/v1/completions"
expect_status "max_tokens that cannot fit: 400" 400 '"param":"max_tokens"' "${c[@]}" -d '{"prompt":"a","max_tokens":100000}' "$main_url/v1/completions"
expect_status "temperature out of range: 400" 400 '"param":"temperature"' "${c[@]}" -d '{"prompt":"a","temperature":-1}' "$main_url/v1/completions"
expect_status "top_p out of range: 400" 400 '"param":"top_p"' "${c[@]}" -d '{"prompt":"a","top_p":7}' "$main_url/v1/completions"
expect_status "n out of range: 400" 400 '"param":"n"' "${c[@]}" -d '{"prompt":"a","n":1000}' "$main_url/v1/completions"
expect_status "token id outside the vocabulary: 400" 400 'prompt\[1\]' "${c[@]}" -d '{"prompt":[1,99999]}' "$main_url/v1/completions"
head -c 5000000 /dev/zero | tr '\0' 'a' >big.txt
expect_status "body over the limit: 413" 413 "too large" "${c[@]}" --data-binary @big.txt "$main_url/v1/completions"
expect_status "bad /tokenize: 400" 400 '"param":"prompt"' "${c[@]}" -d '{"prompt":5}' "$main_url/tokenize"
expect_status "bad /detokenize: 400" 400 '"param":"tokens"' "${c[@]}" -d '{"tokens":[-1]}' "$main_url/detokenize"
ids=$(curl -s "${c[@]}" -d '{"prompt":"The jury said","add_special_tokens":false}' "$main_url/tokenize" | /usr/bin/python3 -c "import json,sys; print(json.dumps(json.load(sys.stdin)['tokens']))")
text=$(curl -s "${c[@]}" -d "{\"tokens\":$ids}" "$main_url/detokenize" | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['prompt'])")
[ "$text" = "The jury said" ] && ok "/tokenize then /detokenize round trip" || bad "/tokenize round trip ($ids -> $text)"
# lm-evaluation-harness's local-completions log-likelihood request: a batch of token-id prompts,
# echo, logprobs 1, max_tokens 1. Each choice echoes its prompt; its first token has no logprob.
curl -s "${c[@]}" -d '{"prompt":[[10,11,12,13],[10,11,14]],"echo":true,"logprobs":1,"max_tokens":1,"temperature":0,"seed":1234}' \
  "$main_url/v1/completions" >echo.json
/usr/bin/python3 - <<'PY' && ok "echo + logprobs over a batch of prompts (lm-eval's local-completions)" || bad "echo ($(head -c 300 echo.json))"
import json
r = json.load(open("echo.json"))
assert [c["index"] for c in r["choices"]] == [0, 1], r
for c, n in zip(r["choices"], (4, 3)):
    lp = c["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None, lp
    assert len(lp["tokens"]) == n + 1 and all(x < 0 for x in lp["token_logprobs"][1:]), lp
    assert all(len(t) == 1 for t in lp["top_logprobs"][1:]), lp
    assert lp["text_offset"][0] == 0 and c["text"].startswith("".join(lp["tokens"][:n])), c
assert r["choices"][0]["logprobs"]["token_logprobs"][1] == r["choices"][1]["logprobs"]["token_logprobs"][1]  # 11 after 10
assert r["usage"]["prompt_tokens"] == 7, r["usage"]
PY
expect_status "echo with stream: 400" 400 '"param":"echo"' "${c[@]}" -d '{"prompt":"a","echo":true,"stream":true}' "$main_url/v1/completions"
# A random byte soup and truncated requests must not take the server down.
for i in $(seq 1 20); do
  head -c $((RANDOM % 3000)) /dev/urandom >soup.bin
  curl -s -o /dev/null --max-time 5 "${c[@]}" --data-binary @soup.bin "$main_url/v1/chat/completions"
done
printf 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"prompt"' | timeout 10 /usr/bin/python3 -c "
import socket, sys
s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); s.sendall(sys.stdin.buffer.read()); s.close()" "${main_url##*:}"
expect_status "still healthy after garbage and hang-ups" 200 '"ok"' "$main_url/health"

run_client api "$main_url" "$key" "$model"
run_client invariance "$main_url" "$key" "$model"
run_client prefix "$main_url" "$key" "$model"
run_client load "$main_url" "$key" "$model" 64 20
curl -s "${auth[@]}" "$main_url/metrics" >metrics.txt
for metric in 'deepmoe_requests_total{endpoint="/v1/completions",status="200"}' deepmoe_time_to_first_token_seconds_bucket \
    deepmoe_inter_token_latency_seconds_count deepmoe_request_latency_seconds_sum deepmoe_prompt_tokens_total \
    deepmoe_generation_tokens_total deepmoe_requests_running deepmoe_requests_waiting 'deepmoe_kv_blocks{state="free"}' \
    deepmoe_prefix_cache_hit_rate 'deepmoe_expert_tokens_total{layer="1",expert="0"}'; do
  grep -qF "$metric" metrics.txt || { bad "/metrics has $metric"; continue; }
done
grep -q '^deepmoe_requests_total{endpoint="/v1/completions",status="400"} [1-9]' metrics.txt &&
  awk '/^deepmoe_generation_tokens_total/ {exit !($2 > 1000)}' metrics.txt && ok "/metrics counts requests, statuses and tokens" ||
  bad "/metrics counts ($(grep -E 'status="400"|generation_tokens_total ' metrics.txt | head -3))"

# Preemption: a cache of 20 blocks (320 positions) for 8 requests of ~160 tokens each.
start_server small --model model --threads 2 --api-key "$key" --kv-cache-mb 0.1 --ctx 256 && run_client preempt "$main_url" "$key" "$model" "$url"
kill "$pid" 2>/dev/null

# --speculative mtp:3: the same model with an MTP module added (train --steps 0 leaves the main
# weights as they were) drafts; the text stays the main server's. A model without one: one line.
head -c 8000 /dev/zero >zeros.u32
"$deepmoe" train --init model --data zeros.u32 --seq 8 --batch 1 --steps 0 --mtp-depth 1 --out model_mtp \
  >/dev/null 2>&1 && cp tok/* model_mtp/ || bad "an MTP module added to the model"
start_server speculative --model model_mtp --model-name "$model" --threads 2 --api-key "$key" --speculative mtp:3 &&
  run_client speculative "$main_url" "$key" "$model" "$url"
kill "$pid" 2>/dev/null
if "$deepmoe" serve --model model --speculative mtp:2 >/dev/null 2>spec.err; then bad "--speculative without a module accepted"
elif [ "$(wc -l <spec.err)" -eq 1 ] && grep -q "multi-token-prediction" spec.err; then ok "--speculative without an MTP module: one line"
else bad "--speculative without a module: $(cat spec.err)"; fi

# --dtype bf16: the f32 weights rounded at load (the kernels read half the bytes); greedy requests
# are still the same alone or among 15 others. A dtype it does not offer: one line naming it.
start_server bf16 --model model --threads 2 --api-key "$key" --dtype bf16 && run_client invariance "$url" "$key" "$model"
kill "$pid" 2>/dev/null
if "$deepmoe" serve --model model --dtype f16 >/dev/null 2>dtype.err; then bad "--dtype f16 accepted"
elif [ "$(wc -l <dtype.err)" -eq 1 ] && grep -q -- "--dtype" dtype.err; then ok "--dtype f16: one line naming it"
else bad "--dtype f16 error: $(cat dtype.err)"; fi

# A full queue: 429 with Retry-After while the one slot is busy.
start_server busy --model slow --threads 1 --max-batch 1 --max-queue 0 && busy_url=$url busy_pid=$pid
run_client cancel "$busy_url" "$key" slow
# A whole (not streamed) request whose client gives up is cancelled too (whitespace probes).
steps() { curl -s "$busy_url/metrics" | awk '/^deepmoe_engine_steps_total/ {print $2}'; }
before=$(steps)
curl -s -o /dev/null --max-time 0.3 -X POST -H "Content-Type: application/json" -d '{"prompt":"The","max_tokens":1000,"ignore_eos":true}' "$busy_url/v1/completions"
for _ in $(seq 1 100); do curl -s "$busy_url/metrics" | grep -q '^deepmoe_requests_running 0' && break; sleep 0.05; done
after=$(steps)
[ -n "$before" ] && [ $((after - before)) -lt 900 ] && curl -s "$busy_url/metrics" | grep -q '^deepmoe_requests_running 0' &&
  ok "a whole request whose client gives up is cancelled ($((after - before)) of 1000 steps)" ||
  bad "whole request cancellation (steps $before -> $after)"
whole=$(curl -s -X POST -H "Content-Type: application/json" -d '{"prompt":"The","max_tokens":600,"ignore_eos":true}' "$busy_url/v1/completions")
echo "$whole" | /usr/bin/python3 -c "import json,sys; d=json.loads(sys.stdin.read()); assert d['usage']['completion_tokens'] == 600 and d['choices'][0]['finish_reason'] == 'length'" &&
  ok "a long whole request (chunked, whitespace first) is valid JSON" || bad "long whole request ($(echo "$whole" | head -c 200))"
curl -s -N --max-time 60 -X POST -H "Content-Type: application/json" -d '{"prompt":"The","max_tokens":1000,"ignore_eos":true,"stream":true}' "$busy_url/v1/completions" >busy_stream.txt &
first_curl=$!
for _ in $(seq 1 100); do grep -q "data:" busy_stream.txt && break; sleep 0.05; done
curl -s -D headers.txt -o body.txt -X POST -H "Content-Type: application/json" -d '{"prompt":"The","max_tokens":2}' "$busy_url/v1/completions"
grep -q "^HTTP/1.1 429" headers.txt && grep -qi "^Retry-After: 1" headers.txt && grep -q '"error"' body.txt &&
  ok "a full queue: 429 with Retry-After" || bad "429 ($(head -1 headers.txt) $(head -c 200 body.txt))"

# SIGTERM: the stream in flight finishes with [DONE], new requests are refused, the server exits 0.
wait_for_stream_start() { for _ in $(seq 1 100); do grep -q "data:" drain_stream.txt && return; sleep 0.05; done; }
wait "$first_curl"  # the first stream ends, then the next takes the free slot
curl -s -N --max-time 60 -X POST -H "Content-Type: application/json" -d '{"prompt":"It","max_tokens":1000,"ignore_eos":true,"stream":true}' "$busy_url/v1/completions" >drain_stream.txt &
curl_pid=$!
wait_for_stream_start
kill -TERM "$busy_pid"
sleep 0.2
refused=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Content-Type: application/json" -d '{"prompt":"a","max_tokens":1}' "$busy_url/v1/completions")
wait "$busy_pid"
rc=$?
wait "$curl_pid" 2>/dev/null
tail -c 200 drain_stream.txt | grep -q "data: \[DONE\]" && grep -q '"finish_reason":"length"' drain_stream.txt &&
  [ "$rc" -eq 0 ] && [ "$refused" = 503 ] &&
  ok "SIGTERM drains: the stream in flight finishes, new requests refused, exit 0" ||
  bad "SIGTERM drain (exit $rc, new request $refused, stream end: $(tail -c 120 drain_stream.txt))"

# Hostile clients (issue 18): each answered with a 4xx or a clean end of stream, the server alive
# after. A model whose vocab_size (600) exceeds the tokenizer's 512 ids, as DeepSeek pads its
# vocabulary; no API key (the default), a short read timeout, one allowed web origin.
sed 's/"vocab_size": 512/"vocab_size": 600/' config.json >padded_config.json
"$deepmoe" init --config padded_config.json --out padded --seed 4 --tokenizer tok >/dev/null || bad "init padded"
start_server hostile --model padded --threads 2 --read-timeout 2 --cors-origin http://app.example || exit 1
h_url=$url h_pid=$pid
j=(-X POST -H "Content-Type: application/json")
grep -q "of the model's 600 token ids have no text" hostile.log && ok "padded vocabulary: the server says which ids it never samples" ||
  bad "padded vocabulary notice ($(head -c 300 hostile.log))"
/usr/bin/python3 -c "import sys; sys.stdout.write('{\"prompt\":\"a\",\"max_tokens\":2,\"response_format\":{\"type\":' + '['*1000000 + ']'*1000000 + '}}')" >nested.json
expect_status "10^6 nested brackets: 400" 400 "nests" "${j[@]}" --data-binary @nested.json "$h_url/v1/completions"
expect_status "10^6 nested brackets to /tokenize: 400" 400 "nests" "${j[@]}" --data-binary @nested.json "$h_url/tokenize"
# Streams at temperature 2 with logprobs, 32 at once: never an id the tokenizer cannot spell, every
# stream ends with [DONE], no error events.
stream_pids=()
for i in $(seq 1 32); do
  curl -s -N --max-time 60 "${j[@]}" -d "{\"prompt\":\"The jury\",\"max_tokens\":40,\"temperature\":2,\"stream\":true,\"logprobs\":3,\"seed\":$i,\"ignore_eos\":true}" \
    "$h_url/v1/completions" >"padded_stream_$i.txt" &
  stream_pids+=($!)
done
wait "${stream_pids[@]}"
streams_ok=1
for i in $(seq 1 32); do
  tail -c 20 "padded_stream_$i.txt" | grep -q "data: \[DONE\]" && ! grep -q '"error"' "padded_stream_$i.txt" || streams_ok=0
done
[ $streams_ok = 1 ] && ok "32 hot streams on a padded vocabulary all end with [DONE], no errors" ||
  bad "padded streams ($(grep -l '"error"' padded_stream_*.txt | head -3) $(tail -c 200 padded_stream_1.txt))"
expect_status "/detokenize of an id past the tokenizer: 400 naming it" 400 'tokens' "${j[@]}" -d '{"tokens":[1,550]}' "$h_url/detokenize"
expect_status "/tokenize of a bad field: 400" 400 "add_special_tokens" "${j[@]}" -d '{"prompt":"a","add_special_tokens":3}' "$h_url/tokenize"
# Huge integers and long stop strings.
expect_status "max_tokens = INT64_MAX: 400" 400 '"param":"max_tokens"' "${j[@]}" -d '{"prompt":"a","max_tokens":9223372036854775807}' "$h_url/v1/completions"
expect_status "max_tokens = 2^64-1: 400" 400 '"param":"max_tokens"' "${j[@]}" -d '{"prompt":"a","max_tokens":18446744073709551615}' "$h_url/v1/completions"
expect_status "max_tokens = 1e400: 400" 400 "" "${j[@]}" -d '{"prompt":"a","max_tokens":1e400}' "$h_url/v1/completions"
long_stop=$(head -c 100000 /dev/zero | tr '\0' 'x')
echo "{\"prompt\":\"a\",\"stop\":[\"$long_stop\"]}" >long_stop.json
expect_status "a 100 kB stop string: 400" 400 '"param":"stop"' "${j[@]}" --data-binary @long_stop.json "$h_url/v1/completions"
head -c 3000000 /dev/zero | tr '\0' 'a' | /usr/bin/python3 -c "import json,sys; print(json.dumps({'prompt': sys.stdin.read()}))" >huge_prompt.json
expect_status "a 3 MB prompt: 400 before tokenizing" 400 "bytes of prompt text" "${j[@]}" --data-binary @huge_prompt.json "$h_url/v1/completions"
# Cross-site requests: a page may POST a form or text/plain without asking; its DNS name may be
# rebound to 127.0.0.1; a preflight from an origin not allowed gets nothing to go on.
expect_status "text/plain POST: 415" 415 "Content-Type" -X POST -H "Content-Type: text/plain" -d '{"prompt":"a","max_tokens":1}' "$h_url/v1/completions"
expect_status "form POST: 415" 415 "Content-Type" -X POST -d '{"prompt":"a","max_tokens":1}' "$h_url/v1/completions"
expect_status "foreign Host without a key: 403" 403 "Host" "${j[@]}" -H "Host: evil.example" -d '{"prompt":"a","max_tokens":1}' "$h_url/v1/completions"
expect_status "foreign Origin: 403" 403 "cross-origin" "${j[@]}" -H "Origin: http://evil.example" -d '{"prompt":"a","max_tokens":1}' "$h_url/v1/completions"
curl -s -D preflight.txt -o /dev/null -X OPTIONS -H "Origin: http://app.example" -H "Access-Control-Request-Method: POST" \
  -H "Access-Control-Request-Headers: content-type" "$h_url/v1/completions"
curl -s -D allowed.txt -o allowed_body.txt "${j[@]}" -H "Origin: http://app.example" -d '{"prompt":"a","max_tokens":2}' "$h_url/v1/completions"
grep -q "^HTTP/1.1 204" preflight.txt && grep -qi "^Access-Control-Allow-Origin: http://app.example" preflight.txt &&
  grep -qi "^Access-Control-Allow-Headers:.*Content-Type" preflight.txt && grep -q "^HTTP/1.1 200" allowed.txt &&
  grep -qi "^Access-Control-Allow-Origin: http://app.example" allowed.txt && grep -q '"choices"' allowed_body.txt &&
  ok "--cors-origin: preflight 204 and the allowed origin's POST answered with CORS headers" ||
  bad "CORS ($(head -1 preflight.txt) $(head -1 allowed.txt))"
# Slow sockets: 600 connections that trickle header bytes (the old server served 288 at a time);
# /health and a real request are still answered, and the server cuts the trickling ones.
cat >slowloris.py <<'PY'
import resource, socket, sys, time, subprocess
port, n = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
sockets = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    sockets.append(s)
def trickle():
    for s in sockets:
        try: s.send(b"X")
        except OSError: pass
trickle(); time.sleep(0.5); trickle()
url = f"http://127.0.0.1:{port}"
health = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url + "/health"],
                        capture_output=True, text=True).stdout
answer = subprocess.run(["curl", "-s", "--max-time", "20", "-X", "POST", "-H", "Content-Type: application/json", "-d",
                         '{"prompt":"The","max_tokens":4}', url + "/v1/completions"], capture_output=True, text=True).stdout
# Keep trickling a byte every half second: a per-read timeout alone would never end these.
deadline = time.time() + 6
while time.time() < deadline:
    trickle(); time.sleep(0.5)
closed = 0
for s in sockets:
    s.settimeout(0.2)
    try:
        closed += s.recv(1) == b""
    except ConnectionResetError:
        closed += 1
    except OSError:
        pass
print(health, '"choices"' in answer, closed)
PY
read -r health answered closed < <(timeout 60 /usr/bin/python3 slowloris.py "${h_url##*:}" 600)
[ "$health" = 200 ] && [ "$answered" = True ] && ok "600 slow sockets: /health and a completion still answered" ||
  bad "slow sockets: /health $health, completion answered $answered"
[ "${closed:-0}" -ge 590 ] && ok "slow sockets cut after --read-timeout ($closed of 600)" || bad "slow sockets cut: ${closed:-none} of 600"
expect_status "hostile server still healthy" 200 '"ok"' "$h_url/health"
kill -TERM "$h_pid" && wait "$h_pid" && ok "hostile server exits 0 on SIGTERM" || bad "hostile server exit"

# The API key from the environment or a file (not visible in ps), compared in constant time.
DEEPMOE_API_KEY=env-key start_server envkey --model model --threads 1 && env_url=$url env_pid=$pid
expect_status "key from DEEPMOE_API_KEY: 401 without it" 401 "API key" "$env_url/v1/models"
expect_status "key from DEEPMOE_API_KEY: 200 with it" 200 '"data"' -H "Authorization: Bearer env-key" "$env_url/v1/models"
tr '\0' ' ' <"/proc/$env_pid/cmdline" | grep -q env-key && bad "the env key shows in ps" || ok "the env key is not in ps"
kill "$env_pid" 2>/dev/null
printf 'file-key\n' >key.txt
start_server filekey --model model --threads 1 --api-key-file key.txt && file_url=$url file_pid=$pid
expect_status "key from --api-key-file: 401 with another" 401 "API key" -H "Authorization: Bearer file-ke" "$file_url/v1/models"
expect_status "key from --api-key-file: 200 with it" 200 '"data"' -H "Authorization: Bearer file-key" "$file_url/v1/models"
kill "$file_pid" 2>/dev/null
if "$deepmoe" serve --model model --api-key-file /nonexistent/key >/dev/null 2>keyfile.err; then bad "missing key file accepted"
elif [ "$(wc -l <keyfile.err)" -eq 1 ] && grep -q -- "--api-key-file" keyfile.err; then ok "missing key file: one line naming it"
else bad "missing key file error: $(cat keyfile.err)"; fi
"$deepmoe" serve --model model --host 0.0.0.0 --port 0 2>public.log &
public_pid=$!
for _ in $(seq 1 100); do grep -q "http://" public.log && break; sleep 0.1; done
kill "$public_pid" 2>/dev/null; wait "$public_pid" 2>/dev/null
grep -q "warning: listening on 0.0.0.0 without an API key" public.log && ok "a public --host without a key warns" ||
  bad "no warning for a public host ($(head -c 300 public.log))"

kill -TERM "$main_pid" && wait "$main_pid" && ok "main server exits 0 on SIGTERM" || bad "main server exit"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
