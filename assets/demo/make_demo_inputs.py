#!/usr/bin/env python3
"""The input pictures of the example graphs that start from a picture (img2img, inpaint, vae_tiled,
plugin_demo), drawn exactly as the demo model's training pictures are (train_demo.py's `draw`), so
the demo model knows what it sees. Deterministic: the same bytes on every run.

    /work/pyenv/bin/python assets/demo/make_demo_inputs.py            # rewrites the PNGs below
    /work/pyenv/bin/python assets/demo/make_demo_inputs.py --check    # compares with them

- `green_square.png`: a green square on a yellow background, center (64x64, RGB).
- `inpaint_hole.png`: a white square on a black background, bottom right, with a transparent hole
  over the top-left quadrant (RGBA; LoadImage's mask is 1 - alpha, so the hole is what inpainting
  repaints).
- `top_left_mask.png`: white over the same quadrant, black elsewhere (a painted mask for
  ImageToMask).
"""

import argparse
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def load_train_demo():
    spec = importlib.util.spec_from_file_location("train_demo", HERE / "train_demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def to_u8(img):
    """[3, H, W] in -1..1 -> [H, W, 3] uint8, rounded."""
    return np.clip(np.rint((img.transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def pictures():
    td = load_train_demo()
    square = to_u8(td.draw("green", "square", "yellow", "center", (0.0, 0.0), 1.0))
    base = to_u8(td.draw("white", "square", "black", "bottom right", (0.0, 0.0), 1.0))
    quadrant = np.zeros((td.SIZE, td.SIZE), bool)
    quadrant[: td.SIZE // 2, : td.SIZE // 2] = True
    alpha = np.where(quadrant, 0, 255).astype(np.uint8)
    hole = np.dstack([base, alpha])
    mask = np.repeat(np.where(quadrant, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    return {
        "green_square.png": Image.fromarray(square, "RGB"),
        "inpaint_hole.png": Image.fromarray(hole, "RGBA"),
        "top_left_mask.png": Image.fromarray(mask, "RGB"),
    }


def png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = ap.parse_args()
    bad = 0
    for name, img in pictures().items():
        path = HERE / name
        if args.check:
            same = path.exists() and np.array_equal(np.asarray(Image.open(path)), np.asarray(img))
            print(f"{name}: {'same' if same else 'DIFFERS'}")
            bad += not same
        else:
            path.write_bytes(png_bytes(img))
            print(f"wrote {path}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
