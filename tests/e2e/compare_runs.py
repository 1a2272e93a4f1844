"""Compares two training runs' outputs: per-step loss (metrics.jsonl) and final weights
(model.safetensors, or the shards model.safetensors.index.json lists; F32). Prints the largest differences; exits 1 when they exceed the limits.

    compare_runs.py RUN_A RUN_B --loss-rtol 1e-5 --weight-rtol 1e-4

Loss: |a - b| / |b| per step (also grad norm and validation loss where present, same limit).
Weights: ||a - b|| / ||b|| over all parameters together (DESIGN.md's f32 measure) and per tensor
(tensors whose norm is at least 1e-3 of the typical one, so a near-zero tensor's relative noise
does not count); the max-abs difference is printed for information.
"""
import argparse
import json
import struct
import sys

import numpy as np


def read_f32_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            sys.exit(f"{path}: {name} is {info['dtype']}, expected F32")
        begin, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[begin:end], dtype=np.float32).astype(np.float64)
    return tensors


def read_model(run):
    """Every tensor of the HF directory `run`, from one file or from the index's shards."""
    try:
        with open(f"{run}/model.safetensors.index.json") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    except FileNotFoundError:
        shards = ["model.safetensors"]
    tensors = {}
    for shard in shards:
        tensors.update(read_f32_safetensors(f"{run}/{shard}"))
    return tensors


def metrics(run):
    with open(f"{run}/metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--loss-rtol", type=float, default=1e-5)
    ap.add_argument("--weight-rtol", type=float, default=1e-4)
    args = ap.parse_args()

    ma, mb = metrics(args.a), metrics(args.b)
    if len(ma) != len(mb) or not ma:
        sys.exit(f"{args.a}: {len(ma)} steps, {args.b}: {len(mb)}")
    worst = {}
    for key in ("loss", "cross_entropy", "grad_norm", "val_loss"):
        diffs = [abs(x[key] - y[key]) / abs(y[key]) for x, y in zip(ma, mb) if key in x and key in y]
        if diffs:
            worst[key] = max(diffs)
    a, b = read_model(args.a), read_model(args.b)
    if a.keys() != b.keys():
        sys.exit("the two models have different tensors")
    diff2 = sum(float(np.sum((a[k] - b[k]) ** 2)) for k in a)
    norm2 = sum(float(np.sum(b[k] ** 2)) for k in b)
    overall = (diff2 / norm2) ** 0.5
    typical = np.median([np.linalg.norm(b[k]) for k in b])
    per_tensor = max(
        (np.linalg.norm(a[k] - b[k]) / np.linalg.norm(b[k]), k) for k in b if np.linalg.norm(b[k]) >= 1e-3 * typical)
    max_abs = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    report = {"steps": len(ma), "max_rel_diff": worst, "weights_rel": overall, "worst_tensor_rel": per_tensor[0],
              "worst_tensor": per_tensor[1], "weights_max_abs": max_abs}
    print(json.dumps(report))
    ok = all(v <= args.loss_rtol for v in worst.values()) and overall <= args.weight_rtol and \
        per_tensor[0] <= args.weight_rtol
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
