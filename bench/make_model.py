#!/usr/bin/env python3
"""Make a random-weight SD 1.5-shaped model for the GPU benchmark (nothing is downloaded).

    /work/pyenv/bin/python bench/make_model.py OUT_DIR [--small] [--dtype f16|f32]

Writes, into OUT_DIR:
  sd15.safetensors   one LDM single-file checkpoint (the layout users download), for sdgraph
  diffusers/         the same weights as a diffusers StableDiffusionPipeline folder (with a
                     CLIP tokenizer built from sdgraph's own copy of open_clip's BPE merges)
  model.json         the configs, seed and dtype

Full size is SD 1.5's architecture: UNet [320, 640, 1280, 1280], 8 heads, context 768;
CLIP ViT-L/14 text tower (12 layers, 768 wide, 12 heads, vocab 49408); VAE [128, 256, 512,
512]; 32 norm groups. `--small` keeps every block and the vocabulary but narrows the widths
(UNet [32, 64, 128, 128], CLIP 64 wide with 4 heads, VAE [32, 32, 64, 64]) so the whole
benchmark runs on a CPU in minutes.

Weights: tests/fixtures/make_fixtures.py's `reinit_` (weights N(0, 1/fan_in), norm weights
1 + N(0, 0.2^2), biases N(0, 0.2^2), embeddings N(0, 0.5^2)), which keeps activations O(1),
seeded; the diffusers -> LDM key mapping is make_fixtures.py's `build_ldm`, imported with its
config globals overridden.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
import make_fixtures as mf  # noqa: E402

sys.path.insert(0, str(REPO / "tests" / "fixtures" / "tokenizer"))
from make_tokenizer_fixture import bytes_to_unicode  # noqa: E402  (CLIP's byte -> character table)

SEED = 1515
VOCAB_GZ = REPO / "nodes" / "models" / "src" / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"


def configs(small: bool) -> tuple[dict, dict, dict]:
    """SD 1.5's UNet, VAE and CLIP configs (narrowed with `small`): make_fixtures.py's tiny SD 1.x-shaped ones with
    SD 1.5's blocks, widths, heads, norm groups and vocabulary."""
    unet = {
        **mf.UNET_CONFIG,
        "sample_size": 8 if small else 64,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": [32, 64, 128, 128] if small else [320, 640, 1280, 1280],
        "norm_num_groups": 32,
        "cross_attention_dim": 64 if small else 768,
        "attention_head_dim": 8,  # SD 1.x: the number of heads (see make_fixtures.py)
    }
    vae = {
        **mf.VAE_CONFIG,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [32, 32, 64, 64] if small else [128, 256, 512, 512],
        "norm_num_groups": 32,
        "sample_size": 64 if small else 512,
    }
    clip = {
        **mf.CLIP_CONFIG,
        "vocab_size": 49408,
        "hidden_size": 64 if small else 768,
        "intermediate_size": 256 if small else 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 4 if small else 12,
        "projection_dim": 64 if small else 768,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
    return unet, vae, clip


def write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """vocab.json and merges.txt of the SD 1.x CLIP tokenizer, from open_clip's merges."""
    lines = gzip.decompress(VOCAB_GZ.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    vf, mf_ = folder / "vocab.json", folder / "merges.txt"
    vf.write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    mf_.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vf, mf_


def make_tokenizer():
    from transformers import CLIPTokenizer

    tmp = Path(tempfile.mkdtemp(prefix="sdgraph-tok-"))
    vf, mf_ = write_tokenizer_files(tmp)
    return CLIPTokenizer(str(vf), str(mf_), pad_token="<|endoftext|>", model_max_length=77)


def build(small: bool):
    """(unet, vae, clip) as torch modules in float32, seeded."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    ucfg, vcfg, ccfg = configs(small)
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(**ucfg).eval()
    vae = AutoencoderKL(**vcfg).eval()
    clip = CLIPTextModel(CLIPTextConfig(**ccfg)).eval()
    mf.reinit_(clip, SEED + 1)
    mf.reinit_(unet, SEED + 2)
    mf.reinit_(vae, SEED + 3)
    return unet, vae, clip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--dtype", choices=["f16", "f32"], default=None, help="stored dtype (default: f16 full, f32 small)")
    a = ap.parse_args()
    dtype = torch.float16 if (a.dtype or ("f32" if a.small else "f16")) == "f16" else torch.float32
    torch.set_num_threads(max(1, torch.get_num_threads()))
    make(a.out, a.small, dtype)


def make(out: Path, small: bool, dtype: torch.dtype) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    out.mkdir(parents=True, exist_ok=True)
    unet, vae, clip = build(small)
    ucfg, vcfg, ccfg = configs(small)
    # build_ldm reads the module-level configs for the key mapping.
    mf.UNET_CONFIG, mf.VAE_CONFIG = ucfg, vcfg
    ldm, _mapping, _extras = mf.build_ldm(unet.state_dict(), vae.state_dict(), mf.clip_state_dict(clip))
    ldm = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in ldm.items()}
    # Only what SD 1.5's shapes cannot tell (the small CLIP's head count) goes in the metadata.
    meta = {"sdgraph.clip.heads": str(ccfg["num_attention_heads"])} if small else {}
    mf.save_st(ldm, out / "sd15.safetensors", meta)
    del ldm

    sched = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        # "leading": initial noise scaled by sqrt(sigma_max^2 + 1), as ComfyUI's txt2img does.
        timestep_spacing="leading",
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=clip,
        tokenizer=make_tokenizer(),
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(dtype)
    pipe.save_pretrained(out / "diffusers")
    (out / "model.json").write_text(
        json.dumps(
            {"small": small, "dtype": str(dtype), "seed": SEED, "unet": ucfg, "vae": vcfg, "clip": ccfg}, indent=1
        )
    )
    print(f"wrote {out}/sd15.safetensors and {out}/diffusers/", file=sys.stderr)


if __name__ == "__main__":
    main()
