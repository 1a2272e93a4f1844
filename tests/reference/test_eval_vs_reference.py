#!/usr/bin/python3
"""`deepmoe eval --task mc` against float64 PyTorch (deepseek_ref.py) and an independent scorer: on a
random model with a BPE trained here, every choice's log-likelihood in --log-samples (the context run
once, each continuation from the cached context) must equal, within 1e-4 relative, the sum of the
continuation tokens' log-softmax from one float64 pass over context + continuation; acc and acc_norm
recomputed here from those float64 scores (argmax of the sum, and of the sum over the choice's length
in bytes, lm-eval's rule) must equal the results file's; the continuation tokens must be what
context + choice tokenizes to past the context's tokens (lm-eval's split). Prints 'N passed, M failed'."""
import argparse
import json
import os
import random
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import deepseek_ref as ref  # noqa: E402

WORDS = ("the quick brown fox jumps over a lazy dog while seven small birds sing near old river stones and "
         "people walk home after work to eat bread with butter").split()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--deepmoe", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    w = lambda name: os.path.join(args.work, name)  # noqa: E731
    rng = random.Random(7)
    with open(w("text.txt"), "w") as f:
        for _ in range(400):
            f.write(" ".join(rng.choice(WORDS) for _ in range(12)) + ".\n")
    subprocess.run([args.deepmoe, "tokenizer-train", "--vocab-size", "300", "--out", w("tok"), w("text.txt")],
                   check=True, capture_output=True)
    tok = json.load(open(w("tok/tokenizer.json")))
    vocab = max(list(tok["model"]["vocab"].values()) + [t["id"] for t in tok.get("added_tokens", [])]) + 1
    config = {"model_type": "deepseek_v3", "vocab_size": vocab, "hidden_size": 64, "intermediate_size": 96,
              "moe_intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "q_lora_rank": 32,
              "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
              "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
              "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
              "norm_topk_prob": True, "routed_scaling_factor": 2.5, "max_position_embeddings": 512}
    json.dump(config, open(w("config.json"), "w"))
    subprocess.run([args.deepmoe, "init", "--config", w("config.json"), "--out", w("model"), "--seed", "3",
                    "--tokenizer", w("tok")], check=True, capture_output=True)
    questions = []
    for i in range(12):
        context = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0 if i == 0 else 1, 9)))
        if i % 3 == 1:
            context += " "  # a trailing space moves to the continuation
        choices = [(" " if not context.endswith(" ") and context else "") +
                   " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(2, 4))]
        questions.append({"context": context, "choices": choices, "gold": rng.randrange(len(choices))})
    with open(w("mc.jsonl"), "w") as f:
        for q in questions:
            f.write(json.dumps(q) + "\n")
    subprocess.run([args.deepmoe, "eval", "--model", w("model"), "--data", w("mc.jsonl"), "--out", w("results.json"),
                    "--log-samples", w("samples.jsonl"), "--threads", "2"], check=True, capture_output=True)
    samples = [json.loads(line) for line in open(w("samples.jsonl"))]
    results = json.load(open(w("results.json")))["results"]["mc"]

    passed = failed = 0

    def check(ok, what):
        nonlocal passed, failed
        passed, failed = passed + ok, failed + (not ok)
        print(("PASS " if ok else "FAIL ") + what)

    def tokenize(text):
        out = subprocess.run([args.deepmoe, "tokenize", "--tokenizer", w("tok"), "--text", text],
                             check=True, capture_output=True, text=True).stdout
        return [int(t) for t in out.replace(",", " ").split()]

    worst, acc, acc_norm = 0.0, [], []
    for q, s in zip(questions, samples):
        context = q["context"].rstrip(" ")
        spaces = q["context"][len(context):]
        split_ok = True
        scores = []
        for choice, cont in zip(q["choices"], s["continuation_tokens"]):
            if context:
                whole = tokenize(context + spaces + choice)
                split_ok &= s["context_tokens"] == tokenize(context) and cont == whole[len(s["context_tokens"]):]
            tokens = s["context_tokens"] + cont
            logp = torch.log_softmax(ref.forward(w("model"), tokens[:-1]), dim=-1)
            n = len(s["context_tokens"])
            scores.append(sum(float(logp[n - 1 + i, t]) for i, t in enumerate(cont)))
        check(split_ok, f"question {s['doc_id']}: context and continuations tokenized as lm-eval splits them")
        for ours, theirs in zip(s["logprobs"], scores):
            worst = max(worst, abs(ours - theirs) / abs(theirs))
        best = max(range(len(scores)), key=lambda i: scores[i])
        best_norm = max(range(len(scores)), key=lambda i: scores[i] / len(q["choices"][i]))
        acc.append(float(best == q["gold"]))
        acc_norm.append(float(best_norm == q["gold"]))
    check(worst <= 1e-4, f"every choice's log-likelihood within 1e-4 relative of float64 (worst {worst:.2e})")
    mean = sum(acc) / len(acc)
    mean_norm = sum(acc_norm) / len(acc_norm)
    check(abs(results["acc,none"] - mean) < 1e-12 and abs(results["acc_norm,none"] - mean_norm) < 1e-12,
          f"acc {results['acc,none']:.4f} and acc_norm {results['acc_norm,none']:.4f} as recomputed "
          f"({mean:.4f}, {mean_norm:.4f})")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
