#!/usr/bin/python3
"""Self-checks of the float64 reference that do not involve deepmoe: file I/O round trips, the fp8
codec, the RoPE formulation against HF's, YaRN frequencies, and causality of a tiny random model.
Run: /usr/bin/python3 tests/reference/test_reference_selfcheck.py   (prints 'N passed, M failed')."""
import json
import math
import os
import subprocess
import sys
import tempfile
import traceback

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import deepseek_ref as ref  # noqa: E402
import safetensors_io as sio  # noqa: E402

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


# ---------------------------------------------------------------------------------------------
# fp8 / safetensors

@test
def e4m3fn_table_landmarks():
    t = sio.E4M3FN_TABLE
    assert t[0x00] == 0.0 and t[0x80] == 0.0
    assert t[0x01] == 2.0 ** -9           # smallest subnormal
    assert t[0x08] == 2.0 ** -6           # smallest normal
    assert t[0x38] == 1.0                 # exponent 7 = bias
    assert t[0x7E] == 448.0 and t[0xFE] == -448.0
    assert np.isnan(t[0x7F]) and np.isnan(t[0xFF])
    assert np.isfinite(t).sum() == 254    # no infinities, exactly two NaNs
    # encoding every finite value gives back its own code (apart from -0 -> 0x80 vs 0x00)
    codes = np.array([c for c in range(256) if np.isfinite(t[c])], dtype=np.uint8)
    back = sio.encode_e4m3fn(t[codes])
    assert np.array_equal(t[back], t[codes])


@test
def e4m3fn_rounds_to_nearest():
    rng = np.random.default_rng(1)
    x = rng.uniform(-448, 448, 20000) * np.exp(rng.uniform(-12, 0, 20000))
    q = sio.E4M3FN_TABLE[sio.encode_e4m3fn(x)]
    finite = sio.E4M3FN_TABLE[np.isfinite(sio.E4M3FN_TABLE)]
    nearest = finite[np.abs(x[:, None] - finite[None, :]).argmin(axis=1)]
    assert np.allclose(np.abs(x - q), np.abs(x - nearest), rtol=0, atol=0)
    # ties go to the even code: 1 + 1/16 lies halfway between 1 (0x38) and 1.125 (0x39)
    assert sio.encode_e4m3fn(np.array([1.0625]))[0] == 0x38
    assert sio.encode_e4m3fn(np.array([1000.0]))[0] == 0x7E  # saturates, never NaN


@test
def fp8_block_round_trip_error_is_small():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((300, 200)) * 0.05
    w[:128, :128] *= 100  # blocks of very different magnitude: the per-block scale must cope
    w[256:, 128:] = 0.0   # an all-zero block
    codes, scale_inv = sio.quantize_blocks(w)
    assert codes.dtype == np.uint8 and scale_inv.dtype == np.float32 and scale_inv.shape == (3, 2)
    back = sio.dequantize_blocks(sio.E4M3FN_TABLE[codes], scale_inv.astype(np.float64))
    # e4m3 has 3 mantissa bits: relative rounding error <= 2^-4 for normals
    for bi in range(3):
        for bj in range(2):
            blk = (slice(bi * 128, (bi + 1) * 128), slice(bj * 128, (bj + 1) * 128))
            err = np.linalg.norm(back[blk] - w[blk])
            assert err <= 0.04 * np.linalg.norm(w[blk]) + 1e-300, (bi, bj, err)
    assert np.all(back[256:, 128:] == 0.0)


