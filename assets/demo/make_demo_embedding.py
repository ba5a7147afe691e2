#!/usr/bin/env python3
"""The demo textual-inversion embedding for graphs/embedding.ron: graphs/embeddings/sdgraph-demo-red-circle.safetensors.

Two vectors, A1111's safetensors layout ({"emb_params": [2, 32]}, f16 as the checkpoint): the demo model's own
token-embedding rows for `red</w>` and `circle</w>` (CLIP BPE ids from open_clip's bpe_simple_vocab_16e6.txt.gz, the
vocabulary sdgraph's tokenizer embeds). Nothing is trained: `embedding:sdgraph-demo-red-circle` stands for the two
words exactly, so "a embedding:sdgraph-demo-red-circle on a blue background, top left" encodes to the same
conditioning as "a red circle on a blue background, top left" (graphs/txt2img.ron's prompt), which
tests/pipelines/embedding_graph.rs checks picture for picture. The file lies in graphs/embeddings/, the folder
CLIPTextEncode searches for a graph in graphs/ after the command's embeddings folders.

Run from the repository root (CPU, under a second; same bytes every run):

    /work/pyenv/bin/python assets/demo/make_demo_embedding.py
"""

import gzip
import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CKPT = HERE / "sdgraph-demo.safetensors"
OUT = REPO / "graphs" / "embeddings" / "sdgraph-demo-red-circle.safetensors"
TOKEN_EMBEDDING = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
WORDS = ["red", "circle"]


def vocab_ids():
    """CLIP's vocabulary as its tokenizer builds it: 256 byte symbols, the same with </w>, the merges, specials."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    symbols = [chr(c) for c in cs]
    merges = gzip.open(REPO / "nodes/models/src/tokenizer/bpe_simple_vocab_16e6.txt.gz").read().decode().split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    return {v: i for i, v in enumerate(vocab)}


def token_table():
    data = CKPT.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    info = header[TOKEN_EMBEDDING]
    assert info["dtype"] == "F16", info
    a, b = info["data_offsets"]
    return np.frombuffer(data[8 + n + a : 8 + n + b], dtype=np.float16).reshape(info["shape"])


def main():
    ids = vocab_ids()
    table = token_table()
    rows = np.stack([table[ids[w + "</w>"]] for w in WORDS])  # [2, 32]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    meta = {"sdgraph.demo": "token-embedding rows of " + " ".join(WORDS) + " from sdgraph-demo.safetensors"}
    save_file({"emb_params": np.ascontiguousarray(rows)}, str(OUT), metadata=meta)
    print(OUT, rows.shape, [ids[w + "</w>"] for w in WORDS])


if __name__ == "__main__":
    main()
