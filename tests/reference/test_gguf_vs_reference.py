"""`deepmoe convert --to gguf` against an independent numpy reading of the file (gguf_reference.py):
for f32, f16, q8_0 and q4_0, on a random model with and without q_lora, every llama.cpp `deepseek2`
key with its exact on-disk type, every tensor name and ggml shape, and every tensor's bytes equal to
the reference encoding of the HF weights (the reference quantizers, experts stacked, kv_b_proj split
into k_b (transposed per head) and v_b); the tokenizer's tokens, types and merges in id order.
"""
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import gguf_reference as g  # noqa: E402
from safetensors_io import read_safetensors  # noqa: E402
from test_grads_vs_reference import report, run_cases  # noqa: E402

BASE = {"vocab_size": 320, "hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 32,
        "num_hidden_layers": 3, "num_attention_heads": 4, "kv_lora_rank": 32, "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16, "v_head_dim": 32, "n_routed_experts": 8, "n_shared_experts": 1,
        "num_experts_per_tok": 2, "first_k_dense_replace": 1, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048}
VARIANTS = {
    "v3_qlora_yarn": dict(model_type="deepseek_v3", q_lora_rank=32, topk_method="noaux_tc", scoring_func="sigmoid",
                          n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5,
                          rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512,
                                        "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.707}),
    "v2_no_qlora": dict(model_type="deepseek_v2", q_lora_rank=None, topk_method="greedy", scoring_func="softmax",
                        n_group=1, topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.0),
}
TYPES = {"f32": g.GGML_F32, "f16": g.GGML_F16, "q8_0": g.GGML_Q8_0, "q4_0": g.GGML_Q4_0}


def expected_metadata(c):
    a = "deepseek2."
    keys = {"general.architecture": ("STRING", "deepseek2"), a + "block_count": ("U32", c["num_hidden_layers"]),
            a + "context_length": ("U32", c["max_position_embeddings"]), a + "embedding_length": ("U32", c["hidden_size"]),
            a + "feed_forward_length": ("U32", c["intermediate_size"]),
            a + "attention.head_count": ("U32", c["num_attention_heads"]), a + "attention.head_count_kv": ("U32", 1),
            a + "attention.key_length": ("U32", c["kv_lora_rank"] + c["qk_rope_head_dim"]),
            a + "attention.value_length": ("U32", c["kv_lora_rank"]),
            a + "attention.key_length_mla": ("U32", c["qk_nope_head_dim"] + c["qk_rope_head_dim"]),
            a + "attention.value_length_mla": ("U32", c["v_head_dim"]),
            a + "attention.kv_lora_rank": ("U32", c["kv_lora_rank"]),
            a + "rope.dimension_count": ("U32", c["qk_rope_head_dim"]),
            a + "leading_dense_block_count": ("U32", c["first_k_dense_replace"]),
            a + "expert_feed_forward_length": ("U32", c["moe_intermediate_size"]),
            a + "expert_count": ("U32", c["n_routed_experts"]), a + "expert_used_count": ("U32", c["num_experts_per_tok"]),
            a + "expert_shared_count": ("U32", c["n_shared_experts"]),
            a + "expert_weights_norm": ("BOOL", c["norm_topk_prob"]),
            a + "expert_gating_func": ("U32", 2 if c["scoring_func"] == "sigmoid" else 1),
            "tokenizer.ggml.model": ("STRING", "gpt2"), "tokenizer.ggml.pre": ("STRING", "deepseek-v3")}
    if c.get("q_lora_rank"):
        keys[a + "attention.q_lora_rank"] = ("U32", c["q_lora_rank"])
    if c.get("rope_scaling"):
        keys[a + "rope.scaling.type"] = ("STRING", "yarn")
        keys[a + "rope.scaling.original_context_length"] = ("U32", c["rope_scaling"]["original_max_position_embeddings"])
    floats = {a + "attention.layer_norm_rms_epsilon": c["rms_norm_eps"], a + "expert_weights_scale": c["routed_scaling_factor"]}
    if c.get("rope_scaling"):
        floats[a + "rope.scaling.yarn_log_multiplier"] = 0.1 * c["rope_scaling"]["mscale_all_dim"]
        floats[a + "rope.scaling.factor"] = c["rope_scaling"]["factor"]
    return keys, floats


def expected_tensors(c, w):
    """{gguf name: (float32 values in ggml memory order, ggml dims, keep_f32)} from HF weights w."""
    out = {"token_embd.weight": (w["model.embed_tokens.weight"], [c["hidden_size"], c["vocab_size"]], False),
           "output_norm.weight": (w["model.norm.weight"], [c["hidden_size"]], True),
           "output.weight": (w["lm_head.weight"], [c["hidden_size"], c["vocab_size"]], False)}
    H, N, V, R = c["num_attention_heads"], c["qk_nope_head_dim"], c["v_head_dim"], c["kv_lora_rank"]

    def mat(name, hf):
        out[name] = (w[hf], list(reversed(w[hf].shape)), False)

    for layer in range(c["num_hidden_layers"]):
        b, h = f"blk.{layer}.", f"model.layers.{layer}."
        out[b + "attn_norm.weight"] = (w[h + "input_layernorm.weight"], [c["hidden_size"]], True)
        out[b + "ffn_norm.weight"] = (w[h + "post_attention_layernorm.weight"], [c["hidden_size"]], True)
        out[b + "attn_kv_a_norm.weight"] = (w[h + "self_attn.kv_a_layernorm.weight"], [R], True)
        if c.get("q_lora_rank"):
            mat(b + "attn_q_a.weight", h + "self_attn.q_a_proj.weight")
            out[b + "attn_q_a_norm.weight"] = (w[h + "self_attn.q_a_layernorm.weight"], [c["q_lora_rank"]], True)
            mat(b + "attn_q_b.weight", h + "self_attn.q_b_proj.weight")
        else:
            mat(b + "attn_q.weight", h + "self_attn.q_proj.weight")
        mat(b + "attn_kv_a_mqa.weight", h + "self_attn.kv_a_proj_with_mqa.weight")
        mat(b + "attn_output.weight", h + "self_attn.o_proj.weight")
        # As llama.cpp's converter: view(H, N+V, R), split, k_b transposed to [H, R, N].
        kv_b = w[h + "self_attn.kv_b_proj.weight"].reshape(H, N + V, R)
        out[b + "attn_k_b.weight"] = (np.ascontiguousarray(kv_b[:, :N, :].transpose(0, 2, 1)), [N, R, H], False)
        out[b + "attn_v_b.weight"] = (np.ascontiguousarray(kv_b[:, N:, :]), [R, V, H], False)
        m = h + "mlp."
        if layer < c["first_k_dense_replace"]:
            for gg, hf in (("ffn_gate", "gate_proj"), ("ffn_up", "up_proj"), ("ffn_down", "down_proj")):
                mat(b + gg + ".weight", m + hf + ".weight")
            continue
        E = c["n_routed_experts"]
        out[b + "ffn_gate_inp.weight"] = (w[m + "gate.weight"], [c["hidden_size"], E], True)
        if m + "gate.e_score_correction_bias" in w:
            out[b + "exp_probs_b.bias"] = (w[m + "gate.e_score_correction_bias"], [E], True)
        for gg, hf in (("ffn_gate_exps", "gate_proj"), ("ffn_up_exps", "up_proj"), ("ffn_down_exps", "down_proj")):
            stacked = np.stack([w[f"{m}experts.{e}.{hf}.weight"] for e in range(E)])
            out[b + gg + ".weight"] = (stacked, list(reversed(stacked.shape)), False)
        for gg, hf in (("ffn_gate_shexp", "gate_proj"), ("ffn_up_shexp", "up_proj"), ("ffn_down_shexp", "down_proj")):
            mat(b + gg + ".weight", m + "shared_experts." + hf + ".weight")
    return out


def check(name, overrides, deepmoe, work):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    cfg = dict(BASE, **overrides)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    rng = np.random.default_rng(7)
    words = ["the", "jury", "said", "Fulton", "county", "election", "1962", "über", "naïve", "日本"]
    with open(os.path.join(d, "text.txt"), "w") as f:
        f.write(" ".join(rng.choice(words, 4000)) + "\n")
    run = lambda *args: subprocess.run([deepmoe, *args], check=True, stdout=subprocess.DEVNULL)  # noqa: E731
    run("tokenizer-train", "--vocab-size", "300", "--out", os.path.join(d, "tok"), os.path.join(d, "text.txt"))
    run("init", "--config", os.path.join(d, "config.json"), "--out", os.path.join(d, "model"), "--seed", "4",
        "--tokenizer", os.path.join(d, "tok"))
    w = {k: v.numpy().astype(np.float32) for k, v in read_safetensors(os.path.join(d, "model", "model.safetensors")).items()}
    tok = json.load(open(os.path.join(d, "tok", "tokenizer.json")))
    failures = []
    for type_name, gtype in TYPES.items():
        path = os.path.join(d, f"model-{type_name}.gguf")
        run("convert", "--to", "gguf", "--model", os.path.join(d, "model"), "--out", path, "--type", type_name)
        metadata, tensors = g.read_gguf(path)
        keys, floats = expected_metadata(cfg)
        tok_config = json.load(open(os.path.join(d, "tok", "tokenizer_config.json")))
        ids = {a["content"]: a["id"] for a in tok["added_tokens"]}
        keys["tokenizer.ggml.bos_token_id"] = ("U32", ids[tok_config["bos_token"]])
        keys["tokenizer.ggml.eos_token_id"] = ("U32", ids[tok_config["eos_token"]])
        keys["tokenizer.ggml.add_bos_token"] = ("BOOL", tok_config["add_bos_token"])
        for key, (vtype, value) in keys.items():
            if metadata.get(key) != (vtype, value):
                failures.append(f"{type_name}: {key} = {metadata.get(key)}, want {(vtype, value)}")
        for key, value in floats.items():
            got = metadata.get(key)
            if got is None or got[0] != "F32" or abs(got[1] - value) > 1e-6 * max(1, abs(value)):
                failures.append(f"{type_name}: {key} = {got}, want F32 {value}")
        vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
        added = {a["id"]: a for a in tok["added_tokens"]}
        want_tokens = [added[i]["content"] if i in added else None for i in range(cfg["vocab_size"])]
        for text, i in vocab:
            want_tokens[i] = text
        want_types = [3 if i in added and added[i]["special"] else 4 if i in added else 1 if t is not None else 5
                      for i, t in enumerate(want_tokens)]
        want_tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(want_tokens)]
        merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
        for key, element, values in (("tokens", "STRING", want_tokens), ("token_type", "I32", want_types),
                                     ("merges", "STRING", merges)):
            if metadata.get("tokenizer.ggml." + key) != ("ARRAY", ("ARRAY", element, values)):
                failures.append(f"{type_name}: tokenizer.ggml.{key} is not an {element} array equal to tokenizer.json's")
        want = expected_tensors(cfg, w)
        if set(want) != set(tensors):
            failures.append(f"{type_name}: tensors {sorted(set(want) ^ set(tensors))[:6]} differ in presence")
            continue
        for tname, (values, dims, keep_f32) in want.items():
            got_type, got_dims, raw = tensors[tname]
            want_type = g.GGML_F32 if keep_f32 else gtype
            if got_type != want_type or got_dims != dims:
                failures.append(f"{type_name}: {tname}: type {got_type} dims {got_dims}, want {want_type} {dims}")
            elif raw != g.encode(values, want_type):
                failures.append(f"{type_name}: {tname}: bytes differ from the reference encoding")
    return report(name, failures, f"{len(TYPES)} types, {len(expected_tensors(cfg, w))} tensors each")


def main():
    run_cases(__doc__, [lambda dm, wk, n=n, o=o: check(n, o, dm, wk) for n, o in VARIANTS.items()])


if __name__ == "__main__":
    main()