@test
def safetensors_round_trip_exact():
    rng = np.random.default_rng(3)
    a32 = rng.standard_normal((5, 7)).astype(np.float32)
    a16 = rng.standard_normal((3, 4, 2)).astype(np.float16)
    abf = sio.bf16_bits_to_float(sio.float_to_bf16_bits(rng.standard_normal(33)))  # bf16-representable
    ints = np.arange(-3, 9, dtype=np.int64)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.safetensors")
        sio.write_safetensors(path, {"a32": (a32, "F32"), "a16": (a16, "F16"), "abf": (abf, "BF16"),
                                     "ints": (ints, "I64"), "scalar": (np.float32(2.5), "F32")},
                              metadata={"format": "pt"})
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            assert n % 8 == 0
            header = json.loads(f.read(n))
        assert header["__metadata__"] == {"format": "pt"}
        st = sio.SafetensorsFile(path)
        assert st.dtype("abf") == "BF16" and st.shape("a16") == (3, 4, 2) and st.shape("scalar") == ()
        got = sio.read_safetensors(path)
        assert np.array_equal(got["a32"].numpy(), a32.astype(np.float64))
        assert np.array_equal(got["a16"].numpy(), a16.astype(np.float64))
        assert np.array_equal(got["abf"].numpy(), abf.astype(np.float64))
        assert np.array_equal(got["ints"].numpy(), ints)
        assert float(got["scalar"]) == 2.5
        assert all(t.dtype == torch.float64 for k, t in got.items() if k != "ints")


@test
def bf16_rounding_is_nearest_even():
    # 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even -> 1
    vals = np.array([1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, -2.0, 0.0, 3.0e38])
    back = sio.bf16_bits_to_float(sio.float_to_bf16_bits(vals))
    assert back[0] == 1.0 and back[1] == 1.0 + 2 * 2.0 ** -7 and back[2] == -2.0 and back[3] == 0.0
    assert np.isfinite(back[4]) or back[4] == np.inf  # large values round per IEEE
    torch_bits = torch.tensor(vals[:4], dtype=torch.float32).to(torch.bfloat16).to(torch.float32).numpy()
    assert np.array_equal(back[:4], torch_bits)


# ---------------------------------------------------------------------------------------------
# RoPE / YaRN

def hf_rope(q, k, cos_half, sin_half):
    """HF modeling_deepseek_v2 formulation: de-interleave with view(d/2, 2).transpose, then
    x*cos + rotate_half(x)*sin with cos = cat(freqs, freqs). q, k: [T, H, d]."""
    def deinterleave(x):
        T, H, d = x.shape
        return x.reshape(T, H, d // 2, 2).transpose(3, 2).reshape(T, H, d)

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)

    cos = torch.cat((cos_half, cos_half), dim=-1)[:, None, :]
    sin = torch.cat((sin_half, sin_half), dim=-1)[:, None, :]
    q, k = deinterleave(q), deinterleave(k)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


@test
def rope_interleaved_matches_hf():
    torch.manual_seed(0)
    T, H, d = 11, 3, 16
    cfg = ref.Config({"model_type": "deepseek_v3", "qk_rope_head_dim": d, "rope_theta": 10000.0})
    cos, sin = ref.rope_tables(cfg, T)
    q = torch.randn(T, H, d, dtype=torch.float64)
    k = torch.randn(T, H, d, dtype=torch.float64)
    ours_q, ours_k = ref.apply_rope_interleaved(q, cos, sin), ref.apply_rope_interleaved(k, cos, sin)
    hf_q, hf_k = hf_rope(q, k, cos, sin)
    ours = torch.einsum("thd,shd->hts", ours_q, ours_k)
    hf = torch.einsum("thd,shd->hts", hf_q, hf_k)
    assert torch.allclose(ours, hf, rtol=1e-12, atol=1e-12)
    # and the same up to the fixed permutation (evens first, then odds)
    perm = torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2)))
    assert torch.allclose(ours_q[..., perm], hf_q, rtol=1e-13, atol=1e-13)
    # rotation property: q.k depends only on the position difference
    r0 = ref.apply_rope_interleaved(q[:1].expand(T, H, d), cos, sin)
    r1 = ref.apply_rope_interleaved(k[:1].expand(T, H, d), cos, sin)
    dots = torch.einsum("hd,hd->h", r0[3], r1[1]), torch.einsum("hd,hd->h", r0[9], r1[7])
    assert torch.allclose(dots[0], dots[1], rtol=1e-12, atol=1e-12)


