// The reference: HF tokenizers' JavaScript port encodes each JSONL string of argv[3] with the
// tokenizer in directory argv[2] (no special tokens added), one JSON array of ids per line.
// With argv[4] = "--raw FILE...", each file's bytes are decoded as UTF-8 the WHATWG way
// (invalid bytes -> U+FFFD, as Rust's from_utf8_lossy) and encoded, one line per file.
import fs from "fs";
import path from "path";
import { Tokenizer } from "@huggingface/tokenizers";

const dir = process.argv[2];
const read = (name) => {
  const file = path.join(dir, name);
  return fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, "utf8")) : {};
};
const tokenizer = new Tokenizer(read("tokenizer.json"), read("tokenizer_config.json"));
const encode = (text) => JSON.stringify(tokenizer.encode(text, { add_special_tokens: false }).ids);

const lines = [];
if (process.argv[3] === "--raw") {
  for (const file of process.argv.slice(4)) lines.push(encode(new TextDecoder().decode(fs.readFileSync(file))));
} else {
  for (const line of fs.readFileSync(process.argv[3], "utf8").split("\n")) {
    if (line.length > 0) lines.push(encode(JSON.parse(line)));
  }
}
process.stdout.write(lines.join("\n") + "\n");
