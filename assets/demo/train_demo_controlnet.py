#!/usr/bin/env python3
"""Trains sdgraph's demo ControlNets for the demo model (sdgraph-demo.safetensors): one steered by
Canny edge maps, one by scribbles (thick wobbly outlines), and writes them as ControlNet files in
the single-file layout users download (`control_model.*`), f16:

    assets/demo/sdgraph-demo-controlnet-canny.safetensors
    assets/demo/sdgraph-demo-controlnet-scribble.safetensors

and the two control pictures the example graphs load (graphs/controlnet_canny.ron,
graphs/controlnet_scribble.ron):

    assets/demo/canny_control.png      a picture drawn like the demo pictures (see CONTROL_PICTURES)
    assets/demo/scribble_control.png   a scribble: black strokes on white paper

Run (CPU, one thread; RESULT below gives the time):

    /work/pyenv/bin/python assets/demo/train_demo_controlnet.py               # train, write, measure
    /work/pyenv/bin/python assets/demo/train_demo_controlnet.py --eval-only   # re-measure the files
    /work/pyenv/bin/python assets/demo/train_demo_controlnet.py --pictures    # rewrite the PNGs only

Environment: tests/fixtures/requirements.txt. Nothing is downloaded.

Data: the demo model's own training pictures (train_demo.py's `dataset` with its SEED: 6,000
pictures of one shape in one of five places, jittered and scaled), each with its control map:
  - canny: the Canny edges of the picture (quantised to 8 bits, as a PNG gives it) as sdgraph's
    `Canny` node computes them (tests/fixtures/controlnet/make_controlnet_fixture.py's `canny_f64`,
    which the Rust node equals pixel for pixel), thresholds CANNY_THRESHOLDS (low enough that every
    colour pair but red/blue squares has its outline);
  - scribble: the shape's outline 2-4 pixels thick, through a smooth random warp (a hand's wobble),
    white on black: what sdgraph's `BinaryPreprocessor` makes of dark strokes on white paper.
The caption is the picture's own, changed so that the map has to win: in 10% the empty prompt (the
negative prompt at sampling also gets the control, as ControlNetApplyAdvanced gives it); otherwise
the place is the true one in 40%, left out in 30%, another place in 30%, and the shape word is
another shape in 25%. Colours are always the picture's: the map carries no colour, the prompt does.

The network: diffusers' `ControlNetModel.from_unet(demo UNet, conditioning_embedding_out_channels=
EMBEDDING_CHANNELS)`, i.e. SD 1.x's ControlNet, narrow: a copy of the demo UNet's encoder (conv_in,
time embedding, both down blocks with cross-attention, the middle block; 2 levels, 32 and 64
channels, 4 heads, 8 groups), the hint embedding (8 3x3 convs, three of stride 2: 64x64 pixels ->
the 8x8 latent), one zero conv per skip connection (4) and one after the middle block, zero convs
and the embedding's last conv at zero. ControlNet training as in the paper: the UNet, text encoder
and VAE frozen; the ControlNet's residuals added to the UNet's skips and middle block; the demo
model's DDPM noise-prediction loss (SD 1.x schedule, epsilon), weighted 1 + min(1/SNR, 5) and with
half the timesteps drawn from 500..999 (see `loss_weights`: the layout is decided at high noise,
where plain epsilon-loss barely sees it. Trials, not a controlled comparison: plain loss, 300 steps at
batch 48, lr 5e-4 moved no shape; this loss, 600 steps at batch 16, lr 1e-3 put 10 of 10 in place);
AdamW, lr 1e-3 with 5% warm-up and cosine decay, batch 16, gradient norm clipped at 1. Canny: 2,000
steps (5 passes over the pictures). The scribble ControlNet starts from the trained canny one: 800
steps at lr 5e-4. 2.2% of the Canny maps are empty (red/blue squares), scribbles are never empty.

Measured (`measure_controlnet`, on the f16 files): 30 control pictures drawn from EVAL_SEED, each
with two prompts of random colours and shape word: one naming another place than the picture's, one
naming none. Each is generated as graphs/txt2img.ron does (euler, normal, 20 steps, cfg 5, seed =
the case's number; train_demo.py's `generate`) with the ControlNet at strength 1 and without, and
measured with train_demo.py's `measure` (the rules of tests/pipelines/demo_model.rs): the shape is
"in place" when its centroid's nearest place is the control picture's; IoU is the generated shape's
pixels against the control picture's shape; "colours" = shape and background are the prompt's;
"shape from map / prompt": where the prompt names another shape, whether the result is nearest (IoU)
the picture's shape or the prompt's, each drawn where the picture's is (chance 1/3 each; the demo
model's circles and squares are soft and differ little, so mostly a triangle is told apart).

Seed: SEED for the ControlNet's training batches, train_demo.SEED for the pictures, EVAL_SEED for
the measurement. Deterministic on one thread (torch.use_deterministic_algorithms): two short runs
(--canny-steps 40 --scribble-steps 20 --eval-count 0 --out-dir ...) wrote byte-identical files.

RESULT (the run that wrote the files: torch 2.11.0 on the CPU, one thread on a shared 2-core machine,
18.3 minutes wall in all: 1 minute drawing/encoding/maps, canny 10.2 minutes, scribble 3.3 minutes,
2 minutes per measurement; 530,728 parameters, 1.03 MiB each in f16). Over the 30 control pictures:

                                  in place   IoU    colours  shape from map / prompt (18 cases)
  canny,    other place named       97%     0.73    100%        72% / 11%
            (no ControlNet)          0%     0.01     97%
  canny,    no place named         100%     0.75    100%        56% / 22%
            (no ControlNet)         23%     0.15     97%
  scribble, other place named      100%     0.74    100%        78% /  6%
  scribble, no place named         100%     0.75    100%        67% / 22%
  (the scribble's "no ControlNet" rows are the canny's: the same prompts and seeds)
"""

