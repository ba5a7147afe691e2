#!/usr/bin/env python3
"""Trains sdgraph's demo upscaler: a small SRVGGNetCompact x4 (the architecture of Real-ESRGAN's
realesr-general-x4v3, only narrow) on pictures of coloured shapes drawn like the demo model's,
and writes it in f16 in the key layout Real-ESRGAN's files use (body.N), so sdgraph loads it as
any upscale model:

    assets/demo/sdgraph-demo-upscaler-x4.safetensors

Run (CPU, one thread; RESULT below gives the time):

    /work/pyenv/bin/python assets/demo/train_demo_upscaler.py              # train, write, measure
    /work/pyenv/bin/python assets/demo/train_demo_upscaler.py --eval-only  # re-measure the written file

Environment: tests/fixtures/requirements.txt (torch, numpy, safetensors). Nothing is downloaded.

Data: the demo model's pictures (train_demo.py's `random_picture` and `draw`: one circle, square
or triangle in one of six colours on a background of another, in one of five places, jittered
and scaled), drawn at 256x256 as the high-resolution targets (the same geometry in 4x the
pixels, anti-aliased), stored as 8-bit. The low-resolution inputs, 64x64, are made from them on
the fly by a realistic degradation: half the time a Gaussian blur first (sigma 0.3..5 target
pixels, up to the softness of the demo model's own pictures), then a 4x downscale by area
averaging (which is what a 64x64 demo picture is: train_demo.py draws at 4x and box-filters) or
by antialiased bicubic or bilinear filtering, then rounding to 8 bits. Training takes 24x24
input crops (96x96 targets), nine in ten placed over a stretch of the shape's outline (flat areas
are exact already: the network adds a correction to nearest upsampling). Held-out pictures for
the measurement come from a second random stream.

Training: MSE loss (what PSNR measures; L1 learnt more slowly here), Adam at 3e-3, 5% warm-up
then cosine decay, 16 crops a step, seed SEED; deterministic on one CPU thread (two short runs wrote
the same bytes). Every PReLU starts at slope 1, so the network starts linear. The network
(`make_upscale_fixtures.SRVGGNetCompact`, basicsr's definition, checked there against
spandrel's): y = pixel_shuffle(body(x), 4) + nearest_upsample(x, 4), body = conv 3->F, PReLU,
(conv F->F, PReLU) x N, conv F->48, with F = 32 and N = 4 (a receptive radius of 6 input pixels).

The script also writes the picture graphs/upscale.ron upscales and its reference:

    tests/fixtures/demo/shapes-256.png a demo picture (SAMPLE, not one of the training pictures)
                                       drawn at 256x256: the reference tests/pipelines/upscale.rs
                                       measures sdgraph's output against
    assets/demo/shapes-64.png          the same, area-downscaled to 64x64

Result of the run that wrote the shipped file (torch 2.11 CPU, one thread, on 2 cores shared with
other work): 800 pictures, 5,000 steps of 16 crops, 8.5 minutes of training (8.6 in all; 12.8 in
a busier hour). SRVGGNetCompact x4, 32 features, 4 body convs: 51,920 parameters, 103 KiB in f16.
Mean PSNR over 100 held-out pictures (256x256, against the drawing), from the f16 file:

    inputs made by                        model     bicubic   nearest
    area averaging                        40.33     34.38     32.05   dB
    antialiased bicubic                   40.34     34.40     31.93   dB
    blur (sigma 4 target px), area        38.33     29.92     29.30   dB

and on the shipped picture, saved as 8-bit as sdgraph's SaveImage does: model 39.11, bicubic
32.26 dB. (The previous run, blurring only up to sigma 1.2, got 40.90 / 41.03 on the first two
rows but 30.93 on the blurred one: it left the demo model's soft pictures soft.)
"""

import argparse
import json
import math
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import train_demo as td  # noqa: E402  (the demo pictures: random_picture, draw)
from make_upscale_fixtures import SRVGGNetCompact  # noqa: E402  (basicsr's network)

SEED = 20261207
SCALE = 4
LR = td.SIZE  # 64: the demo model's picture size
HR = LR * SCALE
NUM_FEAT = 32
NUM_CONV = 4
# Half the inputs are blurred first, by a Gaussian of sigma in this range (target pixels): up to
# 1.25 input pixels, as soft as the edges of the demo model's own pictures, which
# graphs/hires_fix_model.ron enlarges.
BLUR = (0.3, 5.0)
OUT = HERE / f"sdgraph-demo-upscaler-x{SCALE}.safetensors"
SAMPLE_LR = HERE / "shapes-64.png"
SAMPLE_HR = ROOT / "tests" / "fixtures" / "demo" / f"shapes-{HR}.png"
# The shipped sample: a picture the demo model could draw ("a yellow triangle on a blue
# background, center"), slightly off the pixel grid so that no edge is aligned with it.
SAMPLE = ("yellow", "triangle", "blue", "center", np.array([0.4, -0.3]), 1.1)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------


