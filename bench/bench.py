#!/usr/bin/env python3
"""sdgraph vs diffusers on the same random-weight SD 1.5-shaped model, in one run.

    python3 bench/bench.py [--small] [--sdgraph PATH] [--work DIR] [--runs N] [--profile]

1. makes the model (bench/make_model.py) unless WORK already holds it;
2. writes the inputs (token ids, UNet batch 1 and 2, a latent, an image) to WORK/inputs.safetensors;
3. times diffusers on them (fp16 + SDPA on CUDA, fp32 on CPU): text encoder, UNet at batch 1
   and 2, VAE decode and encode at 512x512 (64x64 with --small), and a 20-step txt2img
   (euler, ComfyUI's "normal" sigmas, cfg 7.5);
4. times sdgraph on the same inputs (`sdgraph bench models ... --graph WORK/txt2img.ron`);
5. checks the outputs agree (cosine similarity > 0.9999) and reports the txt2img picture's PSNR;
6. times a first image from a cold process start for both (`sdgraph run` and a fresh Python);
7. prints the table and, unless --small or --no-results, appends it to bench/RESULTS.md.

Exit status 1 when an output disagrees. See bench/README.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

PROMPT = "a watercolor painting of a red fox in the snow, soft light"
SEED = 42
STEPS = 20
CFG = 7.5
COS_MIN = 0.9999


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------


def device_and_dtype():
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


def sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def comfy_normal_sigmas(steps: int) -> list[float]:
    """ComfyUI's "normal" scheduler on SD 1.x's discrete schedule (as sdgraph's
    nodes/kinds/src/sampling/schedulers.rs): sigma at linspace(999, 0, steps), log-interpolated,
    then 0."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1.0 - betas, dim=0)
    log_sigmas = (((1 - ac) / ac) ** 0.5).float().log().double()
    out = []
    for t in torch.linspace(999, 0, steps, dtype=torch.float64).tolist():
        lo, hi = math.floor(t), math.ceil(t)
        w = t - lo
        out.append(math.exp((1 - w) * log_sigmas[lo].item() + w * log_sigmas[hi].item()))
    return out + [0.0]


def load_pipe(folder: Path, dev, dtype):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=dtype, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)


def txt2img(pipe, size: int, noise: torch.Tensor, steps: int) -> np.ndarray:
    """One picture, [H, W, 3] in 0..1."""
    out = pipe(
        prompt=PROMPT,
        negative_prompt="",
        height=size,
        width=size,
        guidance_scale=CFG,
        sigmas=comfy_normal_sigmas(steps),
        latents=noise.to(pipe.device, pipe.unet.dtype),
        output_type="np",
    )
    return out.images[0]


