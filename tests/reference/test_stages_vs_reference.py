#!/usr/bin/python3
"""The later training stages' objectives against PyTorch float64 autograd (Debian python3-torch) on the
same weights and examples, through `--dump-grads` (step 0's unclipped gradients) as
test_grads_vs_reference.py checks pretraining:

- SFT (`deepmoe sft`): the mean over the step's trained tokens of -log p(token), the trained tokens
  being each completion and its EOS ({"prompt", "completion"} lines: the prompt tokenized with BOS, the
  completion without, EOS appended), plus A x the balance loss; rows padded past each example.
- DPO (`deepmoe dpo`): the mean over pairs of -log sigmoid(beta [(s_w - r_w) - (s_l - r_l)]), s the
  policy's and r a second (reference) model's sums of log p over each reply and its EOS, plus A x the
  balance loss over the pairs' rows; the reference differs from the policy so that the margin is not 0.
- GRPO (`deepmoe grpo --log-rollouts`): on the completions the run sampled and logged, with their
  sampler log-probabilities and rewards, 1/N sum over completions of the mean over their tokens of
  min(rho A, clip(rho, 1 - eps, 1 + eps) A) - beta k3(ref, policy), negated, plus A x the balance loss;
  the clip active for some tokens, a second model as the reference, over two micro-batches.
- SFT over three accumulated micro-batches: the same loss as one batch (the balance loss too).
- EWC: `deepmoe fisher`'s diagonal Fisher (the mean over sequences of each sequence's squared
  mean-cross-entropy gradient) against autograd's, and `train --ewc F --ewc-lambda L` from another model
  than F's anchor: the gradient of the pretraining loss plus L/2 sum F (theta - theta*)^2.

Every parameter's gradient must match within 1e-4 relative (norm of the difference over the norm of
the reference), and the loss. The token ids come from `deepmoe tokenize` (checked against HF's
tokenizer elsewhere). Prints 'N passed, M failed'."""
import json
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import deepseek_ref as ref  # noqa: E402
from safetensors_io import ModelWeights, read_safetensors  # noqa: E402
from test_grads_vs_reference import BASE, BATCH, SEQ, VARIANTS, report, run_cases, sequence_loss, sequence_terms  # noqa: E402, E501

TEXT = [f"the quick brown fox jumps over the lazy dog {i} times, then naps; 3 + {i} = {3 + i}." for i in range(40)]
EXAMPLES = [
    {"prompt": "Question: 3 + 4 = ?\nAnswer:", "completion": " 7"},
    {"prompt": "the quick brown fox", "completion": " jumps over the lazy dog, then naps."},
    {"prompt": "Question: how many dogs nap?\nAnswer:", "completion": " one lazy dog naps 3 times"},
]


