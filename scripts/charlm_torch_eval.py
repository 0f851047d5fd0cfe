#!/usr/bin/env python3
"""scripts/charlm_torch_eval.py: recomputes `charlm eval` in PyTorch from a checkpoint, following docs/checkpoint.md.

  python3 scripts/charlm_torch_eval.py CHECKPOINT_DIR TEXT_FILE

Needs only torch (Debian: apt-get install python3-torch). Reads model.safetensors and
checkpoint.json, rebuilds the model from the formulas in docs/checkpoint.md (no latentgrad
code), and prints the mean loss over every token of TEXT_FILE, which matches `charlm eval`
to float rounding. Runs in float64, so any difference is latentgrad's float32 rounding.

Each kind the model section names (attention, ffn, norm) is looked up in the ATTENTION, FFN
and NORM tables of this file. A kind missing from its table, or a tensor of model.safetensors
that the forward pass never reads, stops the script with an error instead of a wrong loss.
"""
import argparse
import json
import math
import sys

try:
    import torch
except ImportError:
    sys.exit(f"charlm_torch_eval.py needs PyTorch, which {sys.executable} does not have "
             "(Debian: apt-get install python3-torch, then run /usr/bin/python3)")

DTYPE = torch.float64


def fail(message):
    sys.exit(f"charlm_torch_eval.py: {message}")


class Weights(dict):
    """name -> tensor, remembering which names the forward pass read."""

    def __init__(self, tensors):
        super().__init__(tensors)
        self.read = set()

    def __getitem__(self, name):
        if name not in self:
            fail(f"model.safetensors has no tensor {name!r}, which the checkpoint's model section implies")
        self.read.add(name)
        return super().__getitem__(name)


def load_safetensors(path):
    """name -> tensor; the same as safetensors.torch.load_file(path), without the package."""
    with open(path, "rb") as f:
        data = f.read()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32"
        begin, end = info["data_offsets"]
        raw = bytearray(data[base + begin : base + end])
        tensors[name] = torch.frombuffer(raw, dtype=torch.float32).reshape(info["shape"]).to(DTYPE)
    return tensors


def linear(w, prefix, x, bias=True):
    y = x @ w[prefix + ".weight"].T
    return y + w[prefix + ".bias"] if bias and prefix + ".bias" in w else y


def layer_norm(w, prefix, x, eps):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], w[prefix + ".weight"], w[prefix + ".bias"], eps)


def rms_norm(w, prefix, x, eps):
    return x / torch.sqrt(x.square().mean(-1, keepdim=True) + eps) * w[prefix + ".weight"]


def rope(x, first_position, base):
    """Rotates adjacent pairs (x[2i], x[2i+1]) of x (..., T, d) by (first_position + t) * base^(-2i/d)."""
    T, d = x.shape[-2], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    angle = (first_position + torch.arange(T, dtype=torch.float64))[:, None] * inv_freq[None, :]  # (T, d/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def causal(T):
    return torch.ones(T, T, dtype=torch.bool).tril()  # [t, s] = s <= t


def mha(w, p, x, cfg):
    B, T, D = x.shape
    H = cfg["heads"]
    d = D // H
    q, k, v = linear(w, p + ".qkv", x).split(D, dim=-1)  # each (B, T, D), heads contiguous
    q, k, v = (t.view(B, T, H, d).transpose(1, 2) for t in (q, k, v))  # (B, H, T, d)
    q, k = rope(q, 0, cfg["rope_base"]), rope(k, 0, cfg["rope_base"])
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)  # (B, H, T, T)
    scores = scores.masked_fill(~causal(T), float("-inf"))
    o = scores.softmax(-1) @ v  # (B, H, T, d)
    return linear(w, p + ".proj", o.transpose(1, 2).reshape(B, T, D))


