#!/usr/bin/env python3
"""Arithmetic word problems written here (nothing copied), with answers in GSM8K's format, for the
later training stages on our own model:

  OUT/sft.jsonl        {"prompt": "Question: ...\\nAnswer:", "completion": " 12 + 7 = 19\\n#### 19"}
  OUT/grpo.jsonl       {"prompt": "Question: ...\\nAnswer:", "answer": "19"}         (GRPO's prompts)
  OUT/heldout.jsonl    {"question": ..., "answer": "12 + 7 = 19\\n#### 19"}           (deepmoe eval --task gsm8k)

Each problem adds or subtracts two numbers in one of a few sentence frames; the splits use different
seeds and the held-out problems never appear in the others.

usage: arithmetic_task.py OUT [--sft 2000] [--grpo 500] [--heldout 200] [--seed 1] [--max 20] [--misread 0]
"""
import argparse
import json
import os
import random

NAMES = ["Tom", "Ann", "Sam", "Liz", "Bob", "Eve", "Dan", "Kim"]
THINGS = ["apples", "books", "coins", "stones", "cards", "eggs", "pens", "shells"]
ADD = ["{n} has {a} {t} and finds {b} more. How many {t} does {n} have now?",
       "{n} had {a} {t}. A friend gave {n} {b} {t}. How many {t} does {n} have?"]
SUB = ["{n} has {a} {t} and gives away {b}. How many {t} does {n} have left?",
       "{n} had {a} {t} and lost {b} of them. How many {t} are left?"]


def problem(rng, largest, misread=0.0):
    """(question, worked answer, result); with probability `misread` a "lost" question's worked
    answer adds instead of subtracting (and its result is that sum): a systematic error in the
    demonstrations."""
    a, b = rng.randint(1, largest), rng.randint(1, largest)
    n, t = rng.choice(NAMES), rng.choice(THINGS)
    if rng.random() < 0.5:
        return rng.choice(ADD).format(n=n, a=a, b=b, t=t), f"{a} + {b} = {a + b}", a + b
    a, b = max(a, b), min(a, b)
    frame = rng.choice(SUB)
    if misread > 0 and frame == SUB[1] and rng.random() < misread:
        return frame.format(n=n, a=a, b=b, t=t), f"{a} + {b} = {a + b}", a + b
    return frame.format(n=n, a=a, b=b, t=t), f"{a} - {b} = {a - b}", a - b


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--sft", type=int, default=2000)
    parser.add_argument("--grpo", type=int, default=500)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max", type=int, default=20, help="largest operand")
    parser.add_argument("--misread", type=float, default=0.0,
                        help="share of the SFT answers to 'lost ... of them' questions that add instead of subtracting "
                             "(demonstrations with a systematic error; GRPO's prompts and the held-out answers are right)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(args.seed)
    seen = set()

    def fresh(misread=0.0):
        while True:
            question, work, result = problem(rng, args.max, misread)
            if question not in seen:
                seen.add(question)
                return question, work, result

    heldout = [fresh() for _ in range(args.heldout)]  # first, so no other split reuses them
    with open(os.path.join(args.out, "heldout.jsonl"), "w") as f:
        for q, work, result in heldout:
            f.write(json.dumps({"question": q, "answer": f"{work}\n#### {result}"}) + "\n")
    with open(os.path.join(args.out, "sft.jsonl"), "w") as f:
        for _ in range(args.sft):
            q, work, result = fresh(args.misread)
            f.write(json.dumps({"prompt": f"Question: {q}\nAnswer:", "completion": f" {work}\n#### {result}"}) + "\n")
    with open(os.path.join(args.out, "grpo.jsonl"), "w") as f:
        for _ in range(args.grpo):
            q, _, result = fresh()
            f.write(json.dumps({"prompt": f"Question: {q}\nAnswer:", "answer": str(result)}) + "\n")
    print(f"{args.out}: {args.sft} SFT, {args.grpo} GRPO and {args.heldout} held-out problems")


if __name__ == "__main__":
    main()