def initial_noise(size: int) -> torch.Tensor:
    """ComfyUI's (and sdgraph's) noise: torch.randn on the CPU from a generator seeded SEED."""
    return torch.randn((1, 4, size // 8, size // 8), generator=torch.Generator("cpu").manual_seed(SEED))


def txt2img_graph(ckpt: Path, size: int, steps: int) -> str:
    return f"""// Written by bench/bench.py: the txt2img both sides run.
(
    nodes: {{
        "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {json.dumps(str(ckpt))} }}),
        "pos": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": {json.dumps(PROMPT)} }}),
        "neg": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "" }}),
        "empty": (kind: "EmptyLatentImage", params: {{ "width": {size}, "height": {size}, "batch_size": 1 }}),
        "sample": (kind: "KSampler",
            inputs: {{ "model": "ckpt.model", "positive": "pos.conditioning", "negative": "neg.conditioning",
                      "latent_image": "empty.latent" }},
            params: {{ "seed": {SEED}, "steps": {steps}, "cfg": {CFG}, "sampler_name": "euler",
                      "scheduler": "normal", "denoise": 1.0 }}),
        "decode": (kind: "VAEDecode", inputs: {{ "samples": "sample.latent", "vae": "ckpt.vae" }}),
        "save": (kind: "SaveImage", inputs: {{ "images": "decode.image" }}, params: {{ "filename_prefix": "bench" }}),
    }},
)
"""


# ------------------------------------------------------------------------------------------
# Cold start (a child process of this script)
# ------------------------------------------------------------------------------------------


def cold_diffusers(work: Path, size: int, steps: int, out_png: Path) -> None:
    """Import, load, one picture, save: what a user's first diffusers run does."""
    from PIL import Image

    dev, dtype = device_and_dtype()
    pipe = load_pipe(work / "diffusers", dev, dtype)
    img = txt2img(pipe, size, initial_noise(size), steps)
    Image.fromarray((img * 255).round().clip(0, 255).astype(np.uint8)).save(out_png)


# ------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------


def make_inputs(work: Path, pipe, size: int) -> dict:
    """Deterministic inputs; the UNet's context is the reference text encoder's output."""
    from PIL import Image
    from safetensors.torch import save_file

    g = torch.Generator("cpu").manual_seed(7)
    lat = size // 8
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    uncond = pipe.tokenizer("", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        te = pipe.text_encoder.float().cpu()
        cond_ctx = te(ids)[0]
        uncond_ctx = te(uncond)[0]
    img = Image.open(REPO / "assets" / "sample.png").convert("RGB").resize((size, size), Image.BICUBIC)
    image = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None].contiguous()
    inputs = {
        "clip.input_ids": ids.float(),
        "unet.b1.sample": torch.randn((1, 4, lat, lat), generator=g),
        "unet.b1.timestep": torch.tensor([500.0]),
        "unet.b1.context": cond_ctx,
        "unet.b2.sample": torch.randn((2, 4, lat, lat), generator=g),
        "unet.b2.timestep": torch.tensor([500.0, 500.0]),
        "unet.b2.context": torch.cat([uncond_ctx, cond_ctx]),
        "vae.latent": torch.randn((1, 4, lat, lat), generator=g),
        "vae.image": image,
    }
    inputs = {k: v.float().contiguous() for k, v in inputs.items()}
    save_file(inputs, str(work / "inputs.safetensors"))
    return inputs


def time_op(dev, warmup: int, runs: int, fn):
    """(median ms, min ms, peak bytes or None, output of the last call)."""
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        for _ in range(warmup):
            fn()
            sync(dev)
        times, out = [], None
        for _ in range(runs):
            out = None
            t0 = time.perf_counter()
            out = fn()
            sync(dev)
            times.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
    return float(np.median(times)), min(times), peak, out


def run_diffusers(pipe, inputs: dict, dev, dtype, warmup: int, runs: int, size: int, steps: int):
    res, outs = {}, {}

    def put(name, t):
        res[name] = {"ms": t[0], "min_ms": t[1], "peak_bytes": t[2]}
        return t[3]

    x = {k: v.to(dev) for k, v in inputs.items()}
    ids = x["clip.input_ids"].long()
    outs["clip.last_hidden_state"] = put("text_encoder", time_op(dev, warmup, runs, lambda: pipe.text_encoder(ids)[0]))
    for b in (1, 2):
        p = f"unet.b{b}."
        s, t, c = x[p + "sample"].to(dtype), x[p + "timestep"], x[p + "context"].to(dtype)
        outs[p + "out"] = put(f"unet_b{b}", time_op(dev, warmup, runs, lambda: pipe.unet(s, t, encoder_hidden_states=c).sample))
    # The VAE in f32, as sdgraph runs it (SD's VAE overflows f16 at real sizes: diffusers' force_upcast).
    vae32 = copy.deepcopy(pipe.vae).float()
    z = x["vae.latent"]
    outs["vae.decoded"] = put("vae_decode", time_op(dev, warmup, runs, lambda: vae32.decode(z).sample))
    im = x["vae.image"]
    outs["vae.encoded_mean"] = put("vae_encode", time_op(dev, warmup, runs, lambda: vae32.encode(im).latent_dist.mean))
    del vae32
    noise = initial_noise(size)
    image = put("txt2img", time_op(dev, warmup, runs, lambda: txt2img(pipe, size, noise, steps)))
    return res, {k: v.float().cpu() for k, v in outs.items()}, image


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def cold_start(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"cold start failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return secs


def fmt_bytes(b) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="narrow model, 64x64: a smoke run for CPUs")
    ap.add_argument("--sdgraph", default=None, help="the sdgraph binary (default: on PATH, else target/release)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the model, inputs and outputs")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=None, help="timed runs per op (default 10, 2 with --small)")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--size", type=int, default=None,
                    help="picture size (default 512, 64 with --small); e.g. the full-width model at 64 on a CPU")
    ap.add_argument("--profile", action="store_true", help="also print sdgraph's top kernels per network")
    ap.add_argument("--skip-cold", action="store_true", help="skip the cold-start timings")
    ap.add_argument("--results", type=Path, default=None, help="append the table here (default bench/RESULTS.md; never with --small)")
    ap.add_argument("--no-results", action="store_true")
    ap.add_argument("--cold-diffusers", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    size = a.size or (64 if a.small else 512)
    if size % 64 != 0:
        raise SystemExit("--size must be a multiple of 64 (the VAE encoder's input)")
    work = a.work or (HERE / ("work-small" if a.small else "work"))
    if a.cold_diffusers is not None:
        cold_diffusers(work, size, a.steps, a.cold_diffusers)
        return
    runs = a.runs or (2 if a.small else 10)
    torch.manual_seed(0)
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    sdgraph = a.sdgraph or shutil.which("sdgraph") or str(REPO / "target" / "release" / "sdgraph")
    dev, dtype = device_and_dtype()
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "sd15.safetensors").exists() or not (work / "diffusers" / "model_index.json").exists():
        import make_model

        t0 = time.perf_counter()
        make_model.make(work, a.small, torch.float32 if a.small else torch.float16)
        log(f"model made in {time.perf_counter() - t0:.0f} s")
    ckpt = (work / "sd15.safetensors").resolve()
    graph = work / "txt2img.ron"
    graph.write_text(txt2img_graph(ckpt, size, a.steps))

    # --- diffusers --------------------------------------------------------------------------
    pipe = load_pipe(work / "diffusers", dev, dtype)
    inputs = make_inputs(work, pipe, size)
    pipe = load_pipe(work / "diffusers", dev, dtype)  # make_inputs moved the text encoder to f32 CPU
    dname = torch.cuda.get_device_name() if dev.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    log(f"diffusers on {dname}, {dtype}")
    d_res, d_out, d_img = run_diffusers(pipe, inputs, dev, dtype, a.warmup, runs, size, a.steps)
    from safetensors.torch import save_file as save_tensors

    # Kept for later comparisons without re-running diffusers (e.g. sdgraph in another dtype).
    save_tensors({k: v.contiguous() for k, v in d_out.items()}, str(work / "diffusers_out.safetensors"))
    del pipe
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    # --- sdgraph ----------------------------------------------------------------------------
    out = work / "sdgraph_out.safetensors"
    cmd = [sdgraph, "bench", "models", "--checkpoint", str(ckpt), "--inputs", str(work / "inputs.safetensors"),
           "--out", str(out), "--graph", str(graph), "--warmup", str(a.warmup), "--runs", str(runs), "--json"]
    log("running:", " ".join(cmd))
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"sdgraph bench models failed (exit {r.returncode})")
    s = json.loads(r.stdout)
    s_res = {o["name"]: o for o in s["ops"]}
    from safetensors.torch import load_file
    from PIL import Image

    s_out = load_file(str(out))
    s_img = np.asarray(Image.open(s["graph"]["outputs"][0]).convert("RGB"), dtype=np.float64) / 255.0

    if a.profile:
        pcmd = cmd[:-1] + ["--profile"]
        pcmd[pcmd.index("--runs") + 1] = "1"
        log("profiling:", " ".join(pcmd))
        subprocess.run(pcmd, check=False)

    # --- cold start -------------------------------------------------------------------------
    cold = {"sdgraph": None, "diffusers": None}
    if not a.skip_cold:
        cold_dir = work / "cold"
        cold_dir.mkdir(exist_ok=True)
        cold["sdgraph"] = cold_start([sdgraph, "run", str(graph), "--out-dir", str(cold_dir), "--quiet"])
        cold["diffusers"] = cold_start([sys.executable, str(Path(__file__).resolve()), "--work", str(work),
                                        "--steps", str(a.steps), "--size", str(size)] + (["--small"] if a.small else [])
                                       + ["--cold-diffusers", str(cold_dir / "diffusers.png")])

    # --- compare and report -----------------------------------------------------------------
    names = [("text_encoder", "clip.last_hidden_state"), ("unet_b1", "unet.b1.out"), ("unet_b2", "unet.b2.out"),
             ("vae_decode", "vae.decoded"), ("vae_encode", "vae.encoded_mean"), ("txt2img", None)]
    rows, ok = [], True
    for op, key in names:
        d, sg = d_res[op], s_res.get(op)
        if sg is None:
            raise SystemExit(f"sdgraph reported no {op}")
        if key is None:
            agree = f"PSNR {psnr(d_img, s_img):.1f} dB"
        else:
            c = cosine(d_out[key], s_out[key])
            ok &= c > COS_MIN
            agree = f"cos {c:.6f} (1-cos {1 - c:.1e})" + ("" if c > COS_MIN else " FAIL")
        record = sg.get("record_ms")
        kernels = f"{sg.get('kernels', '-')}" + (f" / {record:.2f}" if record is not None else "")
        rows.append((op, d["ms"], sg["ms"], sg["ms"] / d["ms"], kernels, fmt_bytes(d["peak_bytes"]),
                     fmt_bytes(sg["peak_bytes"]), agree))
    header = ("op", "diffusers ms", "sdgraph ms", "sdgraph/diffusers", "sdgraph kernels / record ms",
              "diffusers peak MiB", "sdgraph peak MiB", "agreement")
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for op, dm, sm, ratio, kern, dp, sp, agree in rows:
        table.append(f"| {op} | {dm:.2f} | {sm:.2f} | {ratio:.2f} | {kern} | {dp} | {sp} | {agree} |")
    if cold["sdgraph"] is not None:
        table.append(f"| first image, cold process | {cold['diffusers'] * 1e3:.0f} | {cold['sdgraph'] * 1e3:.0f} | "
                     f"{cold['sdgraph'] / cold['diffusers']:.2f} | - | - | - | - |")
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    model = "narrow SD 1.5-shaped model (--small)" if a.small else "SD 1.5 shapes"
    where = "" if dev.type == "cuda" else " (LOCAL CPU RUN, not GPU numbers)"
    title = (f"### {when}: {model}, {size}x{size}{where}\n\n"
             f"- diffusers: {dname}, {str(dtype).replace('torch.', '')}, torch {torch.__version__}, "
             f"diffusers {__import__('diffusers').__version__}\n"
             f"- sdgraph: {s['adapter']} ({s['backend']}, {s['device_type']}), {s['dtype']}; VAE f32; "
             f"checkpoint load {s['load_ms']:.0f} ms\n"
             f"- median of {runs} runs after {a.warmup} warm-up; txt2img = {a.steps} steps euler/normal, cfg {CFG}, "
             f"batch 2 (cfg), {size}x{size}, diffusers' whole pipeline in {str(dtype).replace('torch.', '')}; VAE rows f32 on both sides; sdgraph's peak = its buffer pool (weights + activations, idle buffers "
             f"included), diffusers' = torch.cuda.max_memory_allocated\n")
    text = title + "\n" + "\n".join(table) + "\n"
    print(text)
    if not a.small and not a.no_results or a.results is not None:
        dest = a.results or (HERE / "RESULTS.md")
        with open(dest, "a") as f:
            f.write("\n" + text)
        log(f"appended to {dest}")
    (work / "result.md").write_text(text)
    if not ok:
        log(f"FAIL: an output's cosine similarity is at or below {COS_MIN}")
        sys.exit(1)


if __name__ == "__main__":
    main()
