// llama.cpp's logits for every position of one token sequence, as deepmoe's `logits` command
// writes them: float32 .npy [n_tokens, vocab].
//
//   node logits.mjs MODEL.gguf TOKENS_CSV OUT.npy [threads]
//
// llama.cpp runs through node-llama-cpp's prebuilt CPU binaries (install.sh), with flash attention
// off and an f32 KV cache so that the comparison measures the weights' format, not a cache
// rounding. node-llama-cpp returns a position's logits only through its sampler
// (controlledEvaluate with generateNext.logits); with no sampling options the chain is greedy,
// which leaves the logits untouched, and we check that every vocabulary entry came back.
import {getLlama, LlamaLogLevel} from "node-llama-cpp";
import fs from "node:fs";

function fail(message) {
    console.error(`logits.mjs: ${message}`);
    process.exit(1);
}

const [modelPath, tokensCsv, outPath, threadsArg] = process.argv.slice(2);
if (!modelPath || !tokensCsv || !outPath)
    fail("usage: node logits.mjs MODEL.gguf TOKENS_CSV OUT.npy [threads]");
if (!fs.existsSync(modelPath))
    fail(`${modelPath}: no such file`);
const tokens = tokensCsv.split(",").map((s) => {
    if (!/^\d+$/.test(s.trim())) fail(`token '${s}' is not a non-negative integer`);
    return Number(s);
});
const threads = threadsArg === undefined ? 1 : Number(threadsArg);
// Positions per controlledEvaluate call: the JS side keeps one Map of vocab entries per position
// until the call returns (~5 MB each for a 129k vocabulary), so long sequences go in chunks of
// one decode batch each. Every chunk extends the same sequence (its KV cache).
const chunk = Number(process.env.LOGITS_CHUNK ?? 50);

const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error, maxThreads: 0});
const model = await llama.loadModel({modelPath});
// The vocabulary size as llama.cpp sees it (node-llama-cpp has no getter for it).
const vocab = model.fileInfo.metadata?.tokenizer?.ggml?.tokens?.length;
if (!vocab) fail(`${modelPath}: no tokenizer.ggml.tokens in the metadata`);
for (const t of tokens)
    if (t >= vocab) fail(`token ${t} is outside the vocabulary (${vocab})`);

const context = await model.createContext({
    contextSize: Math.max(256, tokens.length + 8),
    batchSize: Math.max(512, chunk),
    flashAttention: false,
    experimentalKvCacheKeyType: "F32",
    experimentalKvCacheValueType: "F32",
    threads,
});
if (context.flashAttention) fail("flash attention is on although it was asked off");
const sequence = context.getSequence();

const out = new Float32Array(tokens.length * vocab);
for (let start = 0; start < tokens.length; start += chunk) {
    const part = tokens.slice(start, start + chunk).map((t) => [t, {generateNext: {logits: true}}]);
    const results = await sequence.controlledEvaluate(part);
    for (let i = 0; i < part.length; i++) {
        const logits = results[i]?.next?.logits;
        if (!logits || logits.size !== vocab)
            fail(`position ${start + i}: got ${logits?.size ?? 0} logits, expected ${vocab}`);
        const row = out.subarray((start + i) * vocab, (start + i + 1) * vocab);
        for (const [token, value] of logits) row[token] = value;
    }
}

// .npy v1.0: magic, header length, a Python dict literal padded with spaces to a multiple of 64.
let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${tokens.length}, ${vocab}), }`;
header = header.padEnd(Math.ceil((header.length + 11) / 64) * 64 - 11) + "\n";
const preamble = Buffer.alloc(10);
preamble.write("\x93NUMPY", 0, "latin1");
preamble[6] = 1;
preamble[7] = 0;
preamble.writeUInt16LE(header.length, 8);
fs.writeFileSync(outPath, Buffer.concat([preamble, Buffer.from(header, "latin1"), Buffer.from(out.buffer)]));

await context.dispose();
await model.dispose();
