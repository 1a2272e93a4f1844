// Drives `deepmoe serve` as users do, through OpenAI's official client (npm openai), and
// prints PASS/FAIL lines (tests/e2e/serve_test.sh counts them). Modes:
//   api BASE KEY MODEL          chat and completions, streamed and not, seeds, n, logprobs,
//                               stop strings split across tokens, errors through the client
//   invariance BASE KEY MODEL   a greedy request alone and among 15 others: the same text
//   cancel BASE KEY MODEL       a client that hangs up mid-stream frees its sequence (needs a
//                               model slow enough that 1000 tokens take longer than the hang-up)
//   prefix BASE KEY MODEL       a repeated system prompt is served from the prefix cache
//   load BASE KEY MODEL CLIENTS REQUESTS   concurrent clients, no failed or lost request
//   preempt BASE KEY MODEL SMALL_BASE      a tiny cache preempts, and outputs stay the same
//   speculative BASE KEY MODEL SPEC_BASE   a server drafting with the MTP module gives the same
//                               text (alone, 8 at once, streamed) and reports drafts in usage and /metrics
import OpenAI from "openai";

const [mode, base, key, model, ...rest] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0, timeout: 120000 });
let failures = 0;
function check(name, ok, detail = "") {
  console.log(`${ok ? "PASS" : "FAIL"} ${name}${ok ? "" : ` (${detail})`}`);
  if (!ok) failures++;
}

async function metrics(url = base) {
  const text = await (await fetch(`${url}/metrics`, { headers: { Authorization: `Bearer ${key}` } })).text();
  const value = (name) => {
    const line = text.split("\n").find((l) => l.startsWith(name + " "));
    return line === undefined ? NaN : Number(line.slice(name.length + 1));
  };
  return { text, value };
}

async function streamedText(params, kind = "completions") {
  const stream = await (kind === "chat" ? client.chat.completions : client.completions).create({ ...params, stream: true, stream_options: { include_usage: true } });
  const deltas = [];
  let finish = null, usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      const piece = kind === "chat" ? choice.delta?.content : choice.text;
      if (piece) deltas.push(piece);
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  return { text: deltas.join(""), deltas, finish, usage };
}

