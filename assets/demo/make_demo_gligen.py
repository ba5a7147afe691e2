#!/usr/bin/env python3
"""A stand-in GLIGEN for the demo model, for graphs/gligen.ron and the gallery's gligen_textbox_example
(tests/pipelines/comfy_gallery.rs): sdgraph-demo-gligen-random.safetensors.

RANDOM WEIGHTS, NOTHING TRAINED: it has GLIGEN's architecture for the demo model (ComfyUI's comfy/gligen.py:
one GatedSelfAttentionDense per SpatialTransformer of the demo UNet, named `<LDM transformer block>.fuser.*` as
GLIGENLoader reads them, and a PositionNet taking the demo CLIP's 32-wide pooled text), so GLIGENLoader and
GLIGENTextBoxApply run on it, but its boxes steer nothing in particular. The gates are nearly closed
(alpha_attn = alpha_dense = 0.2, tanh 0.197), so the demo model still draws its shapes, a little disturbed.

Differences from a real GLIGEN file (gligen_sd14_textbox_pruned.safetensors): the widths are the demo model's
(32 and 64 channels, 4 heads given as metadata `sdgraph.gligen.heads`), and PositionNet's hidden width is 32
(ComfyUI fixes 512; sdgraph reads it from the file) to keep the file small. Stored in f16 (666 KiB: the gated
blocks alone are 328k parameters).

Weights: norm weights 1, biases 0, null features N(0, 0.2^2), other weights N(0, 1/fan_in), from numpy's
default_rng(SEED). Run from the repository root (CPU, under a second; same bytes every run):

    /work/pyenv/bin/python assets/demo/make_demo_gligen.py
"""

import json
import struct
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CKPT = HERE / "sdgraph-demo.safetensors"
OUT = HERE / "sdgraph-demo-gligen-random.safetensors"
SEED = 20261207
HEADS = 4  # the demo UNet's (metadata sdgraph.unet.heads)
HIDDEN = 32  # PositionNet's hidden width (ComfyUI: 512)
ALPHA = 0.2
UNET = "model.diffusion_model."


def shapes(path):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    return {k: v["shape"] for k, v in header.items()}


def save_sorted(tensors, path, metadata):
    """F16 safetensors with the header in a fixed order (safetensors' writer orders `__metadata__` by a hash map,
    so a file with two metadata entries would differ from run to run)."""
    header, blobs, offset = {"__metadata__": dict(sorted(metadata.items()))}, [], 0
    for name in sorted(tensors):
        data = tensors[name].astype("<f2").tobytes()
        header[name] = {"dtype": "F16", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def main():
    rng = np.random.default_rng(SEED)
    s = shapes(CKPT)
    key = s["cond_stage_model.transformer.text_model.final_layer_norm.weight"][0]
    blocks = sorted(
        (k[len(UNET):-len(".norm1.weight")], v[0])
        for k, v in s.items()
        if k.startswith(UNET) and k.endswith(".transformer_blocks.0.norm1.weight")
    )
    out = {}

    def linear(name, inp, outp, bias=True):
        out[name + ".weight"] = rng.standard_normal((outp, inp)) / np.sqrt(inp)
        if bias:
            out[name + ".bias"] = np.zeros(outp)

    for block, q in blocks:
        p = block + ".fuser."
        linear(p + "linear", key, q)
        for m in ("to_q", "to_k", "to_v"):
            linear(p + "attn." + m, q, q, bias=False)
        linear(p + "attn.to_out.0", q, q)
        linear(p + "ff.net.0.proj", q, 8 * q)
        linear(p + "ff.net.2", 4 * q, q)
        for norm in ("norm1", "norm2"):
            out[p + norm + ".weight"] = np.ones(q)
            out[p + norm + ".bias"] = np.zeros(q)
        out[p + "alpha_attn"] = np.array(ALPHA)
        out[p + "alpha_dense"] = np.array(ALPHA)
    out["position_net.null_positive_feature"] = 0.2 * rng.standard_normal(key)
    out["position_net.null_position_feature"] = 0.2 * rng.standard_normal(64)
    linear("position_net.linears.0", key + 64, HIDDEN)
    linear("position_net.linears.2", HIDDEN, HIDDEN)
    linear("position_net.linears.4", HIDDEN, key)
    out = {k: np.ascontiguousarray(v.astype(np.float16)) for k, v in out.items()}
    save_sorted(out, OUT, {"format": "pt", "sdgraph.gligen.heads": str(HEADS)})
    n = sum(v.size for v in out.values())
    print(f"{OUT.name}: {len(blocks)} gated blocks, {n} parameters, {OUT.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
