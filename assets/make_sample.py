"""Draws the pictures the example graphs load.

- sample.png: a sky gradient, a sun, two hills and a lake, 160x120 RGB.
- sample_inpaint.png: the same with the sun cut out (alpha 0 in a disc, RGB
  grey there), 160x120 RGBA: LoadImage's mask (1 - alpha) marks the hole.
- sample_mask.png: that disc painted white on black, 160x120 RGB, for
  ImageToMask.

Pure standard library (no PIL), so it runs anywhere. Run: python3 assets/make_sample.py
"""
import math
import struct
import zlib
from pathlib import Path

W, H = 160, 120


def pixel(x, y):
    # Sky: blue to pale orange towards the horizon.
    t = y / (H * 0.6)
    r, g, b = 70 + 170 * t, 120 + 90 * t, 220 - 80 * t
    # Sun.
    if math.hypot(x - 112, y - 34) < 14:
        r, g, b = 255, 214, 90
    # Hills: two sine ridges.
    if y > 70 + 10 * math.sin(x / 17.0):
        r, g, b = 60, 140 - (y - 60), 70
    if y > 82 + 6 * math.sin(x / 9.0 + 1.3):
        r, g, b = 40, 105, 55
    # Lake in the front, with a stripe of sun reflection.
    if y > 100:
        r, g, b = 40, 90, 160
        if abs(x - 112) < 6 and (y // 3) % 2 == 0:
            r, g, b = 230, 200, 120
    return bytes(max(0, min(255, int(v))) for v in (r, g, b))


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def in_hole(x, y):
    # A disc a little larger than the sun, so the repainted area takes all of it.
    return math.hypot(x - 112, y - 34) < 18


def rgba(x, y):
    return bytes([128, 128, 128, 0]) if in_hole(x, y) else pixel(x, y) + b"\xff"


def mask(x, y):
    return b"\xff\xff\xff" if in_hole(x, y) else b"\x00\x00\x00"


def write_png(name, px, color_type):
    """8-bit PNG; color_type 2 is RGB, 6 is RGBA."""
    raw = b"".join(b"\x00" + b"".join(px(x, y) for x in range(W)) for y in range(H))
    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, color_type, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9))
    png += chunk(b"IEND", b"")
    Path(__file__).with_name(name).write_bytes(png)


write_png("sample.png", pixel, 2)
write_png("sample_inpaint.png", rgba, 6)
write_png("sample_mask.png", mask, 2)