import argparse
import importlib.util
import json
import logging
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import train_demo as td  # noqa: E402  (the pictures, captions, tokenizer, model, sampler, measure)


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# canny_f64 (sdgraph's Canny node, in float64) and the ControlNet key mapping (diffusers -> LDM).
mcf = _load("make_controlnet_fixture", ROOT / "tests" / "fixtures" / "controlnet" / "make_controlnet_fixture.py")

SEED = 20261207
EVAL_SEED = 777
CANNY_THRESHOLDS = (0.05, 0.1)  # low, high: the graphs' Canny node uses the same
EMBEDDING_CHANNELS = (8, 16, 32, 32)  # SD 1.x: (16, 32, 96, 256)
OUT = {
    "canny": "sdgraph-demo-controlnet-canny.safetensors",
    "scribble": "sdgraph-demo-controlnet-scribble.safetensors",
}
OUT_DIR = [HERE]  # --out-dir
# The example graphs' control pictures: (file, map kind, the picture drawn: colour, shape, background, place).
CONTROL_PICTURES = {
    "canny": ("canny_control.png", ("yellow", "triangle", "black", "bottom right")),
    "scribble": ("scribble_control.png", ("black", "square", "white", "top right")),
}
PLACE_NAMES = list(td.PLACES)
MAX_EXTRA_WEIGHT = 5.0  # see loss_weights
HIGH_T_FRACTION = 0.5  # of the timesteps drawn from 500..999 instead of 0..999


def log(msg):
    td.log(msg)


# ------------------------------------------------------------------------------------------
# Control maps
# ------------------------------------------------------------------------------------------