def draw_hr(desc):
    """A picture drawn at HR x HR, as uint8 [3, HR, HR] (what a PNG of it holds)."""
    x = (td.draw(*desc, size=HR) + 1.0) * 127.5
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def hr_pictures(count, rng):
    return torch.from_numpy(np.stack([draw_hr(td.random_picture(rng)) for _ in range(count)]))


def to_u8_levels(x):
    return (x.clamp(0, 1) * 255).round() / 255


def area_down(hr):
    """4x area downscale (torch's `area`, sdgraph's and ComfyUI's), rounded to 8 bits."""
    return to_u8_levels(F.avg_pool2d(hr, SCALE))


def gaussian_blur(x, sigma):
    r = math.ceil(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t * t) / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def degrade(hr, gen):
    """One [1, 3, HR, HR] picture in 0..1 -> its [1, 3, LR, LR] input: maybe blurred, downscaled
    by area, antialiased bicubic or antialiased bilinear, rounded to 8 bits."""
    if torch.rand((), generator=gen) < 0.5:
        hr = gaussian_blur(hr, BLUR[0] + (BLUR[1] - BLUR[0]) * torch.rand((), generator=gen).item())
    k = torch.randint(3, (), generator=gen).item()
    if k == 0:
        return area_down(hr)
    mode = "bicubic" if k == 1 else "bilinear"
    return to_u8_levels(F.interpolate(hr, size=(LR, LR), mode=mode, align_corners=False, antialias=True))


def edges(pictures):
    """Per picture, the input pixels (y, x) whose 4x4 block of the target is not one colour: where
    the shape's outline runs, and all an upscaler has to learn (flat areas are exact already)."""
    out = []
    for p in pictures:
        blocks = p.view(3, LR, SCALE, LR, SCALE).int()
        mixed = (blocks.amax(dim=(2, 4)) != blocks.amin(dim=(2, 4))).any(dim=0)
        out.append(torch.nonzero(mixed))
    return out


def batch(pictures, outlines, size, crop, gen):
    """`size` random (input crop, target crop) pairs: inputs [size, 3, crop, crop]. Nine crops in
    ten hold a stretch of the shape's outline (at a random place in the crop), the rest lie anywhere."""
    xs, ys = [], []
    for i in torch.randint(len(pictures), (size,), generator=gen).tolist():
        hr = pictures[i : i + 1].float() / 255
        lr = degrade(hr, gen)
        oy, ox = torch.randint(LR - crop + 1, (2,), generator=gen).tolist()
        if torch.rand((), generator=gen) < 0.9 and len(outlines[i]):
            ey, ex = outlines[i][torch.randint(len(outlines[i]), (), generator=gen)].tolist()
            dy, dx = torch.randint(crop, (2,), generator=gen).tolist()
            oy, ox = min(max(ey - dy, 0), LR - crop), min(max(ex - dx, 0), LR - crop)
        xs.append(lr[:, :, oy : oy + crop, ox : ox + crop])
        ys.append(hr[:, :, oy * SCALE : (oy + crop) * SCALE, ox * SCALE : (ox + crop) * SCALE])
    return torch.cat(xs), torch.cat(ys)


# ------------------------------------------------------------------------------------------
# Training and measurement
# ------------------------------------------------------------------------------------------


def build():
    """The network, every PReLU starting at slope 1: it starts linear, so it learns the
    interpolation first and the sharpening after (from PyTorch's 0.25 it learnt more slowly)."""
    torch.manual_seed(SEED)
    net = SRVGGNetCompact(3, 3, NUM_FEAT, NUM_CONV, SCALE)
    for m in net.body:
        if isinstance(m, torch.nn.PReLU):
            m.weight.data.fill_(1.0)
    return net


def train(net, pictures, steps, size, crop, lr):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    warm = max(1, steps // 20)

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(SEED + 1)
    outlines = edges(pictures)
    net.train()
    running = None
    for step in range(steps):
        x, y = batch(pictures, outlines, size, crop, gen)
        loss = F.mse_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step}/{steps} mse {running:.3e}")
    net.eval()


def psnr(a, b):
    mse = ((a - b) ** 2).mean().item()
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def bicubic_up(lr):
    """torch's (and sdgraph's, ComfyUI's) bicubic: Keys A=-0.75, half-pixel centres, no antialiasing."""
    return F.interpolate(lr, scale_factor=SCALE, mode="bicubic", align_corners=False).clamp(0, 1)


