// llama.cpp's side of the race: prefill and decode speed of one GGUF file, measured like
// `deepmoe bench` (random prompt ids, the whole prompt in one batch, then greedy decoding one
// token at a time; median over repetitions), printed as one JSON object.
//
//   LD_PRELOAD=build/threadpool_shim.so node race.mjs MODEL.gguf [--threads T] [--prompt P]
//       [--gen G] [--reps N] [--no-mmap] [--flash-attention auto|on|off]
//
// Preload the shim (race.sh does) so that ggml keeps one thread pool, as llama-bench does;
// without it ggml starts and joins its threads for every decoded token. Context settings follow
// llama-bench's defaults: flash attention "auto", f16 KV cache, one batch of max(512, P) tokens.
import {getLlama, LlamaLogLevel} from "node-llama-cpp";
import fs from "node:fs";

function fail(message) {
    console.error(`race.mjs: ${message}`);
    process.exit(1);
}

const args = process.argv.slice(2);
const modelPath = args[0];
if (!modelPath || modelPath.startsWith("--"))
    fail("usage: node race.mjs MODEL.gguf [--threads T] [--prompt P] [--gen G] [--reps N] [--no-mmap] [--flash-attention auto|on|off]");
if (!fs.existsSync(modelPath)) fail(`${modelPath}: no such file`);
const options = {threads: 1, prompt: 128, gen: 128, reps: 5, mmap: true, flashAttention: "auto"};
for (let i = 1; i < args.length; i++) {
    const flag = args[i];
    if (flag === "--no-mmap") options.mmap = false;
    else if (flag === "--flash-attention") options.flashAttention = {auto: "auto", on: true, off: false}[args[++i]];
    else if (["--threads", "--prompt", "--gen", "--reps"].includes(flag)) {
        const value = Number(args[++i]);
        if (!Number.isInteger(value) || value < 1) fail(`${flag} needs a positive integer, got '${args[i]}'`);
        options[flag.slice(2)] = value;
    } else fail(`unknown argument '${flag}'`);
}
if (options.flashAttention === undefined) fail("--flash-attention takes auto, on or off");

const loadStart = performance.now();
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error, maxThreads: 0});
// ignoreMemorySafetyChecks: node-llama-cpp's own RAM estimate must not refuse a file that
// llama.cpp itself can map; if memory really runs out, llama.cpp says so.
const model = await llama.loadModel({modelPath, useMmap: options.mmap, ignoreMemorySafetyChecks: true});
const loadSeconds = (performance.now() - loadStart) / 1000;
const vocab = model.fileInfo.metadata?.tokenizer?.ggml?.tokens?.length;
if (!vocab) fail(`${modelPath}: no tokenizer.ggml.tokens in the metadata`);

const batchSize = Math.max(512, options.prompt);
const context = await model.createContext({
    contextSize: options.prompt + options.gen + 8,
    batchSize,
    flashAttention: options.flashAttention,
    threads: options.threads,
    ignoreMemorySafetyChecks: true,
});
const sequence = context.getSequence();

// The same random prompt every repetition (a fixed-seed LCG), as deepmoe bench's is.
let state = 1234;
const prompt = Array.from({length: options.prompt}, () => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return state % vocab;
});

const prefillRates = [], decodeRates = [];
for (let rep = 0; rep < options.reps; rep++) {
    await sequence.clearHistory();
    // Prefill: the whole prompt in one decode call; the last position yields the first new token.
    const input = prompt.map((t, i) => (i === prompt.length - 1 ? [t, {generateNext: {token: true}}] : t));
    let start = performance.now();
    const results = await sequence.controlledEvaluate(input);
    prefillRates.push(options.prompt / ((performance.now() - start) / 1000));
    const first = results[prompt.length - 1]?.next?.token;
    if (first == null) fail("prefill produced no token");

    // Decode: feed each greedy token back, one llama_decode per token, gen of them.
    let produced = 0;
    start = performance.now();
    for await (const token of sequence.evaluate([first], {temperature: 0})) {
        void token;
        if (++produced >= options.gen) break;
    }
    decodeRates.push(options.gen / ((performance.now() - start) / 1000));
}

const median = (values) => {
    const v = [...values].sort((a, b) => a - b);
    return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
};
// Peak RSS, and what is resident at the end split into anonymous memory (llama.cpp's repacked
// weights, KV cache, node's heap) and mapped file pages (the GGUF with mmap).
const status = fs.readFileSync("/proc/self/status", "utf8");
const statusMb = (key) => Number(new RegExp(`${key}:\\s+(\\d+) kB`).exec(status)[1]) / 1024;
console.log(JSON.stringify({
    model: modelPath,
    engine: "llama.cpp (node-llama-cpp 3.22.1)",
    threads: options.threads,
    thread_pool_shim: (process.env.LD_PRELOAD ?? "").includes("threadpool_shim"),
    thread_pool_poll: Number(process.env.DEEPMOE_SHIM_POLL ?? 50),
    mmap: options.mmap,
    flash_attention: context.flashAttention,
    prompt_tokens: options.prompt,
    gen_tokens: options.gen,
    reps: options.reps,
    load_seconds: loadSeconds,
    prefill_tok_s: median(prefillRates),
    decode_tok_s: median(decodeRates),
    peak_rss_mb: statusMb("VmHWM"),
    rss_anon_mb: statusMb("RssAnon"),
    rss_file_mb: statusMb("RssFile"),
}));
await context.dispose();
await model.dispose();