async function api() {
  const models = await client.models.list();
  check("models.list names the model", models.data.length === 1 && models.data[0].id === model, JSON.stringify(models.data));
  const retrieved = await client.models.retrieve(model);
  let missing = null;
  try {
    await client.models.retrieve("no-such-model");
  } catch (e) {
    missing = e.status;
  }
  check("models.retrieve: the model, and 404 for another", retrieved.id === model && missing === 404, `${retrieved.id} ${missing}`);

  const chatParams = { model, messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "The jury said" }], max_tokens: 24, temperature: 0 };
  const chat = await client.chat.completions.create(chatParams);
  const message = chat.choices[0].message;
  check("chat completion", chat.object === "chat.completion" && message.role === "assistant" && typeof message.content === "string" &&
    ["stop", "length"].includes(chat.choices[0].finish_reason) && chat.usage.completion_tokens <= 24 &&
    chat.usage.total_tokens === chat.usage.prompt_tokens + chat.usage.completion_tokens, JSON.stringify(chat));
  const chatStream = await streamedText(chatParams, "chat");
  check("chat stream equals the whole reply", chatStream.text === message.content && chatStream.finish === chat.choices[0].finish_reason,
    `${JSON.stringify(chatStream.text)} vs ${JSON.stringify(message.content)}`);
  check("stream_options.include_usage", chatStream.usage && chatStream.usage.completion_tokens === chat.usage.completion_tokens &&
    chatStream.usage.prompt_tokens === chat.usage.prompt_tokens, JSON.stringify(chatStream.usage));

  const params = { model, prompt: "It was a", max_tokens: 30, temperature: 0 };
  const completion = await client.completions.create(params);
  const full = completion.choices[0].text;
  const streamed = await streamedText(params);
  check("completion stream equals the whole text", streamed.text === full && completion.object === "text_completion",
    `${JSON.stringify(streamed.text)} vs ${JSON.stringify(full)}`);

  const sampled = { model, prompt: "The", max_tokens: 20, temperature: 1.0, top_p: 0.95, top_k: 50 };
  const [a, b, c] = await Promise.all([123, 123, 124].map((seed) => client.completions.create({ ...sampled, seed })));
  check("same seed, same text; another seed, another text", a.choices[0].text === b.choices[0].text && a.choices[0].text !== c.choices[0].text,
    [a, b, c].map((r) => JSON.stringify(r.choices[0].text)).join(" / "));

  const several = await client.completions.create({ ...sampled, n: 3, seed: 5 });
  const texts = several.choices.map((choice) => choice.text);
  check("n = 3 choices", several.choices.length === 3 && several.choices.every((choice, i) => choice.index === i) && new Set(texts).size > 1,
    JSON.stringify(texts));

  const withLogprobs = await client.chat.completions.create({ ...chatParams, logprobs: true, top_logprobs: 3 });
  const content = withLogprobs.choices[0].logprobs?.content ?? [];
  check("chat logprobs and top_logprobs", content.length === withLogprobs.usage.completion_tokens && content.length > 0 &&
    content.every((entry) => entry.logprob <= 0 && entry.top_logprobs.length === 3 && entry.top_logprobs[0].logprob >= entry.top_logprobs[2].logprob &&
      Math.abs(entry.logprob - entry.top_logprobs[0].logprob) < 1e-6),
    JSON.stringify(content.slice(0, 2)));
  const completionLogprobs = await client.completions.create({ ...params, logprobs: 2 });
  const lp = completionLogprobs.choices[0].logprobs;
  check("completions logprobs", lp && lp.tokens.length === completionLogprobs.usage.completion_tokens && lp.top_logprobs.every((t) => Object.keys(t).length >= 1),
    JSON.stringify(lp).slice(0, 300));

  // A stop string across the boundary of two streamed pieces: the text ends right before it.
  const k = streamed.deltas.findIndex((d, i) => i + 1 < streamed.deltas.length && d.length >= 1 && streamed.deltas[i + 1].length >= 1 && i >= 2);
  if (k < 0) {
    check("stop string split across tokens", false, `no two consecutive pieces in ${JSON.stringify(streamed.deltas)}`);
  } else {
    const stop = streamed.deltas[k].slice(-2) + streamed.deltas[k + 1].slice(0, 2);
    const expected = full.slice(0, full.indexOf(stop));
    const stopped = await client.completions.create({ ...params, stop: [stop, "never appears here"] });
    const stoppedStream = await streamedText({ ...params, stop });
    check("stop string split across tokens", stopped.choices[0].text === expected && stopped.choices[0].finish_reason === "stop" &&
      stoppedStream.text === expected && stoppedStream.finish === "stop",
      `stop ${JSON.stringify(stop)}: ${JSON.stringify(stopped.choices[0].text)} / ${JSON.stringify(stoppedStream.text)}, expected ${JSON.stringify(expected)}`);
  }

  try {
    await client.completions.create({ ...params, temperature: 3 });
    check("400 through the client", false, "no error");
  } catch (e) {
    check("400 through the client", e instanceof OpenAI.APIError && e.status === 400 && e.param === "temperature", `${e.status} ${e.param} ${e.message}`);
  }
  try {
    await new OpenAI({ baseURL: `${base}/v1`, apiKey: "wrong", maxRetries: 0 }).models.list();
    check("401 with a wrong key", false, "no error");
  } catch (e) {
    check("401 with a wrong key", e.status === 401, `${e.status} ${e.message}`);
  }
}

