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
    if abs(loss.item() - our_loss) > tolerance * abs(loss.item()):
        failures.append(f"loss {our_loss} vs reference {loss.item()}")
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


def check_sft(name, overrides, aux, deepmoe, work):
    d = os.path.join(work, name)
    cfg = model_with_tokenizer(deepmoe, d, overrides)
    tok = os.path.join(d, "tok")
    with open(os.path.join(d, "sft.jsonl"), "w") as f:
        for e in EXAMPLES:
            f.write(json.dumps(e) + "\n")
    seq = 24
    subprocess.run([deepmoe, "sft", "--init", os.path.join(d, "model"), "--data", os.path.join(d, "sft.jsonl"),
                    "--seq", str(seq), "--batch", str(len(EXAMPLES)), "--steps", "1", "--aux-loss", str(aux),
                    "--lr", "1e-3", "--dump-grads", os.path.join(d, "grads"), "--out", os.path.join(d, "trained")],
                   check=True, stdout=subprocess.DEVNULL)
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


def check_dpo(name, overrides, aux, deepmoe, work, beta=0.5):
    d = os.path.join(work, name)
    cfg = model_with_tokenizer(deepmoe, d, overrides)
    tok = os.path.join(d, "tok")
    subprocess.run([deepmoe, "init", "--config", os.path.join(d, "config.json"), "--out", os.path.join(d, "reference"),
                    "--seed", "4", "--tokenizer", tok], check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(d, "pairs.jsonl"), "w") as f:
        for p in PAIRS:
            f.write(json.dumps(p) + "\n")
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
    overrides, aux = VARIANTS["v3_noaux_tc_sigmoid_qlora_yarn_aux"]
    cases.append(lambda d, w: check_ewc("ewc_v3", overrides, aux, d, w))
    run_cases(__doc__, cases)


if __name__ == "__main__":
    main()
