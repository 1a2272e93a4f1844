// HF tokenizers' JavaScript port on the same measurement as bench/tokenizer_bench.cpp:
// load time (median of 5) and encode throughput (median of 3, fresh tokenizer each pass).
//   node bench_tokenizer.mjs TOKENIZER_DIR TEXT_FILE
import fs from "fs";
import path from "path";
import { Tokenizer } from "@huggingface/tokenizers";

const [dir, file] = process.argv.slice(2);
const text = fs.readFileSync(file, "utf8");
const bytes = fs.statSync(file).size;
const median = (v) => v.sort((a, b) => a - b)[Math.floor(v.length / 2)];
const load = [], encode = [];
let tokens = 0;
for (let i = 0; i < 5; ++i) {
  let start = performance.now();
  const tj = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
  const tc = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8"));
  const tokenizer = new Tokenizer(tj, tc);
  load.push(performance.now() - start);
  if (i >= 3) continue;
  start = performance.now();
  tokens = tokenizer.encode(text, { add_special_tokens: false }).ids.length;
  encode.push(performance.now() - start);
}
console.log(JSON.stringify({ engine: "@huggingface/tokenizers (JS)", load_ms: +median(load).toFixed(1),
  encode_mb_s: +(bytes / median(encode) / 1e3).toFixed(2), tokens, bytes }));