async function invariance() {
  const request = { model, prompt: "The jury said that the city", max_tokens: 32, temperature: 0 };
  const alone = (await client.completions.create(request)).choices[0].text;
  const others = Array.from({ length: 15 }, (_, i) =>
    client.completions.create({ model, prompt: `Another prompt, number ${i}: ${"and so on ".repeat(i)}`, max_tokens: 20 + i, temperature: i % 2 ? 0.9 : 0, seed: i }));
  const [crowded, ...rest] = await Promise.all([client.completions.create(request), ...others]);
  check("a greedy request alone and among 15 others: same text", crowded.choices[0].text === alone && rest.length === 15,
    `${JSON.stringify(crowded.choices[0].text)} vs ${JSON.stringify(alone)}`);
}

async function cancel() {
  const before = (await metrics()).value("deepmoe_engine_steps_total");
  const controller = new AbortController();
  let chunks = 0;
  try {
    const stream = await client.chat.completions.create({ model, messages: [{ role: "user", content: "Tell a long story" }], max_tokens: 1000,
      ignore_eos: true, temperature: 0, stream: true },
      { signal: controller.signal });
    for await (const chunk of stream) if (chunk.choices.length && ++chunks === 3) controller.abort();
  } catch (e) {
    // the abort ends the iteration
  }
  let m;
  for (let i = 0; i < 100; i++) {
    m = await metrics();
    if (m.value("deepmoe_requests_running") === 0 && m.value('deepmoe_kv_blocks{state="used"}') === 0) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const steps = m.value("deepmoe_engine_steps_total") - before;
  check("a client that hangs up is cancelled and its blocks freed", chunks >= 3 && m.value("deepmoe_requests_running") === 0 &&
    m.value('deepmoe_kv_blocks{state="used"}') === 0 && steps < 900, `chunks ${chunks}, steps ${steps}`);
}

async function prefix() {
  const system = "You are a careful assistant who answers questions about the Brown corpus. ".repeat(6);
  const ask = (question) => client.chat.completions.create({ model, messages: [{ role: "system", content: system }, { role: "user", content: question }], max_tokens: 4, temperature: 0 });
  const hitsBefore = (await metrics()).value("deepmoe_prefix_cache_hits_total");
  const first = await ask("What did the jury say?");
  const second = await ask("What did the jury say?");
  const third = await ask("Who was the mayor?");
  const cached = (r) => r.usage.prompt_tokens_details?.cached_tokens ?? 0;
  const hits = (await metrics()).value("deepmoe_prefix_cache_hits_total") - hitsBefore;
  check("a repeated prompt comes from the prefix cache", cached(second) >= second.usage.prompt_tokens - 16 && cached(second) > 0 &&
    cached(third) >= 64 && second.choices[0].message.content === first.choices[0].message.content && hits >= cached(second) + cached(third),
    `prompt ${second.usage.prompt_tokens}, cached ${cached(first)} / ${cached(second)} / ${cached(third)}, hits ${hits}`);
}

async function load(clients, requests) {
  let ok = 0;
  const errors = [];
  const start = Date.now();
  await Promise.all(Array.from({ length: clients }, async (_, c) => {
    for (let r = 0; r < requests; r++) {
      try {
        const stream = (c + r) % 2 === 0;
        if ((c + r) % 3 === 0) {
          const params = { model, messages: [{ role: "user", content: `client ${c} request ${r}` }], max_tokens: 8, temperature: 0.7, seed: c * 1000 + r };
          if (stream) {
            const s = await streamedText(params, "chat");
            if (s.finish) ok++;
            else errors.push("chat stream without finish_reason");
          } else {
            const res = await client.chat.completions.create(params);
            if (res.choices[0].finish_reason) ok++;
            else errors.push("chat without finish_reason");
          }
        } else {
          const params = { model, prompt: `client ${c} request ${r}`, max_tokens: 8, temperature: 0 };
          if (stream) {
            const s = await streamedText(params);
            if (s.finish) ok++;
            else errors.push("stream without finish_reason");
          } else {
            const res = await client.completions.create(params);
            if (res.choices[0].finish_reason) ok++;
            else errors.push("completion without finish_reason");
          }
        }
      } catch (e) {
        errors.push(`${e.status ?? ""} ${e.message}`);
      }
    }
  }));
  const seconds = (Date.now() - start) / 1000;
  check(`load: ${clients} clients x ${requests} requests, none failed or lost`, ok === clients * requests,
    `${ok} ok, ${errors.length} errors: ${errors.slice(0, 3).join("; ")}`);
  console.log(`load: ${clients * requests} requests in ${seconds.toFixed(1)} s`);
}

async function preempt(smallBase) {
  const small = new OpenAI({ baseURL: `${smallBase}/v1`, apiKey: key, maxRetries: 0, timeout: 120000 });
  const requests = Array.from({ length: 8 }, (_, i) => ({ model, prompt: `Story ${i}: once upon a time`, max_tokens: 150, temperature: 0, ignore_eos: true }));
  const expected = [];
  for (const r of requests) expected.push((await client.completions.create(r)).choices[0].text);
  const got = await Promise.all(requests.map((r) => small.completions.create(r)));
  const preemptions = (await metrics(smallBase)).value("deepmoe_preemptions_total");
  check("preempted requests finish with the same text", got.every((r, i) => r.choices[0].text === expected[i] && r.usage.completion_tokens === 150) &&
    preemptions > 0,
    `preemptions ${preemptions}, equal ${got.map((r, i) => r.choices[0].text === expected[i]).join(",")}`);
}

async function speculative(specBase) {
  const spec = new OpenAI({ baseURL: `${specBase}/v1`, apiKey: key, maxRetries: 0, timeout: 120000 });
  const requests = Array.from({ length: 8 }, (_, i) => ({ model, prompt: `Chapter ${i}: the jury said`, max_tokens: 60, temperature: 0, ignore_eos: true }));
  const expected = [];
  for (const r of requests) expected.push((await client.completions.create(r)).choices[0].text);
  const alone = await spec.completions.create(requests[0]);
  const together = await Promise.all(requests.map((r) => spec.completions.create(r)));
  let streamed = "";
  for await (const chunk of await spec.completions.create({ ...requests[1], stream: true })) streamed += chunk.choices[0]?.text ?? "";
  check("speculative decoding: the same greedy text alone, 8 at once and streamed",
    alone.choices[0].text === expected[0] && together.every((r, i) => r.choices[0].text === expected[i]) && streamed === expected[1],
    `alone ${alone.choices[0].text === expected[0]}, together ${together.map((r, i) => r.choices[0].text === expected[i]).join(",")}, streamed ${streamed === expected[1]}`);
  const details = alone.usage.completion_tokens_details ?? {};
  const m = await metrics(specBase);
  const drafted = m.value("deepmoe_spec_decode_draft_tokens_total"), accepted = m.value("deepmoe_spec_decode_accepted_tokens_total");
  check("speculative decoding is reported: usage.completion_tokens_details and /metrics",
    details.accepted_prediction_tokens + details.rejected_prediction_tokens > 0 && drafted > 0 && accepted >= 0 && accepted <= drafted,
    `usage ${JSON.stringify(alone.usage)}, drafted ${drafted}, accepted ${accepted}`);
}

try {
  if (mode === "api") await api();
  else if (mode === "invariance") await invariance();
  else if (mode === "cancel") await cancel();
  else if (mode === "prefix") await prefix();
  else if (mode === "load") await load(Number(rest[0]), Number(rest[1]));
  else if (mode === "preempt") await preempt(rest[0]);
  else if (mode === "speculative") await speculative(rest[0]);
  else throw new Error(`unknown mode ${mode}`);
} catch (e) {
  check(`${mode} ran`, false, e.stack);
}
process.exit(failures ? 1 : 0);