def tokenize(deepmoe, tok, text, special=False):
    out = subprocess.run([deepmoe, "tokenize", "--tokenizer", tok, "--text", text, "--json"] +
                         (["--add-special-tokens"] if special else []), check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def model_with_tokenizer(deepmoe, d, overrides):
    """A random model of BASE + overrides (vocabulary 300) with a BPE tokenizer trained here."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "text.txt"), "w") as f:
        f.write("\n".join(TEXT) + "\n")
    subprocess.run([deepmoe, "tokenizer-train", "--vocab-size", "280", "--out", os.path.join(d, "tok"),
                    os.path.join(d, "text.txt")], check=True, capture_output=True)
    cfg_raw = dict(BASE, **overrides, vocab_size=300)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg_raw, f)
    subprocess.run([deepmoe, "init", "--config", os.path.join(d, "config.json"), "--out", os.path.join(d, "model"),
                    "--seed", "3", "--tokenizer", os.path.join(d, "tok")], check=True, stdout=subprocess.DEVNULL)
    return ref.Config(cfg_raw)


def compare(name, our_loss, ours, loss, w, tolerance=1e-4):
    failures, worst = [], 0.0
    for n, leaf in w.items():
        if n.endswith("e_score_correction_bias"):
            continue
        expected = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        if n not in ours:
            failures.append(f"{n}: no gradient written")
            continue
        scale, diff = expected.norm().item(), (ours[n] - expected).norm().item()
        if scale == 0:
            if ours[n].abs().max().item() != 0:
                failures.append(f"{n}: reference gradient is zero, ours is not")
            continue
        worst = max(worst, diff / scale)
        if diff / scale > tolerance:
            failures.append(f"{n}: relative error {diff / scale:.2e}")
    return report(name, failures, f"loss {our_loss:.6f}, {len(w)} tensors, worst relative error {worst:.1e}")


def check_sft(name, overrides, aux, deepmoe, work, accumulate=False):
    d = os.path.join(work, name)
    cfg = model_with_tokenizer(deepmoe, d, overrides)
    tok = os.path.join(d, "tok")
    with open(os.path.join(d, "sft.jsonl"), "w") as f:
        for e in EXAMPLES:
            f.write(json.dumps(e) + "\n")
    seq = 24
    subprocess.run([deepmoe, "sft", "--init", os.path.join(d, "model"), "--data", os.path.join(d, "sft.jsonl"),
                    "--seq", str(seq), "--steps", "1", "--aux-loss", str(aux), "--lr", "1e-3",
                    "--dump-grads", os.path.join(d, "grads"), "--out", os.path.join(d, "trained")] +
                   (["--batch", "1", "--grad-accum", str(len(EXAMPLES))] if accumulate else
                    ["--batch", str(len(EXAMPLES))]), check=True, stdout=subprocess.DEVNULL)
    ours = read_safetensors(os.path.join(d, "grads", "model.safetensors"))
    with open(os.path.join(d, "trained", "metrics.jsonl")) as f:
        our_loss = json.loads(f.readline())["loss"]
    eos = tokenize(deepmoe, tok, "<｜end▁of▁sentence｜>")

    stored = ModelWeights(os.path.join(d, "model"))
    w = {n: stored[n].to(torch.float64).clone().requires_grad_(True) for n in stored.names()}
    masked, trained, balance_total = torch.zeros((), dtype=torch.float64), 0, torch.zeros((), dtype=torch.float64)
    for e in EXAMPLES:
        prompt = tokenize(deepmoe, tok, e["prompt"], special=True)
        completion = tokenize(deepmoe, tok, e["completion"]) + eos
        tokens = (prompt + completion)[:seq + 1]
        weights = ([0.0] * len(prompt) + [1.0] * len(completion))[1:seq + 1]
        # The row as the trainer pads it: the example, then EOS to seq tokens (padding is causal
        # and untrained, but it does route through the experts and so counts in the balance loss).
        pad = eos[0]
        inputs = tokens[:-1] + [pad] * (seq - len(tokens) + 1)
        targets = tokens[1:] + [pad] * (seq - len(tokens) + 1)
        logprobs, balance = sequence_terms(inputs, targets, w, cfg)
        masked = masked - (torch.tensor(weights + [0.0] * (seq - len(weights)), dtype=torch.float64) * logprobs).sum()
        trained += int(sum(weights))
        balance_total = balance_total + balance
    loss = masked / trained + aux * balance_total / len(EXAMPLES)
    loss.backward()
    return compare(name, our_loss, ours, loss, w)


PAIRS = [
    {"prompt": "Question: 3 + 4 = ?\nAnswer:", "chosen": " 7", "rejected": " 8, then naps"},
    {"prompt": "the quick brown fox", "chosen": " jumps over the lazy dog.", "rejected": " naps."},
    {"prompt": "Question: how many dogs nap?\nAnswer:", "chosen": " one", "rejected": " the fox jumps 3 times"},
]


def row(deepmoe, tok, prompt, reply, seq, eos):
    """(inputs, targets, weights) of one reply's row, padded with EOS as the trainer pads it."""
    first = tokenize(deepmoe, tok, prompt, special=True)
    second = tokenize(deepmoe, tok, reply) + eos
    tokens = (first + second)[:seq + 1]
    weights = ([0.0] * len(first) + [1.0] * len(second))[1:seq + 1]
    pad = [eos[0]] * (seq - len(tokens) + 1)
    return tokens[:-1] + pad, tokens[1:] + pad, weights + [0.0] * (seq - len(weights))


def policy_and_reference(deepmoe, d, overrides, data_name, lines):
    """model_with_tokenizer's model and a second one of another seed (d/reference), and `lines` as JSONL
    in d/data_name; returns (config, tokenizer directory)."""
    cfg = model_with_tokenizer(deepmoe, d, overrides)
    tok = os.path.join(d, "tok")
    subprocess.run([deepmoe, "init", "--config", os.path.join(d, "config.json"), "--out", os.path.join(d, "reference"),
                    "--seed", "4", "--tokenizer", tok], check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(d, data_name), "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return cfg, tok


def check_dpo(name, overrides, aux, deepmoe, work, beta=0.5):
    d = os.path.join(work, name)
    cfg, tok = policy_and_reference(deepmoe, d, overrides, "pairs.jsonl", PAIRS)
    seq = 48
    subprocess.run([deepmoe, "dpo", "--init", os.path.join(d, "model"), "--reference", os.path.join(d, "reference"),
                    "--data", os.path.join(d, "pairs.jsonl"), "--beta", str(beta), "--seq", str(seq), "--batch",
                    str(len(PAIRS)), "--steps", "1", "--aux-loss", str(aux), "--lr", "1e-3", "--dump-grads",
                    os.path.join(d, "grads"), "--out", os.path.join(d, "trained")], check=True, stdout=subprocess.DEVNULL)
    ours = read_safetensors(os.path.join(d, "grads", "model.safetensors"))
    with open(os.path.join(d, "trained", "metrics.jsonl")) as f:
        our_loss = json.loads(f.readline())["loss"]
    eos = tokenize(deepmoe, tok, "<｜end▁of▁sentence｜>")

    stored, reference = ModelWeights(os.path.join(d, "model")), ModelWeights(os.path.join(d, "reference"))
    w = {n: stored[n].to(torch.float64).clone().requires_grad_(True) for n in stored.names()}
    r = {n: reference[n].to(torch.float64) for n in reference.names()}

    def reply_sum(weights_of, inputs, targets, weights):
        logprobs, balance = sequence_terms(inputs, targets, weights_of, cfg)
        return (torch.tensor(weights, dtype=torch.float64) * logprobs).sum(), balance

    loss, balance_total, margins = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64), []
    for p in PAIRS:
        sides = []
        for reply in (p["chosen"], p["rejected"]):
            inputs, targets, weights = row(deepmoe, tok, p["prompt"], reply, seq, eos)
            policy, balance = reply_sum(w, inputs, targets, weights)
            with torch.no_grad():
                ref_sum, _ = reply_sum(r, inputs, targets, weights)
            sides.append(policy - ref_sum)
            balance_total = balance_total + balance
        z = beta * (sides[0] - sides[1])
        margins.append(z.item())
        loss = loss - torch.nn.functional.logsigmoid(z) / len(PAIRS)
    loss = loss + aux * balance_total / (2 * len(PAIRS))
    loss.backward()
    print(f"  margins at step 0: {', '.join(f'{m:+.3f}' for m in margins)}")
    return compare(name, our_loss, ours, loss, w)


GRPO_PROMPTS = [{"prompt": "the quick brown", "answer": "7"}, {"prompt": "Question: 3 + 4 = ?\nAnswer:", "answer": "7"}]


def check_grpo(name, overrides, aux, deepmoe, work, group=4, epsilon=0.05, beta=0.3):
    """One step on rollouts the sampler logged (--log-rollouts): the objective recomputed from the
    logged tokens, sampler log-probabilities and rewards (advantages standardized here), the KL to a
    second model. The sampler leaves out the ids the tokenizer cannot spell (300 - 280 of them here),
    so its log-probabilities sit up to ~0.2 above the trainer's: with epsilon 0.05 some of the
    negative-advantage tokens are clipped (the check requires some, and not all, clipped tokens).
    Two micro-batches (--grad-accum 2)."""
    d = os.path.join(work, name)
    cfg, tok = policy_and_reference(deepmoe, d, overrides, "prompts.jsonl", GRPO_PROMPTS)
    seq, log = 36, os.path.join(d, "rollouts.jsonl")
    if os.path.exists(log):
        os.remove(log)
    subprocess.run([deepmoe, "grpo", "--init", os.path.join(d, "model"), "--reference", os.path.join(d, "reference"),
                    "--prompts", os.path.join(d, "prompts.jsonl"), "--group", str(group), "--max-tokens", "10",
                    "--reward-cmd", "awk '{print (NR * 7) % 3}'", "--epsilon", str(epsilon), "--beta", str(beta),
                    "--seq", str(seq), "--batch", "1", "--grad-accum", "2", "--steps", "1", "--aux-loss", str(aux),
                    "--lr", "1e-3", "--log-rollouts", log, "--dump-grads", os.path.join(d, "grads"),
                    "--out", os.path.join(d, "trained")], check=True, stdout=subprocess.DEVNULL)
    ours = read_safetensors(os.path.join(d, "grads", "model.safetensors"))
    with open(os.path.join(d, "trained", "metrics.jsonl")) as f:
        metrics = json.loads(f.readline())
    with open(log) as f:
        rollouts = [json.loads(line) for line in f]
    eos = tokenize(deepmoe, tok, "<｜end▁of▁sentence｜>")

    stored, reference = ModelWeights(os.path.join(d, "model")), ModelWeights(os.path.join(d, "reference"))
    w = {n: stored[n].to(torch.float64).clone().requires_grad_(True) for n in stored.names()}
    r = {n: reference[n].to(torch.float64) for n in reference.names()}
    completions = len(rollouts)
    failures = [] if completions == group * len(GRPO_PROMPTS) else [f"{completions} rollouts logged"]
    objective, balance_total = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    clipped = tokens_in_step = 0
    largest_gap, nearest = 0.0, 1.0
    for first in range(0, completions, group):
        rewards = torch.tensor([x["reward"] for x in rollouts[first:first + group]], dtype=torch.float64)
        advantages = (rewards - rewards.mean()) / (rewards.std(unbiased=True) + 1e-4)
        for x, advantage in zip(rollouts[first:first + group], advantages):
            if abs(x["advantage"] - advantage.item()) > 1e-9:
                failures.append(f"advantage {x['advantage']} vs {advantage.item()}")
            prompt = x["prompt_tokens"]
            if prompt != tokenize(deepmoe, tok, x["prompt"], special=True):
                failures.append("the logged prompt's tokens are not the tokenizer's")
            tokens = (prompt + x["tokens"])[:seq + 1]
            pad = [eos[0]] * (seq - len(tokens) + 1)
            inputs, targets = tokens[:-1] + pad, tokens[1:] + pad
            logprobs, balance = sequence_terms(inputs, targets, w, cfg)
            with torch.no_grad():
                ref_logprobs, _ = sequence_terms(inputs, targets, r, cfg)
            balance_total = balance_total + balance
            at = slice(len(prompt) - 1, len(prompt) - 1 + len(x["tokens"]))
            lp, ref_lp = logprobs[at], ref_logprobs[at]
            old = torch.tensor(x["logprobs"], dtype=torch.float64)
            ratio = torch.exp(lp - old)
            surrogate = torch.minimum(ratio * advantage, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * advantage)
            kl = torch.exp(ref_lp - lp) - (ref_lp - lp) - 1
            objective = objective + (surrogate - beta * kl).mean() / completions
            clipped += int((ratio * advantage > torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * advantage).sum())
            tokens_in_step += len(x["tokens"])
            largest_gap = max(largest_gap, (lp - old).abs().max().item())
            nearest = min(nearest, ((ratio - (1 - epsilon)).abs().min().item()))
    loss = -objective + aux * balance_total / completions
    loss.backward()
    if not 0 < clipped < tokens_in_step:
        failures.append(f"the clip is active for {clipped} of {tokens_in_step} tokens: the check needs some of each")
    if abs(metrics["logprob_gap_max"] - largest_gap) > 1e-4:
        failures.append(f"logprob_gap_max {metrics['logprob_gap_max']} vs {largest_gap}")
    print(f"  {clipped} of {tokens_in_step} tokens clipped (clip_fraction {metrics['clip_fraction']:.3f}), "
          f"largest sampler/trainer gap {largest_gap:.4f}, nearest ratio to 1 - epsilon {nearest:.1e}")
    return compare(name, metrics["loss"], ours, loss, w) and report(name + "_rollouts", failures, "logged rollouts")


def check_ewc(name, overrides, aux, deepmoe, work, samples=3, lam=50.0):
    import numpy as np
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    cfg_raw = dict(BASE, **overrides)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg_raw, f)
    cfg = ref.Config(cfg_raw)
    data = np.random.default_rng(21).integers(0, cfg_raw["vocab_size"], size=SEQ * max(BATCH, samples) + 1,
                                              dtype=np.uint32)
    data.tofile(os.path.join(d, "data.u32"))
    for model, seed in (("anchor", "3"), ("start", "4")):
        subprocess.run([deepmoe, "init", "--config", os.path.join(d, "config.json"), "--out", os.path.join(d, model),
                        "--seed", seed], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([deepmoe, "fisher", "--model", os.path.join(d, "anchor"), "--data", os.path.join(d, "data.u32"),
                    "--seq", str(SEQ), "--samples", str(samples), "--out", os.path.join(d, "F")], check=True,
                   stdout=subprocess.DEVNULL)
    ours_fisher = read_safetensors(os.path.join(d, "F", "fisher", "model.safetensors"))
    anchor = ModelWeights(os.path.join(d, "anchor"))
    fisher = {n: torch.zeros_like(anchor[n], dtype=torch.float64) for n in anchor.names()}
    for s in range(samples):
        w = {n: anchor[n].to(torch.float64).clone().requires_grad_(True) for n in anchor.names()}
        window = data[s * SEQ: s * SEQ + SEQ + 1].astype(np.int64)
        ce, _ = sequence_loss(window[:-1], window[1:], w, cfg)
        (ce / SEQ).backward()
        for n, leaf in w.items():
            if leaf.grad is not None:
                fisher[n] += leaf.grad ** 2 / samples
    failures, worst = [], 0.0
    for n, expected in fisher.items():
        scale = expected.norm().item()
        if scale == 0:
            continue
        error = (ours_fisher[n] - expected).norm().item() / scale
        worst = max(worst, error)
        if error > 1e-4:
            failures.append(f"fisher {n}: relative error {error:.2e}")
    fisher_ok = report(name + "_fisher", failures, f"{len(fisher)} tensors, worst relative error {worst:.1e}")

    subprocess.run([deepmoe, "train", "--init", os.path.join(d, "start"), "--data", os.path.join(d, "data.u32"),
                    "--seq", str(SEQ), "--batch", str(BATCH), "--steps", "1", "--order", "sequential",
                    "--aux-loss", str(aux), "--lr", "1e-3", "--ewc", os.path.join(d, "F"), "--ewc-lambda", str(lam),
                    "--dump-grads", os.path.join(d, "grads"), "--out", os.path.join(d, "trained")], check=True,
                   stdout=subprocess.DEVNULL)
    ours = read_safetensors(os.path.join(d, "grads", "model.safetensors"))
    with open(os.path.join(d, "trained", "metrics.jsonl")) as f:
        our_loss = json.loads(f.readline())["loss"]
    start = ModelWeights(os.path.join(d, "start"))
    w = {n: start[n].to(torch.float64).clone().requires_grad_(True) for n in start.names()}
    ce_total, balance_total = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for b in range(BATCH):
        window = data[b * SEQ: b * SEQ + SEQ + 1].astype(np.int64)
        ce, balance = sequence_loss(window[:-1], window[1:], w, cfg)
        ce_total, balance_total = ce_total + ce, balance_total + balance
    penalty = sum((ours_fisher[n].to(torch.float64) * (w[n] - anchor[n].to(torch.float64)) ** 2).sum()
                  for n in w if not n.endswith("e_score_correction_bias"))
    loss = ce_total / (BATCH * SEQ) + aux * balance_total / BATCH + lam / 2 * penalty
    loss.backward()
    print(f"  EWC penalty {lam / 2 * penalty.item():.4f} of the loss {loss.item():.4f}")
    return compare(name, our_loss, ours, loss, w) and fisher_ok


def main():
    cases = [lambda d, w, n=n, o=o, a=a: check_sft("sft_" + n, o, a, d, w) for n, (o, a) in VARIANTS.items()]
    cases += [lambda d, w, n=n, o=o, a=a: check_dpo("dpo_" + n, o, a, d, w) for n, (o, a) in VARIANTS.items()]
    # Not the tied head: a random tied model puts p ~ 1 - 1e-6 on repeating its input, sampling
    # such tokens again and again, and the experts only they reach get gradients ~1e-10 of the rest,
    # set by f32 rounding in the final norm's backward (seen: 1e-3 relative error there, 1e-6 elsewhere).
    # SFT and DPO check the tied head.
    cases += [lambda d, w, n=n, o=o, a=a: check_grpo("grpo_" + n, o, a, d, w)
              for n, (o, a) in VARIANTS.items() if "tied" not in n]
    overrides, aux = VARIANTS["v3_noaux_tc_sigmoid_qlora_yarn_aux"]
    cases.append(lambda d, w: check_sft("sft_accumulated_v3", overrides, aux, d, w, accumulate=True))
    cases.append(lambda d, w: check_ewc("ewc_v3", overrides, aux, d, w))
    run_cases(__doc__, cases)


if __name__ == "__main__":
    main()