def to_u8(img):
    """train_demo's picture ([3, H, W] in -1..1) -> [H, W, 3] uint8, as a PNG stores it."""
    return np.clip(np.rint((img.transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def canny_map(u8):
    """The Canny edges of an 8-bit picture, as sdgraph's Canny node computes them: [H, W] of 0/1."""
    _, edges = mcf.canny_f64(u8.astype(np.float64) / 255.0, *CANNY_THRESHOLDS)
    return edges.astype(np.uint8)


def shape_mask(u8, colour, background):
    """The pixels at least half covered by the shape (the pictures are anti-aliased blends of two colours)."""
    fg = np.array(td.COLOURS[colour], np.float64)
    bg = np.array(td.COLOURS[background], np.float64)
    d = fg - bg
    cover = ((u8.astype(np.float64) - bg) @ d) / (d @ d)
    return cover > 0.5


def _shift(m, dy, dx):
    out = np.zeros_like(m)
    h, w = m.shape
    src = m[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = src
    return out


def _dilate(m, r):
    out = m.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= r * r + r:
                out |= _shift(m, dy, dx)
    return out


def scribble_map(mask, rng):
    """A hand-drawn-like outline of `mask`: warped by a smooth random field (up to ~2 px), then the
    band between a dilation and an erosion (2-4 px thick): [H, W] of 0/1."""
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    amp = rng.uniform(0.5, 2.0)
    disp = []
    for _ in range(2):
        f = rng.uniform(0.05, 0.25, 2)
        ph = rng.uniform(0, 2 * np.pi, 2)
        disp.append(amp * 0.5 * (np.sin(f[0] * xx + ph[0]) + np.sin(f[1] * yy + ph[1])))
    sy = np.clip(np.rint(yy + disp[0]), 0, h - 1).astype(int)
    sx = np.clip(np.rint(xx + disp[1]), 0, w - 1).astype(int)
    warped = mask[sy, sx]
    outer, inner = (1, 1) if rng.random() < 0.5 else (2, 1)
    band = _dilate(warped, outer) & _dilate(~warped, inner)
    return band.astype(np.uint8)


def parse_caption(text):
    """train_demo's caption -> (colour, shape, background, place)."""
    head, place = text.split(", ")
    words = head.split()
    return words[1], words[2], words[5], place


def control_maps(kind, pictures_u8, captions, rng):
    out = np.empty((len(pictures_u8), td.SIZE, td.SIZE), np.uint8)
    for i, (u8, cap) in enumerate(zip(pictures_u8, captions)):
        if kind == "canny":
            out[i] = canny_map(u8)
        else:
            colour, _, background, _ = parse_caption(cap)
            out[i] = scribble_map(shape_mask(u8, colour, background), rng)
    return out


def control_picture(kind):
    """The example graph's input picture: for canny a demo picture, for scribble its outline as black
    strokes on white (uint8 [64, 64, 3])."""
    _, (colour, shape, background, place) = CONTROL_PICTURES[kind]
    u8 = to_u8(td.draw(colour, shape, background, place, (0.0, 0.0), 1.0))
    if kind == "canny":
        return u8
    strokes = scribble_map(shape_mask(u8, colour, background), np.random.default_rng(SEED + 5))
    return np.repeat((255 * (1 - strokes)).astype(np.uint8)[..., None], 3, axis=2)


def write_pictures():
    from PIL import Image

    for kind, (name, _) in CONTROL_PICTURES.items():
        path = OUT_DIR[0] / name
        Image.fromarray(control_picture(kind), "RGB").save(path, optimize=False, compress_level=9)
        log(f"wrote {path}")


# ------------------------------------------------------------------------------------------
# ControlNet
# ------------------------------------------------------------------------------------------


def build_controlnet(unet):
    from diffusers import ControlNetModel

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    torch.manual_seed(SEED)  # from_unet draws the embedding's convs; the rest is copied or zero
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=EMBEDDING_CHANNELS)


class Controlled(torch.nn.Module):
    """The UNet with a ControlNet's residuals, called as train_demo's `generate` calls the UNet; the
    control goes to every batch item (positive and negative), as ControlNetApplyAdvanced does."""

    def __init__(self, unet, cn, hint, strength=1.0):
        super().__init__()
        self.unet, self.cn, self.hint, self.strength = unet, cn, hint, strength

    def forward(self, x, t, ctx):
        hint = self.hint.expand(x.shape[0], -1, -1, -1)
        down, mid = self.cn(x, t, encoder_hidden_states=ctx, controlnet_cond=hint,
                            conditioning_scale=self.strength, return_dict=False)
        return self.unet(x, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid)


def hint_tensor(maps):
    """[N, H, W] of 0/1 -> [N, 3, H, W] float (pixels in 0..1, as the ControlNet takes them)."""
    return torch.from_numpy(maps).float().unsqueeze(1).expand(-1, 3, -1, -1)


def training_caption(colour, shape, background, place, rng):
    """The picture's caption, changed so that the control map has to decide shape and place."""
    if rng.random() < 0.1:
        return ""
    if rng.random() < 0.25:
        shape = rng.choice([s for s in td.SHAPES if s != shape])
    u = rng.random()
    if u >= 0.4:
        place = rng.choice([p for p in PLACE_NAMES if p != place]) if u < 0.7 else None
    return prompt(colour, shape, background, place)


def prompt(colour, shape, background, place):
    """train_demo's caption, or without its place when `place` is None."""
    text = td.caption(colour, shape, background, place or PLACE_NAMES[0])
    return text if place else text.rsplit(", ", 1)[0]


def loss_weights(acp, t):
    """Per-sample weights of the noise-prediction loss: 1 + min(1 / SNR, MAX_EXTRA_WEIGHT). Where the
    noise is strong (t high) the picture's layout is decided but an error in it moves the predicted
    noise little; these weights make those steps count (a partial x0-loss), so the control's
    residuals get a useful gradient early."""
    a = acp[t]
    return 1.0 + ((1 - a) / a).clamp(max=MAX_EXTRA_WEIGHT)


def train(cn, unet, clip, latents, maps, parts, steps, batch, lr, seed, name):
    tok = td.Tokenizer()
    ids_cache = {}

    def ids(text):
        if text not in ids_cache:
            ids_cache[text] = tok(text)
        return ids_cache[text]

    opt = torch.optim.AdamW(cn.parameters(), lr=lr, weight_decay=0.0)
    sched = td.warmup_cosine(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    acp = td.alphas_cumprod()
    cn.train()
    running = []
    for step in range(steps):
        idx = torch.randint(len(latents), (batch,), generator=gen)
        x0 = latents[idx]
        hint = hint_tensor(maps[idx.numpy()])
        texts = [training_caption(*parts[i], rng) for i in idx.tolist()]
        with torch.no_grad():
            ctx = clip(torch.tensor([ids(t) for t in texts])).last_hidden_state
        t = torch.randint(1000, (batch,), generator=gen)
        high = torch.rand(batch, generator=gen) < HIGH_T_FRACTION
        t = torch.where(high, 500 + t // 2, t)
        noise = torch.randn(x0.shape, generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        down, mid = cn(xt, t, encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False)
        pred = unet(xt, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        loss = (loss_weights(acp, t) * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(cn.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"{name} {step}/{steps} loss {np.mean(running):.4f}")
            running = []
    cn.eval()


# ------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------


def eval_cases(count=30):
    """Control pictures (random, from EVAL_SEED) and, per picture, a prompt naming another place and
    one naming none, with other colours and shape words than the picture's (random: the shape word
    is the picture's shape in about a third)."""
    rng = np.random.default_rng(EVAL_SEED)
    names = list(td.COLOURS)
    cases = []
    for _ in range(count):
        colour, background = rng.choice(names, 2, replace=False)
        shape = td.SHAPES[rng.integers(3)]
        place = PLACE_NAMES[rng.integers(5)]
        jitter, size = rng.uniform(-3, 3, 2), rng.uniform(0.85, 1.15)
        u8 = to_u8(td.draw(colour, shape, background, place, jitter, size))
        pc, pb = rng.choice(names, 2, replace=False)
        ps = td.SHAPES[rng.integers(3)]
        other = rng.choice([p for p in PLACE_NAMES if p != place])
        # Each shape drawn where and as large as the picture's: which one the result matches best.
        templates = {s: shape_mask(to_u8(td.draw(colour, s, background, place, jitter, size)), colour, background)
                     for s in td.SHAPES}
        cases.append({"picture": u8, "place": place, "shape": shape, "mask": templates[shape],
                      "templates": templates, "prompt shape": ps, "colours": (pc, pb),
                      "prompts": {"other place": prompt(pc, ps, pb, other), "no place": prompt(pc, ps, pb, None)}})
    return cases


def generated_mask(img, background):
    labels = np.array([[td.nearest_colour(img[y, x]) for x in range(img.shape[1])] for y in range(img.shape[0])])
    return labels != background


def iou(a, b):
    return float((a & b).sum() / max(1, (a | b).sum()))


@torch.no_grad()
def measure_controlnet(clip, unet, vae, scale, cn, kind, count=30):
    """Per prompt kind, with the ControlNet (strength 1) and without: how often the shape's centroid is
    at the control picture's place ("in place"), the mean IoU of the shape with the control picture's,
    how often both colours are the prompt's; with the ControlNet also, where the prompt names another
    shape than the picture's, how often the result is nearest (IoU) the picture's shape drawn there
    ("shape from map") rather than the prompt's ("shape from prompt"). Circles and squares of the demo
    model's soft kind differ little, so only a triangle against the others is a clear call."""
    tok = td.Tokenizer()
    rng = np.random.default_rng(EVAL_SEED + 1)
    res = {}
    for k, case in enumerate(eval_cases(count)):
        m = canny_map(case["picture"]) if kind == "canny" else scribble_map(case["mask"], rng)
        hint = hint_tensor(m[None])
        for which, text in case["prompts"].items():
            for label, model in (("controlnet", Controlled(unet, cn, hint)), ("none", unet)):
                img = td.generate(clip, model, vae, scale, text, seed=k, tok=tok)
                colour, background, place = td.measure(img)
                mask = generated_mask(img, background)
                r = res.setdefault(f"{which}, {label}", {"in place": 0, "iou": 0.0, "colours": 0, "n": 0})
                r["in place"] += place == case["place"]
                r["iou"] += iou(mask, case["mask"])
                r["colours"] += (colour, background) == tuple(case["colours"])
                r["n"] += 1
                if label == "controlnet" and case["prompt shape"] != case["shape"]:
                    best = max(td.SHAPES, key=lambda s: iou(mask, case["templates"][s]))
                    r["shape from map"] = r.get("shape from map", 0) + (best == case["shape"])
                    r["shape from prompt"] = r.get("shape from prompt", 0) + (best == case["prompt shape"])
                    r["other shape word"] = r.get("other shape word", 0) + 1
    for r in res.values():
        n = r.pop("n")
        for key in ("in place", "iou", "colours"):
            r[key] = round(r[key] / n, 3)
        if "other shape word" in r:
            r["shape from map"] = round(r["shape from map"] / r["other shape word"], 3)
            r["shape from prompt"] = round(r["shape from prompt"] / r["other shape word"], 3)
        r["cases"] = n
    return res


# ------------------------------------------------------------------------------------------
# The files
# ------------------------------------------------------------------------------------------


def ldm_names(cn):
    cfg = dict(cn.config)
    return {k: "control_model." + mcf.controlnet_key_to_ldm(k, cfg) for k in cn.state_dict()}


def save_f16(tensors, path, metadata):
    """safetensors with the header in a fixed order (the same bytes on every run)."""
    header, blobs, offset = {"__metadata__": dict(sorted(metadata.items()))}, [], 0
    for name in sorted(tensors):
        data = tensors[name].detach().contiguous().half().numpy().astype("<f2").tobytes()
        shape = list(tensors[name].shape)
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def save(cn, kind, info):
    names = ldm_names(cn)
    tensors = {names[k]: v for k, v in cn.state_dict().items()}
    assert len(tensors) == len(names), "two diffusers keys map to one LDM key"
    meta = {
        "format": "pt",
        "sdgraph.unet.heads": str(td.UNET_HEADS),
        "sdgraph.norm_groups": str(td.NORM_GROUPS),
        "sdgraph.demo": json.dumps(info, sort_keys=True),
    }
    path = OUT_DIR[0] / OUT[kind]
    save_f16(tensors, path, meta)
    log(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB, {sum(v.numel() for v in tensors.values())} parameters)")


def load(unet, kind):
    """A written file back into a diffusers ControlNetModel in f32."""
    from safetensors import safe_open

    cn = build_controlnet(unet)
    names = ldm_names(cn)
    with safe_open(str(OUT_DIR[0] / OUT[kind]), "pt") as f:
        cn.load_state_dict({k: f.get_tensor(v).float() for k, v in names.items()})
    return cn.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--pictures", action="store_true", help="only write the control pictures")
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--canny-steps", type=int, default=2000)
    ap.add_argument("--scribble-steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="the canny run's; the scribble fine-tune takes half")
    ap.add_argument("--eval-count", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", type=Path, default=HERE, help="where the files go (or, with --eval-only, are read)")
    args = ap.parse_args()
    OUT_DIR[0] = args.out_dir
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    if args.pictures:
        write_pictures()
        return
    clip, unet, vae, scale = td.load_checkpoint()
    for m in (clip, unet, vae):
        m.requires_grad_(False)
    if args.eval_only:
        for kind in OUT:
            res = measure_controlnet(clip, unet, vae, scale, load(unet, kind), kind, args.eval_count)
            log(f"{kind}: {json.dumps(res)}")
        return

    t0 = time.time()
    images, captions = td.dataset(args.images, np.random.default_rng(td.SEED))
    pictures = np.stack([to_u8(im) for im in images.numpy()])
    parts = [parse_caption(c) for c in captions]
    with torch.no_grad():
        x = torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        latents = td.encode_all(vae, x) * scale
    log(f"{len(pictures)} pictures drawn and encoded")
    maps = {kind: control_maps(kind, pictures, captions, np.random.default_rng(SEED + 3)) for kind in OUT}
    log(f"control maps: canny {maps['canny'].reshape(len(pictures), -1).sum(1).mean():.0f} edge pixels a picture, "
        f"{(maps['canny'].reshape(len(pictures), -1).sum(1) == 0).mean():.1%} without; "
        f"scribble {maps['scribble'].reshape(len(pictures), -1).sum(1).mean():.0f} stroke pixels")

    cn = build_controlnet(unet)
    log(f"ControlNet parameters: {sum(p.numel() for p in cn.parameters())}")
    results = {}
    steps = {"canny": args.canny_steps, "scribble": args.scribble_steps}
    for i, kind in enumerate(OUT):
        t1 = time.time()
        lr = args.lr if kind == "canny" else args.lr / 2
        train(cn, unet, clip, latents, maps[kind], parts, steps[kind], args.batch, lr, SEED + 10 * i, kind)
        info = {
            "script": "assets/demo/train_demo_controlnet.py",
            "seed": SEED,
            "images": args.images,
            "map": kind,
            "canny_thresholds": list(CANNY_THRESHOLDS) if kind == "canny" else None,
            "steps": steps[kind],
            "from": "the demo UNet's encoder" if kind == "canny" else "the canny ControlNet",
            "batch": args.batch,
            "lr": lr,
            "torch": torch.__version__,
            "minutes": round((time.time() - t1) / 60, 1),
        }
        save(cn, kind, info)
        if args.eval_count:
            results[kind] = measure_controlnet(clip, unet, vae, scale, load(unet, kind), kind, args.eval_count)
            log(f"{kind} from the f16 file: {json.dumps(results[kind])}")
    write_pictures()
    log(f"done in {(time.time() - t0) / 60:.1f} minutes")


if __name__ == "__main__":
    main()
