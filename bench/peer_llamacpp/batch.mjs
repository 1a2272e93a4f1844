// llama.cpp's side of bench/serve: C sequences of one context decoding together (node-llama-cpp
// batches the sequences' pending tokens into one llama_decode, as llama.cpp's server does with
// its slots), P random prompt tokens and exactly G greedy tokens each; aggregate generated
// tokens/s per concurrency (median of R after a warm-up), as JSON lines like engine_bench's.
//   LD_PRELOAD=build/threadpool_shim.so node batch.mjs MODEL.gguf   (in bench/peer_llamacpp)
//       [--concurrency 1,4,16,64] [--prompt 64] [--gen 128] [--threads 2] [--reps 3]
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const args = process.argv.slice(2);
const modelPath = args[0];
const option = (name, fallback) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 ? args[i + 1] : fallback;
};
const concurrencies = option("concurrency", "1,4,16,64").split(",").map(Number);
const promptLength = Number(option("prompt", "64")), gen = Number(option("gen", "128"));
const threads = Number(option("threads", "2")), reps = Number(option("reps", "3"));

const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error, maxThreads: 0});
const model = await llama.loadModel({modelPath, ignoreMemorySafetyChecks: true});
const vocab = model.fileInfo.metadata?.tokenizer?.ggml?.tokens?.length;
let state = 1234;  // the same LCG as engine_bench: random prompt ids
const randomPrompt = () => Array.from({length: promptLength}, () => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return state % vocab;
});

for (const c of concurrencies) {
    const context = await model.createContext({
        sequences: c, contextSize: c * (promptLength + gen + 8), batchSize: Math.max(512, c * promptLength), threads,
        ignoreMemorySafetyChecks: true,
    });
    const sequences = Array.from({length: c}, () => context.getSequence());
    const rates = [];
    for (let rep = 0; rep < reps + 1; rep++) {
        const start = performance.now();
        const counts = await Promise.all(sequences.map(async (sequence) => {
            await sequence.clearHistory();
            const prompt = randomPrompt();
            const input = prompt.map((t, i) => (i === prompt.length - 1 ? [t, {generateNext: {token: true}}] : t));
            const results = await sequence.controlledEvaluate(input);
            let produced = 1;
            const first = results[prompt.length - 1]?.next?.token;
            for await (const token of sequence.evaluate([first], {temperature: 0})) {
                void token;
                if (++produced >= gen) break;
            }
            return produced;
        }));
        const seconds = (performance.now() - start) / 1000;
        if (rep > 0) rates.push(counts.reduce((a, b) => a + b, 0) / seconds);
    }
    rates.sort((a, b) => a - b);
    console.log(JSON.stringify({engine: "llama.cpp", concurrency: c, prompt: promptLength, gen, tokens_per_second: Math.round(rates[Math.floor(rates.length / 2)])}));
    await context.dispose();
}