@test
def yarn_inv_freq_v2_lite():
    d, theta = 64, 10000.0
    inv = ref.yarn_inv_freq(d, theta, factor=40.0, orig_max=4096, beta_fast=32, beta_slow=1)
    extra = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    inter = extra / 40.0
    # correction dims: floor(10.2...) = 10 and ceil(22.9...) = 23 for these parameters
    assert torch.allclose(inv[:11], extra[:11], rtol=1e-15, atol=0)
    assert torch.allclose(inv[23:], inter[23:], rtol=1e-15, atol=0)
    mid = inv[11:23]
    assert torch.all(mid < extra[11:23]) and torch.all(mid > inter[11:23])
    assert ref.yarn_get_mscale(40, 0.707) == 0.1 * 0.707 * math.log(40) + 1.0
    assert ref.yarn_get_mscale(1.0, 0.707) == 1.0
    cfg = ref.Config({"model_type": "deepseek_v2", "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
                      "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                                       "original_max_position_embeddings": 4096}})
    m = 0.1 * 0.707 * math.log(40) + 1.0
    assert abs(ref.softmax_scale(cfg) - 192 ** -0.5 * m * m) < 1e-15
    cos, sin = ref.rope_tables(cfg, 3)
    assert torch.allclose(cos[0], torch.ones(32, dtype=torch.float64))  # mscale / mscale_all_dim = 1
    try:
        ref.rope_tables(ref.Config({"model_type": "deepseek_v3", "rope_scaling": {"type": "linear", "factor": 2}}), 2)
        raise AssertionError("non-yarn rope_scaling must be rejected")
    except ValueError:
        pass


@test
def config_defaults_and_explicit_nulls():
    v3 = ref.Config({"model_type": "deepseek_v3"})
    assert (v3.hidden_size, v3.n_routed_experts, v3.topk_method, v3.first_k_dense_replace) == (7168, 256, "noaux_tc", 3)
    v2 = ref.Config({"model_type": "deepseek_v2", "q_lora_rank": None})
    assert v2.q_lora_rank is None and v2.topk_method == "gready" and v2.n_routed_experts is None
    assert not ref.is_moe_layer(v2, 5)


# ---------------------------------------------------------------------------------------------
# Whole model

TINY = {
    "model_type": "deepseek_v3", "vocab_size": 97, "hidden_size": 64, "intermediate_size": 96,
    "moe_intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "q_lora_rank": 32,
    "kv_lora_rank": 32, "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 24,
    "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
    "topk_method": "noaux_tc", "n_group": 4, "topk_group": 2, "norm_topk_prob": True,
    "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
    "tie_word_embeddings": False,
}


def tiny_weights(cfg, rng):
    """Random checkpoint for `cfg` (float32 values), name -> numpy array."""
    h, H = cfg["hidden_size"], cfg["num_attention_heads"]
    nope, rope, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]

    def mat(o, i):
        return (rng.standard_normal((o, i)) / math.sqrt(i)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((cfg["vocab_size"], h)).astype(np.float32),
         "model.norm.weight": norm(h), "lm_head.weight": mat(cfg["vocab_size"], h)}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        w[p + "input_layernorm.weight"] = norm(h)
        w[p + "post_attention_layernorm.weight"] = norm(h)
        a = p + "self_attn."
        w[a + "q_a_proj.weight"] = mat(cfg["q_lora_rank"], h)
        w[a + "q_a_layernorm.weight"] = norm(cfg["q_lora_rank"])
        w[a + "q_b_proj.weight"] = mat(H * (nope + rope), cfg["q_lora_rank"])
        w[a + "kv_a_proj_with_mqa.weight"] = mat(cfg["kv_lora_rank"] + rope, h)
        w[a + "kv_a_layernorm.weight"] = norm(cfg["kv_lora_rank"])
        w[a + "kv_b_proj.weight"] = mat(H * (nope + vd), cfg["kv_lora_rank"])
        w[a + "o_proj.weight"] = mat(h, H * vd)
        m = p + "mlp."
        if layer < cfg["first_k_dense_replace"]:
            mlps, inter = [m], cfg["intermediate_size"]
        else:
            w[m + "gate.weight"] = mat(cfg["n_routed_experts"], h)
            w[m + "gate.e_score_correction_bias"] = (0.1 * rng.standard_normal(cfg["n_routed_experts"])).astype(np.float32)
            mlps = [f"{m}experts.{e}." for e in range(cfg["n_routed_experts"])] + [m + "shared_experts."]
            inter = cfg["moe_intermediate_size"]
        for mp in mlps:
            w[mp + "gate_proj.weight"] = mat(inter, h)
            w[mp + "up_proj.weight"] = mat(inter, h)
            w[mp + "down_proj.weight"] = mat(h, inter)
    return w


def write_model(d, cfg, weights):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    sio.write_safetensors(os.path.join(d, "model.safetensors"), {k: (v, "F32") for k, v in weights.items()})


@test
def causal_and_cli():
    rng = np.random.default_rng(4)
    with tempfile.TemporaryDirectory() as d:
        model = os.path.join(d, "m")
        write_model(model, TINY, tiny_weights(TINY, rng))
        tokens = [int(t) for t in rng.integers(0, TINY["vocab_size"], 20)]
        base = ref.forward(model, tokens)
        assert base.shape == (20, 97) and base.dtype == torch.float64
        assert torch.isfinite(base).all() and base.std() > 1e-2
        for cut in (0, 7, 19):
            changed = tokens[:cut + 1] + [(t + 5) % 97 for t in tokens[cut + 1:]]
            other = ref.forward(model, changed)
            assert torch.allclose(base[:cut + 1], other[:cut + 1], rtol=1e-12, atol=1e-12)
            if cut < 19:
                assert not torch.allclose(base[cut + 1:], other[cut + 1:])
        # a prefix computes exactly the prefix rows
        assert torch.allclose(ref.forward(model, tokens[:5]), base[:5], rtol=1e-12, atol=1e-12)
        out = os.path.join(d, "logits.npy")
        subprocess.run([sys.executable, os.path.join(HERE, "deepseek_ref.py"), "--model", model,
                        "--tokens", ",".join(map(str, tokens)), "--out", out], check=True)
        saved = np.load(out)
        assert saved.dtype == np.float32 and saved.shape == (20, 97)
        assert np.allclose(saved, base.numpy(), rtol=1e-6, atol=1e-5)


@test
def routing_rules():
    """Hand-checkable router cases for each topk_method and weight rule."""
    E, k = 8, 2
    x = torch.eye(E, dtype=torch.float64)[:1]          # one token; logits = row 0 of gate.weight^T
    logits = torch.tensor([0.1, 2.0, 0.3, 1.9, -1.0, 0.5, 1.8, 0.0], dtype=torch.float64)
    gate = torch.zeros(E, E, dtype=torch.float64)
    gate[:, 0] = logits
    bias = torch.tensor([0, 0, 0, 0, 0, 0, 0, 3.0], dtype=torch.float64)
    w = {"m.gate.weight": gate, "m.gate.e_score_correction_bias": bias}

    def cfg(**kw):
        base = dict(model_type="deepseek_v3", n_routed_experts=E, num_experts_per_tok=k, n_group=4,
                    topk_group=2, norm_topk_prob=False, routed_scaling_factor=2.0, scoring_func="softmax")
        base.update(kw)
        return ref.Config(base)

    soft = torch.softmax(logits, 0)
    idx, wt = ref.route(x, w, "m.", cfg(topk_method="greedy", model_type="deepseek_v2"))
    assert sorted(idx[0].tolist()) == [1, 3] and torch.allclose(wt[0].sort().values, 2 * soft[[3, 1]])
    # groups {0,1} {2,3} {4,5} {6,7}; maxima 2.0, 1.9, 0.5, 1.8 -> keep groups 0 and 1
    idx, wt = ref.route(x, w, "m.", cfg(topk_method="group_limited_greedy", model_type="deepseek_v2"))
    assert sorted(idx[0].tolist()) == [1, 3]
    idx, wt = ref.route(x, w, "m.", cfg(topk_method="group_limited_greedy", model_type="deepseek_v2", topk_group=1))
    assert sorted(idx[0].tolist()) == [0, 1]
    # v2 rule: normalize without scaling
    idx, wt = ref.route(x, w, "m.", cfg(topk_method="gready", model_type="deepseek_v2", norm_topk_prob=True))
    assert torch.allclose(wt.sum(), torch.tensor(1.0, dtype=torch.float64))
    # noaux_tc with sigmoid: group merit = sum of top-2 biased scores: group 3 (0.86 + 3.5) and
    # group 1 (0.57 + 0.87) beat group 0 (0.52 + 0.88), so expert 1 (best unbiased score) is out.
    # The weight of expert 7 is its unbiased score; v3 rule normalizes then scales.
    idx, wt = ref.route(x, w, "m.", cfg(topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True))
    sig = torch.sigmoid(logits)
    assert sorted(idx[0].tolist()) == [3, 7]
    expect = torch.stack([sig[3], sig[7]]) / (sig[3] + sig[7]) * 2.0
    got = wt[0][idx[0].argsort()]
    assert torch.allclose(got, expect, rtol=1e-14)


@test
def convert_and_reload_layouts():
    """convert_checkpoint.py output (fp8 sharded with MTP, bf16, f16) reloads and gives logits close
    to the f32 original, and the fp8 file layout is what DeepSeek-V3 ships."""
    rng = np.random.default_rng(5)
    cfg = dict(TINY, hidden_size=160, moe_intermediate_size=136)  # blocks of 128 with ragged edges
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "src")
        write_model(src, cfg, tiny_weights(cfg, rng))
        with open(os.path.join(src, "tokenizer.json"), "w") as f:
            f.write("{}")
        tokens = [int(t) for t in rng.integers(0, cfg["vocab_size"], 12)]
        base = ref.forward(src, tokens)
        # Tolerances are on the median position: fp8's ~2.6% weight error flips a router choice at
        # some positions (a discrete jump there), which says nothing about the file layout.
        for to, shards, mtp, tol in (("fp8", 3, True, 0.1), ("bf16", 1, False, 0.02), ("f16", 2, False, 0.002),
                                     ("f32", 1, True, 1e-12)):
            out = os.path.join(d, f"{to}-{shards}")
            cmd = [sys.executable, os.path.join(HERE, "convert_checkpoint.py"), "--in", src, "--out", out,
                   "--to", to, "--shards", str(shards)] + (["--add-mtp"] if mtp else [])
            subprocess.run(cmd, check=True)
            assert os.path.exists(os.path.join(out, "tokenizer.json"))
            weights = sio.ModelWeights(out)
            if shards > 1:
                with open(os.path.join(out, "model.safetensors.index.json")) as f:
                    files = set(json.load(f)["weight_map"].values())
                assert files == {f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)}
            if mtp:
                assert "model.layers.2.eh_proj.weight" in weights
            if to == "fp8":
                name = "model.layers.1.mlp.experts.3.down_proj.weight"  # [160, 136]
                assert weights.dtype(name) == "F8_E4M3" and weights.dtype(name + "_scale_inv") == "F32"
                st = weights.files[weights.location[name + "_scale_inv"]]
                assert st.shape(name + "_scale_inv") == (2, 2)
                for plain in ("model.norm.weight", "model.embed_tokens.weight", "lm_head.weight",
                              "model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.e_score_correction_bias"):
                    assert weights.dtype(plain) == "BF16", plain
                original = sio.ModelWeights(src)
                for n in weights.names():
                    if n.endswith("_proj.weight") and n in original:
                        err = torch.linalg.norm(weights[n] - original[n]) / torch.linalg.norm(original[n])
                        assert 0 < err < 0.04, (n, err)
                # re-quantizing an fp8 checkpoint reproduces it bit for bit
                again = os.path.join(d, "fp8-again")
                subprocess.run([sys.executable, os.path.join(HERE, "convert_checkpoint.py"), "--in", out,
                                "--out", again, "--to", "fp8"], check=True)
                twice = sio.ModelWeights(again)
                assert all(torch.equal(twice[n], weights[n]) for n in twice.names())
            got = ref.forward(out, tokens)
            rel = (torch.linalg.norm(got - base, dim=1) / torch.linalg.norm(base, dim=1)).median().item()
            assert rel <= tol, (to, rel)
            assert to == "f32" or rel > 0  # the dtype change really happened


def main():
    passed = failed = 0
    for fn in TESTS:
        try:
            fn()
            print(f"PASS {fn.__name__}")
            passed += 1
        except Exception:
            print(f"FAIL {fn.__name__}")
            traceback.print_exc()
            failed += 1
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