@torch.no_grad()
def measure(net, pictures):
    """Mean PSNR (dB, over the pictures, each on its whole 256x256) of the model, bicubic and
    nearest against the drawings, for inputs made by area averaging (what demo pictures are), by
    antialiased bicubic downscaling, and by area averaging after a blur of sigma 4 target pixels
    (1 input pixel: about as soft as the demo model's own pictures)."""
    out = {}
    for name, down in (
        ("area", area_down),
        ("bicubic", lambda h: to_u8_levels(F.interpolate(h, size=(LR, LR), mode="bicubic", antialias=True))),
        ("blurred_area", lambda h: area_down(gaussian_blur(h, 4.0))),
    ):
        sums = {"model": 0.0, "bicubic": 0.0, "nearest": 0.0}
        for i in range(len(pictures)):
            hr = pictures[i : i + 1].float() / 255
            lr = down(hr)
            sums["model"] += psnr(net(lr).clamp(0, 1), hr)
            sums["bicubic"] += psnr(bicubic_up(lr), hr)
            sums["nearest"] += psnr(F.interpolate(lr, scale_factor=SCALE, mode="nearest"), hr)
        out[f"{name}_downscaled"] = {k: round(v / len(pictures), 2) for k, v in sums.items()}
    return out


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------


def write_png(path, chw_u8):
    """An 8-bit RGB PNG (standard library only, byte-identical on every run)."""
    c, h, w = chw_u8.shape
    rows = np.ascontiguousarray(chw_u8.transpose(1, 2, 0)).reshape(h, w * c)
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)


@torch.no_grad()
def sample_files(net):
    """Writes the shipped 64x64 picture and its 256x256 reference; returns the PSNRs an 8-bit
    output gets against the reference (SaveImage's quantisation: truncation), i.e. what
    tests/pipelines/upscale.rs measures on sdgraph's output."""
    hr8 = draw_hr(SAMPLE)
    hr = torch.from_numpy(hr8).float()[None] / 255
    lr = area_down(hr)
    lr8 = (lr[0] * 255).round().byte().numpy()
    write_png(SAMPLE_HR, hr8)
    write_png(SAMPLE_LR, lr8)
    log(f"wrote {SAMPLE_LR.relative_to(ROOT)} and {SAMPLE_HR.relative_to(ROOT)}")

    def saved(x):  # SaveImage: np.clip(255. * x, 0, 255).astype(np.uint8)
        return (x.clamp(0, 1) * 255).floor() / 255

    return {
        "model": round(psnr(saved(net(lr)), hr), 2),
        "bicubic": round(psnr(saved(bicubic_up(lr)), hr), 2),
    }


def save(net, info):
    from safetensors.torch import save_file

    sd = {k: v.detach().half().contiguous() for k, v in net.state_dict().items()}
    save_file(sd, str(OUT), {"sdgraph.demo_upscaler": json.dumps(info, sort_keys=True)})
    log(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size / 1024:.0f} KiB, {len(sd)} tensors)")


def load():
    """The written f16 file, back into an f32 network (what sdgraph computes with on CPU adapters)."""
    from safetensors.torch import load_file

    net = build()
    net.load_state_dict({k: v.float() for k, v in load_file(str(OUT)).items()})
    return net.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval-only", action="store_true", help="measure the written file, rewrite the sample PNGs")
    ap.add_argument("--pictures", type=int, default=800, help="training pictures")
    ap.add_argument("--held-out", type=int, default=100, help="pictures to measure on")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=24, help="input crop side (targets are 4x)")
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()
    torch.set_num_threads(1)

    held_out = hr_pictures(args.held_out, np.random.default_rng(SEED + 100))
    if args.eval_only:
        net = load()
    else:
        t0 = time.time()
        pictures = hr_pictures(args.pictures, np.random.default_rng(SEED))
        log(f"{len(pictures)} training pictures drawn at {HR}x{HR}")
        net = build()
        log(f"SRVGGNetCompact x{SCALE}, {NUM_FEAT} features, {NUM_CONV} body convs: "
            f"{sum(p.numel() for p in net.parameters())} parameters")
        train(net, pictures, args.steps, args.batch, args.crop, args.lr)
        info = {
            "script": "assets/demo/train_demo_upscaler.py",
            "seed": SEED,
            "pictures": args.pictures,
            "steps": args.steps,
            "batch": args.batch,
            "crop": args.crop,
            "lr": args.lr,
            "torch": torch.__version__,
        }
        save(net, info)
        log(f"training took {(time.time() - t0) / 60:.1f} minutes")
        net = load()
    result = {"held_out": len(held_out)} | measure(net, held_out) | {"sample_8bit": sample_files(net)}
    log(f"PSNR (dB) from the f16 file: {json.dumps(result)}")


if __name__ == "__main__":
    main()
