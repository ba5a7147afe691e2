#!/usr/bin/env python3
"""Two small demo files made from the demo model, for the example graphs (graphs/lora.ron):

- sdgraph-demo-vae.safetensors: the demo checkpoint's VAE alone (its `first_stage_model.` tensors without the
  prefix, and the metadata its architecture needs), as a standalone VAE file such as
  vae-ft-mse-840000-ema-pruned.safetensors is for SD 1.5; VAELoader loads it.
- sdgraph-demo-lora-prompt.safetensors: a LoRA in kohya-ss's layout (LDM module names) on every cross-attention
  output projection (`attn2.to_out.0`) of the UNet. Its `up @ down` is the weight itself (up = W, down = I, alpha =
  rank), so at strength s the projection becomes (1 + s) W: the prompt's pull on each block grows by s (a
  "prompt strength" LoRA; negative strengths weaken it). Nothing is trained; the file is exact arithmetic.

Run from the repository root (CPU, under a second; same bytes every run):

    /work/pyenv/bin/python assets/demo/make_demo_extras.py
"""

import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

HERE = Path(__file__).resolve().parent
CKPT = HERE / "sdgraph-demo.safetensors"


def read(path):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    meta = header.pop("__metadata__", {})
    dtypes = {"F16": np.float16, "F32": np.float32, "I64": np.int64}
    tensors = {}
    for k, v in header.items():
        a, b = v["data_offsets"]
        tensors[k] = np.frombuffer(body[a:b], dtype=dtypes[v["dtype"]]).reshape(v["shape"])
    return tensors, meta


def main():
    tensors, meta = read(CKPT)
    vae = {k[len("first_stage_model."):]: t for k, t in tensors.items() if k.startswith("first_stage_model.")}
    vae_meta = {k: meta[k] for k in ("sdgraph.norm_groups", "sdgraph.vae.scaling_factor")}
    vae_meta["format"] = "pt"
    save_file(vae, str(HERE / "sdgraph-demo-vae.safetensors"), metadata=vae_meta)

    lora = {}
    prefix = "model.diffusion_model."
    for k, w in sorted(tensors.items()):
        if not (k.startswith(prefix) and k.endswith("attn2.to_out.0.weight")):
            continue
        module = "lora_unet_" + k[len(prefix):-len(".weight")].replace(".", "_")
        rank = w.shape[1]
        lora[module + ".lora_up.weight"] = np.ascontiguousarray(w.astype(np.float32))
        lora[module + ".lora_down.weight"] = np.eye(rank, dtype=np.float32)
        lora[module + ".alpha"] = np.array(float(rank), dtype=np.float32)
    save_file(lora, str(HERE / "sdgraph-demo-lora-prompt.safetensors"), metadata={"format": "pt"})
    print(f"VAE: {len(vae)} tensors; LoRA: {len(lora) // 3} modules")


if __name__ == "__main__":
    main()