def latent(w, p, x, cfg):
    """Latent attention straight from its definition (docs/latent-attention.md, "Definition")."""
    B, T, D = x.shape
    H, M, W = cfg["heads"], cfg["latents"], cfg["window"]
    d = D // H
    qkv = linear(w, p + ".qkv", x).view(B, T, 3 * H, d).transpose(1, 2)  # (B, 3H, T, d)
    q, k, v = qkv[:, :H], qkv[:, H : 2 * H], qkv[:, 2 * H :]  # each (B, H, T, d)
    qr, kr = rope(q, 0, cfg["rope_base"]), rope(k, 0, cfg["rope_base"])
    lat = w[p + ".latents"].view(M, H, d).transpose(0, 1)  # (H, M, d): the (M, D) bank split across heads
    a = torch.einsum("hmd,bhsd->bhms", lat, k) / math.sqrt(d)  # (B, H, M, T) write scores, un-rotated k
    # w[b, h, m, t, s] = softmax over s <= t of a[b, h, m, s]
    a_ts = a[:, :, :, None, :].expand(B, H, M, T, T).masked_fill(~causal(T), float("-inf"))
    write = a_ts.softmax(-1)  # (B, H, M, T, T)
    key_lat = torch.einsum("bhmts,bhsd->bhtmd", write, kr)  # (B, H, T, M, d) Kl
    val_lat = torch.einsum("bhmts,bhsd->bhtmd", write, v)  # (B, H, T, M, d) Vl
    s_lat = torch.einsum("bhtd,bhtmd->bhtm", qr, key_lat) / math.sqrt(d)  # (B, H, T, M)
    t_idx = torch.arange(T)
    in_window = (t_idx[None, :] <= t_idx[:, None]) & (t_idx[None, :] > t_idx[:, None] - W)  # [t, s]
    s_win = ((qr @ kr.transpose(-1, -2)) / math.sqrt(d)).masked_fill(~in_window, float("-inf"))  # (B, H, T, T)
    prob = torch.cat([s_lat, s_win], dim=-1).softmax(-1)  # one softmax over M latents + T positions
    o = torch.einsum("bhtm,bhtmd->bhtd", prob[..., :M], val_lat) + prob[..., M:] @ v  # (B, H, T, d)
    return linear(w, p + ".proj", o.transpose(1, 2).reshape(B, T, D))


def mla(w, p, x, cfg):
    """DeepSeek-V2 MLA as nn/mla.h defines it."""
    B, T, D = x.shape
    H = cfg["heads"]
    d = D // H
    d_r = cfg["rope_dim"] or d // 2
    base = cfg["rope_base"]
    src = linear(w, p + ".q_down", x) if p + ".q_down.weight" in w else x
    q_c = linear(w, p + ".q_up", src) if p + ".q_up.weight" in w else linear(w, p + ".q", src)
    q_c = q_c.view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)
    q_r = rope(linear(w, p + ".q_rope", src).view(B, T, H, d_r).transpose(1, 2), 0, base)  # (B, H, T, d_R)
    c = linear(w, p + ".kv_down", x)  # (B, T, d_c)
    k_c = linear(w, p + ".k_up", c, bias=False).view(B, T, H, d).transpose(1, 2)
    v_c = linear(w, p + ".v_up", c, bias=False).view(B, T, H, d).transpose(1, 2)
    k_r = rope(linear(w, p + ".k_rope", x), 0, base)  # (B, T, d_R), one key shared by the heads
    scores = (q_c @ k_c.transpose(-1, -2) + q_r @ k_r[:, None].transpose(-1, -2)) / math.sqrt(d + d_r)
    o = scores.masked_fill(~causal(T), float("-inf")).softmax(-1) @ v_c  # (B, H, T, d)
    return linear(w, p + ".proj", o.transpose(1, 2).reshape(B, T, D))


def gelu_mlp(w, p, x):
    """proj(gelu_tanh(fc x)): fc D -> 4D, proj 4D -> D."""
    return linear(w, p + ".proj", torch.nn.functional.gelu(linear(w, p + ".fc", x), approximate="tanh"))


