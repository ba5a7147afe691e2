#!/usr/bin/env python3
"""Trains sdgraph's demo model: a small Stable Diffusion 1.x (CLIP text tower, UNet, KL VAE; the
real architecture and the real CLIP BPE vocabulary, only narrow) on pictures of coloured shapes
that this script draws itself, and writes it as one SD-style single-file checkpoint in f16:

    assets/demo/sdgraph-demo.safetensors

Run (CPU is enough; about 40 minutes on one core -- small ops gain little from more threads):

    python assets/demo/train_demo.py                  # train and write the checkpoint
    python assets/demo/train_demo.py --eval-only      # re-measure the written checkpoint

Environment: tests/fixtures/requirements.txt (torch, diffusers, transformers, safetensors, numpy).
Nothing is downloaded: the models are built from the configs below, the tokenizer from the
vocabulary file sdgraph embeds (nodes/models/src/tokenizer/bpe_simple_vocab_16e6.txt.gz).

Data: 64x64 pictures of one shape (circle, square, triangle) in one of six colours, on a
background of another of the six, in one of five places, with the caption
"a red circle on a blue background, top left". Every run draws the same pictures (SEED).

Training, in three stages, all with AdamW:
  1. the VAE (encoder + decoder on the posterior mean, L1 + MSE reconstruction and a small KL
     term that keeps the latents bounded);
  2. the latent scale: 1 / std of the encoded training set (stored in the file's metadata,
     `sdgraph.vae.scaling_factor`, which sdgraph reads);
  3. the text encoder and the UNet together on the DDPM noise-prediction loss with SD 1.x's
     schedule (scaled-linear betas 0.00085..0.012, 1000 steps, epsilon prediction); the caption
     is dropped (empty prompt) for 10% of samples so classifier-free guidance works.
The checkpoint keeps SD 1.x's single-file key names (model.diffusion_model.*, first_stage_model.*,
cond_stage_model.transformer.*), mapped by the same rules as tests/fixtures/make_fixtures.py.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "sampling"))
import make_fixtures as mf  # noqa: E402  (the LDM key mapping)
import make_sampling_fixture as sf  # noqa: E402  (ComfyUI's sampling, ported)

sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "tokenizer"))
from make_tokenizer_fixture import bytes_to_unicode  # noqa: E402  (CLIP's byte -> character table)

SEED = 20261123
# Where the checkpoint and the parity fixture go (--out, --parity).
OUT_PATHS = {"out": HERE / "sdgraph-demo.safetensors", "parity": ROOT / "tests" / "fixtures" / "demo" / "parity.safetensors"}
SIZE = 64

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle")
# Centre of the shape in a 64x64 picture.
PLACES = {
    "top left": (18, 18),
    "top right": (46, 18),
    "bottom left": (18, 46),
    "bottom right": (46, 46),
    "center": (32, 32),
}

# The networks: SD 1.x's, narrower. Attention head COUNTS (diffusers calls them
# attention_head_dim) and the group-norm group count are not in the tensors; they go into the
# file's metadata for sdgraph.
NORM_GROUPS = 8
UNET_HEADS = 4
CLIP_HEADS = 4
UNET_CONFIG = {
    "sample_size": SIZE // 8,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": NORM_GROUPS,
    "norm_eps": 1e-5,
    "cross_attention_dim": 32,
    "attention_head_dim": UNET_HEADS,
    "use_linear_projection": False,
    "upcast_attention": False,
}
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 32, 32],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": NORM_GROUPS,
    "sample_size": SIZE,
    "scaling_factor": 1.0,  # replaced by the measured scale
}
CLIP_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": CLIP_HEADS,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "projection_dim": 32,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------


def caption(colour, shape, background, place):
    return f"a {colour} {shape} on a {background} background, {place}"


def draw(colour, shape, background, place, jitter, scale, size=SIZE):
    """One picture as float32 [3, size, size] in -1..1, drawn at 4x and box-filtered (anti-aliased).
    The geometry is in 64x64 units whatever `size` is, so a larger `size` draws the same picture
    in more pixels (train_demo_upscaler.py's high-resolution targets)."""
    ss = 4
    n = size * ss
    ys, xs = (np.mgrid[0:n, 0:n].astype(np.float32) / ss + 0.5 / ss) * (SIZE / size)
    cx, cy = PLACES[place]
    cx, cy = cx + jitter[0], cy + jitter[1]
    r = 11.0 * scale
    if shape == "circle":
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    elif shape == "square":
        h = r * 0.9
        inside = (np.abs(xs - cx) <= h) & (np.abs(ys - cy) <= h)
    else:  # upward triangle inscribed like the circle
        top, bottom, half = cy - r, cy + r * 0.8, r * 1.1
        t = (ys - top) / (bottom - top)
        inside = (t >= 0) & (t <= 1) & (np.abs(xs - cx) <= t * half)
    fg = np.array(COLOURS[colour], np.float32)
    bg = np.array(COLOURS[background], np.float32)
    img = np.where(inside[..., None], fg, bg)
    img = img.reshape(size, ss, size, ss, 3).mean(axis=(1, 3))
    return (img.transpose(2, 0, 1) / 127.5 - 1.0).astype(np.float32)


def random_picture(rng):
    """One random picture's description, the arguments of `draw`:
    (colour, shape, background, place, jitter, scale)."""
    names = list(COLOURS)
    colour, background = rng.choice(names, 2, replace=False)
    shape = SHAPES[rng.integers(len(SHAPES))]
    place = list(PLACES)[rng.integers(len(PLACES))]
    jitter = rng.uniform(-3, 3, 2)
    scale = rng.uniform(0.85, 1.15)
    return colour, shape, background, place, jitter, scale


def dataset(count, rng):
    images, captions = [], []
    for _ in range(count):
        colour, shape, background, place, jitter, scale = random_picture(rng)
        images.append(draw(colour, shape, background, place, jitter, scale))
        captions.append(caption(colour, shape, background, place))
    return torch.from_numpy(np.stack(images)), captions


# ------------------------------------------------------------------------------------------
# Tokenizer (the real CLIP BPE; these captions are lower-case ASCII, where every CLIP
# tokenizer agrees)
# ------------------------------------------------------------------------------------------


class Tokenizer:
    def __init__(self):
        import gzip

        path = ROOT / "nodes" / "models" / "src" / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
        lines = gzip.open(path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
        byte_chars = list(bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.ids = {t: i for i, t in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {}

    def bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == math.inf:
                break
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]
        self.cache[word] = [self.ids[p] for p in parts]
        return self.cache[word]

    def __call__(self, text):
        import re

        words = re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower())
        ids = [49406] + [t for w in words for t in self.bpe(w)][:75] + [49407]
        return ids + [49407] * (77 - len(ids))


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------


def build():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED)
    vae = AutoencoderKL(**VAE_CONFIG)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    clip = CLIPTextModel(CLIPTextConfig(**CLIP_CONFIG))
    return clip, unet, vae


def alphas_cumprod():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def warmup_cosine(opt, steps):
    """Linear warm-up over the first 5% of steps, then a cosine decay to zero."""
    warm = max(1, steps // 20)

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_vae(vae, images, steps, batch, lr):
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps)
    gen = torch.Generator().manual_seed(SEED + 1)
    vae.train()
    for step in range(steps):
        x = images[torch.randint(len(images), (batch,), generator=gen)]
        post = vae.encode(x).latent_dist
        # The posterior mean, as sdgraph's VAEEncode uses it: a sampled z (std 1 at init) drowns
        # the signal until the log-variance has been learnt, which costs most of a short run.
        y = vae.decode(post.mean).sample
        rec = F.l1_loss(y, x) + F.mse_loss(y, x)
        kl = post.kl().mean() / x[0].numel()
        loss = rec + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"vae {step}/{steps} rec {rec.item():.4f} kl {kl.item():.3f}")
    vae.eval()


