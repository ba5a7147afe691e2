#!/usr/bin/env python3
"""A stand-in T2I-adapter for the demo model, for graphs/t2i_adapter.ron: sdgraph-demo-t2i-adapter-random.safetensors.

RANDOM WEIGHTS, NOTHING TRAINED: it has the architecture of ComfyUI's `Adapter_light` (comfy/t2i_adapter/adapter.py,
TencentARC's light adapters) for the demo model: a gray control image, pixel-unshuffled
by 8, then per UNet level an extractor (a 1x1 in_conv to a quarter of the level's width, 4 light ResBlocks, a 1x1
out_conv to the level's width: 32 and 64 channels), so ControlNetLoader loads it as a T2I-adapter and
ControlNetApplyAdvanced adds its features to the demo UNet's input blocks, but they steer nothing in particular:
the demo model still draws its shapes, a little disturbed (graphs/t2i_adapter.ron, measured on lavapipe: 1.1 levels
per channel on average, at most 43, from the same seed without the adapter). Stored in f16 (54 KiB).

Differences from a real light adapter (ComfyUI builds them for [320, 640, 1280, 1280] with 4 ResBlocks): two levels of
the demo model's widths; sdgraph reads levels and widths from the file.

Weights: biases 0, other weights N(0, 1/fan_in), from numpy's default_rng(SEED). Run from the
repository root (CPU, under a second; same bytes every run):

    /work/pyenv/bin/python assets/demo/make_demo_t2i_adapter.py
"""

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "sdgraph-demo-t2i-adapter-random.safetensors"
SEED = 20261208
CHANNELS = [32, 64]  # the demo UNet's block_out_channels
NUMS_RB = 4  # ComfyUI's Adapter_light(nums_rb=4)
CIN = 1 * 64  # one (gray) channel, pixel-unshuffled by 8


def save_sorted(tensors, path, metadata):
    """F16 safetensors with the header in a fixed order (bytes identical from run to run)."""
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
    out = {}

    def conv(name, inp, outp, k):
        out[name + ".weight"] = rng.standard_normal((outp, inp, k, k)) / np.sqrt(inp * k * k)
        out[name + ".bias"] = np.zeros(outp)

    ch = CIN
    for i, c in enumerate(CHANNELS):
        inter = c // 4
        conv(f"body.{i}.in_conv", ch, inter, 1)
        for j in range(NUMS_RB):
            conv(f"body.{i}.body.{j}.block1", inter, inter, 3)
            conv(f"body.{i}.body.{j}.block2", inter, inter, 3)
        conv(f"body.{i}.out_conv", inter, c, 1)
        ch = c
    out = {k: np.ascontiguousarray(v.astype(np.float16)) for k, v in out.items()}
    save_sorted(out, OUT, {"format": "pt"})
    n = sum(v.size for v in out.values())
    print(f"{OUT.name}: {n} parameters, {OUT.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