def swiglu(w, p, x):
    """w2(silu(w1 x) * w3 x): w1, w3 D -> H, w2 H -> D (H from the tensors' shapes)."""
    return linear(w, p + ".w2", torch.nn.functional.silu(linear(w, p + ".w1", x)) * linear(w, p + ".w3", x))


# model.<key> -> the function of each kind this script knows. A checkpoint without "ffn" or
# "norm" (written before those keys existed) means gelu and layernorm.
ATTENTION = {"mha": mha, "latent": latent, "mla": mla}
FFN = {"gelu": gelu_mlp, "swiglu": swiglu}
NORM = {"layernorm": layer_norm, "rmsnorm": rms_norm}
KINDS = {"attention": ("ATTENTION", ATTENTION, None), "ffn": ("FFN", FFN, "gelu"), "norm": ("NORM", NORM, "layernorm")}


def kind(cfg, key):
    """The function for model.<key>, or exit naming the key, the kind and the known kinds."""
    table_name, table, default = KINDS[key]
    name = cfg.get(key, default)
    if name is None:
        fail(f"checkpoint model section has no {key!r}")
    if not isinstance(name, str) or name not in table:
        fail(f"checkpoint model.{key} = {name!r}: this script knows {', '.join(table)}; add it to {table_name} below")
    return table[name]


def forward(w, cfg, ids):
    """ids (B, T) -> logits (B, T, V)."""
    eps = cfg["layer_norm_eps"]
    attn, ffn, norm = kind(cfg, "attention"), kind(cfg, "ffn"), kind(cfg, "norm")
    h = w["wte.weight"][ids]  # (B, T, D); no position table, RoPE is in attention
    for i in range(cfg["layers"]):
        p = f"blocks.{i}"
        h = h + attn(w, p + ".attn", norm(w, p + ".ln1", h, eps), cfg)
        h = h + ffn(w, p + ".mlp", norm(w, p + ".ln2", h, eps))
    h = norm(w, "ln_f", h, eps)
    return h @ w["wte.weight"].T  # tied output head


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", metavar="CHECKPOINT_DIR", help="a checkpoint directory, e.g. runs/main/best")
    ap.add_argument("text", metavar="TEXT_FILE", help="the text to evaluate on (at least 2 bytes)")
    args = ap.parse_args()
    ckpt, text_path = args.checkpoint, args.text
    meta = json.load(open(f"{ckpt}/checkpoint.json"))
    cfg = meta["model"]
    w = Weights(load_safetensors(f"{ckpt}/model.safetensors"))
    with torch.no_grad():
        forward(w, cfg, torch.zeros(1, 1, dtype=torch.long))  # which tensors does the forward pass read?
    unread = sorted(set(w) - w.read)
    if unread:
        kinds = ", ".join(f"{k} {cfg.get(k, KINDS[k][2])!r}" for k in KINDS)
        fail(f"model.safetensors holds {len(unread)} tensor(s) that the forward pass for {kinds} never reads: "
             f"{', '.join(unread[:8])}{', ...' if len(unread) > 8 else ''}")
    id_of = {b: i + 1 for i, b in enumerate(meta["vocab"])}  # id 0: a byte never seen in training
    ids = torch.tensor([id_of.get(b, 0) for b in open(text_path, "rb").read()])
    ctx, n = cfg["ctx"], len(ids)
    if n < 2:
        fail(f"{text_path} has {n} byte(s): nothing to predict")
    total, correct = 0.0, 0
    with torch.no_grad():
        for s in range(0, n - 1, ctx):  # non-overlapping windows; each token after the first predicted once
            x, y = ids[s : min(s + ctx, n - 1)], ids[s + 1 : min(s + ctx, n - 1) + 1]
            logits = forward(w, cfg, x[None])[0]  # (T, V)
            total += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(-1) == y).sum().item()
    loss = total / (n - 1)
    print(json.dumps({"tokens": n - 1, "loss": loss, "bpc": loss / math.log(2), "accuracy": correct / (n - 1)}))


if __name__ == "__main__":
    main()