@torch.no_grad()
def encode_all(vae, images):
    return torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])


def train_diffusion(clip, unet, latents, tokens, steps, batch, lr):
    params = list(unet.parameters()) + list(clip.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    gen = torch.Generator().manual_seed(SEED + 2)
    acp = alphas_cumprod()
    empty = torch.tensor(Tokenizer.empty_ids)
    unet.train()
    clip.train()
    for step in range(steps):
        idx = torch.randint(len(latents), (batch,), generator=gen)
        x0 = latents[idx]
        ids = tokens[idx].clone()
        drop = torch.rand(batch, generator=gen) < 0.1
        ids[drop] = empty
        t = torch.randint(1000, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        ctx = clip(ids).last_hidden_state
        pred = unet(xt, t, ctx).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"diffusion {step}/{steps} loss {loss.item():.4f}")
    unet.eval()
    clip.eval()


# ------------------------------------------------------------------------------------------
# Sampling (ComfyUI's KSampler: euler, "normal" schedule, CFG) and measurement
# ------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(clip, unet, vae, scale, prompt, seed, steps=20, cfg=5.0, negative="", tok=None, latent=False):
    """One picture the way sdgraph's graphs/txt2img.ron makes it, i.e. as ComfyUI's KSampler does
    (tests/fixtures/sampling/make_sampling_fixture.py holds the ComfyUI ports used here): euler,
    `normal` scheduler, classifier-free guidance `uncond + cfg * (cond - uncond)`, the UNet fed
    `x / sqrt(sigma^2 + 1)` at the integer timestep nearest to sigma, initial noise
    `torch.randn(shape, generator=torch.manual_seed(seed))` scaled by sqrt(1 + sigma_max^2).
    Returns uint8 HxWx3 (or, with `latent`, also the final latent and the f32 picture)."""
    tok = tok or Tokenizer()
    ms = sf.ModelSamplingDiscrete()
    sigmas = sf.ksampler_set_steps(ms, "normal", "euler", steps)
    ctx = clip(torch.tensor([tok(prompt), tok(negative)])).last_hidden_state
    noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.manual_seed(seed))
    x = sf.noise_scaling(sigmas[0], noise, torch.zeros_like(noise), sf.max_denoise(ms, sigmas))
    for i in range(steps):
        s = sigmas[i]
        t = ms.timestep(s).float()
        xin = (x / (s * s + 1.0) ** 0.5).repeat(2, 1, 1, 1)
        eps = unet(xin, t.repeat(2), ctx).sample
        eps = eps[1:] + (eps[:1] - eps[1:]) * cfg
        denoised = x - eps * s
        d = (x - denoised) / s
        x = x + d * (sigmas[i + 1] - s)
    img = vae.decode(x / scale).sample
    pixels = ((img[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    if latent:
        return pixels, x, ((img + 1) / 2).clamp(0, 1)
    return pixels


def nearest_colour(rgb):
    return min(COLOURS, key=lambda c: sum((int(a) - int(b)) ** 2 for a, b in zip(COLOURS[c], rgb)))


def measure(img):
    """What a picture shows: (shape colour, background colour, place), by the same simple rules
    as sdgraph's test (tests/pipelines/demo_model.rs): background = the border's commonest palette colour;
    the shape = pixels whose palette colour differs; place = its centroid's nearest place."""
    h, w, _ = img.shape
    labels = np.array([[nearest_colour(img[y, x]) for x in range(w)] for y in range(h)])
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    names, counts = np.unique(border, return_counts=True)
    background = names[counts.argmax()]
    mask = labels != background
    if mask.sum() < 20:
        return None, background, None
    names, counts = np.unique(labels[mask], return_counts=True)
    colour = names[counts.argmax()]
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean(), ys.mean()
    place = min(PLACES, key=lambda p: (PLACES[p][0] - cx) ** 2 + (PLACES[p][1] - cy) ** 2)
    return colour, background, place


def eval_prompts():
    """The fixed prompt set: every colour as shape and as background, every place."""
    names = list(COLOURS)
    out = []
    for i, colour in enumerate(names):
        for j, place in enumerate(PLACES):
            background = names[(i + 1 + j) % len(names)]
            if background == colour:
                background = names[(i + 2 + j) % len(names)]
            out.append((colour, SHAPES[(i + j) % 3], background, place))
    return out


def evaluate(clip, unet, vae, scale, count=None):
    tok = Tokenizer()
    prompts = eval_prompts()[:count]
    hits = {"colour": 0, "background": 0, "place": 0, "all": 0}
    for k, (c, s, b, p) in enumerate(prompts):
        img = generate(clip, unet, vae, scale, caption(c, s, b, p), seed=k, tok=tok)
        got = measure(img)
        ok = (got[0] == c, got[1] == b, got[2] == p)
        for key, v in zip(("colour", "background", "place"), ok):
            hits[key] += v
        hits["all"] += all(ok)
    n = len(prompts)
    return {k: v / n for k, v in hits.items()} | {"prompts": n}


# ------------------------------------------------------------------------------------------
# The checkpoint
# ------------------------------------------------------------------------------------------


def save(clip, unet, vae, scale, info):
    mf.UNET_CONFIG, mf.VAE_CONFIG = UNET_CONFIG, VAE_CONFIG
    ldm, _, _ = mf.build_ldm(unet.state_dict(), vae.state_dict(), mf.clip_state_dict(clip))
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in ldm.items()}
    meta = {
        "sdgraph.unet.heads": str(UNET_HEADS),
        "sdgraph.clip.heads": str(CLIP_HEADS),
        "sdgraph.norm_groups": str(NORM_GROUPS),
        "sdgraph.vae.scaling_factor": repr(float(scale)),
        "sdgraph.demo": json.dumps(info, sort_keys=True),
    }
    out = OUT_PATHS["out"]
    mf.save_st(tensors, out, meta)
    log(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB)")


def load_checkpoint():
    """The written f16 file, back into f32 diffusers/transformers models (what sdgraph computes with
    on CPU adapters)."""
    from safetensors import safe_open

    clip, unet, vae = build()
    mf.UNET_CONFIG, mf.VAE_CONFIG = UNET_CONFIG, VAE_CONFIG
    _, mapping, _ = mf.build_ldm(unet.state_dict(), vae.state_dict(), mf.clip_state_dict(clip))
    with safe_open(str(OUT_PATHS["out"]), "pt") as f:
        scale = float(f.metadata()["sdgraph.vae.scaling_factor"])
        sds = {"unet": {}, "vae": {}, "clip": {}}
        for ldm_key, diff_key in mapping.items():
            t = f.get_tensor(ldm_key).float()
            if ldm_key.startswith(mf.LDM_UNET_PREFIX):
                sds["unet"][diff_key] = t
            elif ldm_key.startswith(mf.LDM_VAE_PREFIX):
                want = vae.state_dict()[diff_key].shape
                sds["vae"][diff_key] = t.reshape(want)
            else:
                sds["clip"][diff_key] = t
    unet.load_state_dict(sds["unet"])
    vae.load_state_dict(sds["vae"])
    clip_sd = {k.removeprefix("text_model.") if not hasattr(clip, "text_model") else k: v for k, v in sds["clip"].items()}
    clip.load_state_dict(clip_sd, strict=False)
    for m in (clip, unet, vae):
        m.eval()
    return clip, unet, vae, scale


PARITY_CASE = {"prompt": "a green square on a white background, bottom right", "negative": "", "seed": 7,
               "steps": 20, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal"}


def write_parity(clip, unet, vae, scale):
    """The reference for tests/pipelines/demo_model.rs: one prompt's final latent and decoded picture (0..1),
    computed from the written f16 file in f32 as ComfyUI's KSampler would."""
    c = PARITY_CASE
    _, x, img = generate(clip, unet, vae, scale, c["prompt"], c["seed"], c["steps"], c["cfg"], c["negative"],
                         latent=True)
    out = OUT_PATHS["parity"]
    mf.save_st({"latent": x.float(), "image": img.float()}, out, {k: str(v) for k, v in c.items()})
    log(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--vae-steps", type=int, default=2500)
    ap.add_argument("--diffusion-steps", type=int, default=9000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT_PATHS["out"], help="the checkpoint to write (or, with --eval-only, read)")
    ap.add_argument("--parity", type=Path, default=OUT_PATHS["parity"], help="the parity fixture to write")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    OUT_PATHS["out"], OUT_PATHS["parity"] = args.out, args.parity

    if args.eval_only:
        clip, unet, vae, scale = load_checkpoint()
        write_parity(clip, unet, vae, scale)
        print(json.dumps(evaluate(clip, unet, vae, scale)))
        return

    t0 = time.time()
    rng = np.random.default_rng(SEED)
    images, captions = dataset(args.images, rng)
    tok = Tokenizer()
    Tokenizer.empty_ids = tok("")
    tokens = torch.tensor([tok(c) for c in captions])
    log(f"{len(images)} pictures drawn")

    clip, unet, vae = build()
    log(f"params: clip {sum(p.numel() for p in clip.parameters())}, unet {sum(p.numel() for p in unet.parameters())}, "
        f"vae {sum(p.numel() for p in vae.parameters())}")
    train_vae(vae, images, args.vae_steps, 16, 1e-3)
    latents = encode_all(vae, images)
    scale = 1.0 / latents.std().item()
    log(f"latent scale {scale:.5f}")
    train_diffusion(clip, unet, latents * scale, tokens, args.diffusion_steps, 64, 1e-3)

    info = {
        "script": "assets/demo/train_demo.py",
        "seed": SEED,
        "images": args.images,
        "vae_steps": args.vae_steps,
        "diffusion_steps": args.diffusion_steps,
        "torch": torch.__version__,
        "minutes": round((time.time() - t0) / 60, 1),
    }
    save(clip, unet, vae, scale, info)
    clip, unet, vae, scale = load_checkpoint()
    write_parity(clip, unet, vae, scale)
    log(f"accuracy from the f16 file: {json.dumps(evaluate(clip, unet, vae, scale))}")


if __name__ == "__main__":
    main()
