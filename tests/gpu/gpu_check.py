"""One prepared check of c2p's GPU path: depth rendering, EGL mesh rendering, a bf16 DeepSpeed step, the loader.

    python tests/gpu/gpu_check.py --device cuda [--budget-s 420] [--out DIR] [--mesh-reference FILE]
    python tests/gpu/gpu_check.py --device cpu [--smallest]          # every line, small sizes (CI)
    python tests/gpu/gpu_check.py --reference-mesh FILE              # llvmpipe renders for a GPU run (README.md)

Order: measure the device's ceilings (matmul FLOP/s in the step's precision, memory copy
bytes/s), write the plan (sizes of each check, its FLOPs and bytes per repetition and the
seconds they should take at those ceilings, repetitions fitted into ``--budget-s``), run the
checks, print one short table last (and ``results.json`` into ``--out``). A timed loop also
stops when its share of the budget is spent, so a slower device still finishes in time.

1. depth: ``c2p.render.render_depth`` on the device vs on the CPU, same points and views.
   Tolerance: covered/uncovered pixels agree on >= 99.9% of pixels and |dz| <= 1e-5 where both
   are covered (float32 arithmetic in another order: a point exactly on a pixel's radius may
   flip); speed at B objects x 10 views x S² (GPU: 256 x 10 x 224², 1024 points).
2. mesh: ``c2p.render.MeshRenderer`` on the EGL device of this process's GPU vs Mesa's
   llvmpipe (a subprocess with Mesa's EGL vendor file). Tolerance: mean |ΔRGB| <= 1/255 and
   <= 0.5% of pixels off by more than 32/255 (rasterisation rules differ on edges); objects/s.
3. step: a CLIP2Point step (depth rendering + forward/backward/step, ``c2p.train.pretrain``'s
   micro-step) through the DeepSpeed engine, ZeRO-2, 1 process, bf16 (ViT-B-32 on cuda,
   c2p-tiny on cpu); samples/s and MFU against the measured and the datasheet peak.
4. loader: ``PretrainStream`` samples/s from ``imgfeat`` shards (8192 float16 points, 10 views)
   with N workers, batches moved to the device, vs what the step of 3 consumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # testdata: the shard writer the tests use
MESA_EGL_VENDOR = "/usr/share/glvnd/egl_vendor.d/50_mesa.json"
DEPTH_MISMATCH_MAX, DEPTH_DZ_MAX = 1e-3, 1e-5
MESH_MEAN_MAX, MESH_BAD_FRAC_MAX, MESH_BAD_LEVEL = 1.0, 5e-3, 32
PARITY_MESHES = 4  # one of each kind of _meshes
# Shares of the budget per check (the rest: imports, model builds, the plan itself).
SHARES = {"depth": 0.12, "mesh": 0.18, "step": 0.30, "loader": 0.20}


# ----------------------------------------------------------------------------- ceilings and plan


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int, reps: int = 5) -> float:
    """Bytes/s of a device-to-device tensor copy (read + write counted), median of ``reps``."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    times = []
    for i in range(reps + 1):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    return 2.0 * src.numel() * 4 / statistics.median(times)


def measure_ceilings(device: torch.device, dtype: torch.dtype, smallest: bool) -> dict:
    from c2p.train.throughput import datasheet_peak_flops, measure_peak_flops

    gpu = device.type == "cuda"
    size = None if gpu else (256 if smallest else 1024)
    peak = measure_peak_flops(device, dtype, size=size, reps=None if gpu else 3)
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    return {"device_name": name, "dtype": str(dtype).removeprefix("torch."), "peak_flops": peak,
            "datasheet_flops": datasheet_peak_flops(name, dtype) if gpu else None,
            "copy_bytes_per_s": copy_bandwidth(device, (1 << 30) if gpu else (16 << 20))}


def make_plan(device: torch.device, ceilings: dict, budget_s: float, smallest: bool) -> dict:
    """Sizes of every check and the repetitions that fit its share of ``budget_s`` at the measured
    ceilings. Estimates are roofline-style (max of FLOPs/peak and bytes/bandwidth) divided by an
    efficiency (how far below the ceiling such work runs; scatter and rasterisation far below)."""
    gpu, flops_s, bytes_s = device.type == "cuda", ceilings["peak_flops"], ceilings["copy_bytes_per_s"]
    if gpu:
        depth = {"objects": 256, "views": 10, "size": 224, "points": 1024, "parity_objects": 8}
        mesh = {"objects": 64, "views": 10, "size": 224}
        step = {"model": "ViT-B-32", "batch": 256, "size": 224, "radius": 0.02, "points": 1024}
        loader = {"objects": 2048, "shards": 16, "workers": 16, "batch": 256, "batches": 64}
    elif smallest:
        depth = {"objects": 2, "views": 2, "size": 32, "points": 256, "parity_objects": 2}
        mesh = {"objects": 2, "views": 2, "size": 32}
        step = {"model": "c2p-tiny", "batch": 4, "size": 32, "radius": 0.04, "points": 256}
        loader = {"objects": 16, "shards": 2, "workers": 2, "batch": 4, "batches": 4}
    else:
        depth = {"objects": 8, "views": 10, "size": 224, "points": 1024, "parity_objects": 2}
        mesh = {"objects": 4, "views": 10, "size": 224}
        step = {"model": "c2p-tiny", "batch": 16, "size": 32, "radius": 0.04, "points": 256}
        loader = {"objects": 128, "shards": 4, "workers": 2, "batch": 16, "batches": 16}
    # depth: every point is tested against a win² pixel window, ~40 bytes moved per candidate (coordinates,
    # distances, indices, the scatter); scatters run at ~5% of copy bandwidth.
    depth["radius"] = 0.02 if depth["size"] >= 224 else 0.04  # the paper's at 224², bigger splats when small
    win = math.floor(depth["radius"] * depth["size"]) + 1  # pixels a side a point's disk can reach
    depth["bytes"] = depth["objects"] * depth["views"] * depth["points"] * win * win * 40
    depth["est_s"] = depth["bytes"] / (0.05 * bytes_s)
    # mesh: per view a framebuffer fill and read-back plus the draw; rasterisers: ~1% of copy bandwidth
    mesh["bytes"] = mesh["objects"] * mesh["views"] * mesh["size"] ** 2 * 4 * 16
    mesh["est_s"] = mesh["bytes"] / (0.01 * bytes_s)
    # step: model FLOPs per sample (counted from the model) at 40% (GPU) / 20% (CPU) of the peak
    step["flops"] = _step_flops(step) * step["batch"]
    step["est_s"] = step["flops"] / ((0.4 if gpu else 0.2) * flops_s)
    # loader: ~1 ms of a core per sample (tar read, npy decode, subsample), workers in parallel
    loader["bytes"] = loader["batch"] * (8192 * 3 * 2 + 10 * 512 * 2)
    loader["est_s"] = loader["batch"] * 1e-3 / loader["workers"]
    most = 3 if smallest else 50  # CI: every line once or twice, not a measurement
    for name, part in (("depth", depth), ("mesh", mesh), ("step", step), ("loader", loader)):
        part["budget_s"] = SHARES[name] * budget_s
        cap = min(most, loader["batches"]) if name == "loader" else most
        # half the share at the estimate: the estimates are rough, the timed loop's guard catches the rest
        part["reps"] = int(max(2, min(cap, part["budget_s"] / max(part["est_s"], 1e-6) / 2)))
    return {"device": str(device), "budget_s": budget_s, "ceilings": ceilings,
            "depth": depth, "mesh": mesh, "step": step, "loader": loader}


def _step_flops(step: dict) -> float:
    """Model FLOPs per sample of the step's model, counted on CPU (c2p.train.throughput)."""
    from c2p.models.clip import create_clip
    from c2p.train.throughput import model_flops_per_sample

    visual = create_clip(step["model"]).visual
    step["flops_per_sample"] = model_flops_per_sample(visual, None, step["size"]).total
    return step["flops_per_sample"]


def timed(fn, device: torch.device, reps: int, budget_s: float) -> tuple[int, float]:
    """Run ``fn`` ``reps`` times (fewer, but at least 2, once ``budget_s`` is spent); (runs, seconds)."""
    fn()  # warm-up: kernels, allocator, caches
    sync(device)
    t0, runs = time.perf_counter(), 0
    while runs < reps and (runs < 2 or time.perf_counter() - t0 < budget_s):
        fn()
        runs += 1
        if device.type == "cuda" and runs % 8 == 0:
            sync(device)  # keep the host from queueing far beyond the budget
    sync(device)
    return runs, time.perf_counter() - t0


# ----------------------------------------------------------------------------- the checks


def unit_sphere_points(gen: torch.Generator, b: int, n: int) -> torch.Tensor:
    p = torch.randn(b, n, 3, generator=gen)
    return p / p.norm(dim=-1, keepdim=True) * torch.rand(b, n, 1, generator=gen) ** (1 / 3)


def check_depth(device: torch.device, plan: dict) -> list[tuple]:
    from c2p.camera import VIEWS_10
    from c2p.render import render_depth

    p = plan["depth"]
    views = VIEWS_10[: p["views"]]
    e, a = views[:, 0], views[:, 1]
    radius = p["radius"]
    pts = unit_sphere_points(torch.Generator().manual_seed(0), p["objects"], p["points"])
    k = p["parity_objects"]
    ref = render_depth(pts[:k], e, a, 1.0, p["size"], radius)
    got = render_depth(pts[:k].to(device), e.to(device), a.to(device), 1.0, p["size"], radius).cpu()
    cov_ref, cov_got = ref != -1, got != -1
    mismatch = float((cov_ref != cov_got).float().mean())
    both = cov_ref & cov_got
    dz = float((ref - got)[both].abs().max()) if bool(both.any()) else 0.0
    x, ed, ad = pts.to(device), e.to(device), a.to(device)
    runs, secs = timed(lambda: render_depth(x, ed, ad, 1.0, p["size"], radius), device, p["reps"], p["budget_s"])
    obj_s = runs * p["objects"] / secs
    ok = mismatch <= DEPTH_MISMATCH_MAX and dz <= DEPTH_DZ_MAX
    shape = f"{p['objects']}x{p['views']}x{p['size']}²"
    return [("depth parity", f"coverage mismatch {mismatch:.2e}, max |dz| {dz:.1e}",
             f"<= {DEPTH_MISMATCH_MAX:g}, <= {DEPTH_DZ_MAX:g}", ok),
            ("depth speed", f"{obj_s:.1f} objects/s ({obj_s * p['views']:.0f} images/s) at {shape}",
             f"{secs / runs * 1e3:.1f} ms per call", True)]


def _meshes(n: int) -> list:
    import trimesh

    makers = [lambda: trimesh.creation.icosphere(subdivisions=3, radius=0.8),
              lambda: trimesh.creation.box(extents=(1.0, 0.6, 0.4)),
              lambda: trimesh.creation.cylinder(radius=0.4, height=1.2, sections=48),
              lambda: trimesh.creation.annulus(r_min=0.3, r_max=0.7, height=0.3)]
    return [makers[i % len(makers)]() for i in range(n)]


def render_meshes(n: int, views: int, size: int, device_index: int | None = None) -> tuple[np.ndarray, str]:
    """uint8 ``[n,V,S,S,3]`` renders of the check's meshes and the GL renderer's name."""
    from c2p.camera import VIEWS_10
    from c2p.render.mesh import MeshRenderer

    v = VIEWS_10[:views].numpy()
    with MeshRenderer(size, device_index=device_index) as r:
        images = np.stack([r.render(m, v[:, 0], v[:, 1], 1.0, light="fixed") for m in _meshes(n)])
        return images, r.gl_info.get("GL_RENDERER", "?")


def mesh_reference(p: dict, out: Path, given: str | None) -> tuple[np.ndarray, str]:
    """llvmpipe renders of the parity meshes: from ``given`` (made on a CPU machine with
    ``--reference-mesh``; a GPU image may lack Mesa), else rendered now in a subprocess that sees
    no GPU and Mesa's EGL vendor file only."""
    k = min(p["objects"], PARITY_MESHES)
    if given:
        ref = np.load(given)
        if ref.shape != (k, p["views"], p["size"], p["size"], 3):
            raise ValueError(f"--mesh-reference {given}: shape {ref.shape}; expected {(k, p['views'], p['size'], p['size'], 3)} "
                             f"(make it with --reference-mesh FILE --mesh-objects {k} --mesh-views {p['views']} --mesh-size {p['size']})")
        return ref, f"llvmpipe, from {Path(given).name}"
    ref_file = out / "mesh_reference.npy"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    if Path(MESA_EGL_VENDOR).is_file():
        env["__EGL_VENDOR_LIBRARY_FILENAMES"] = MESA_EGL_VENDOR
    proc = subprocess.run([sys.executable, __file__, "--reference-mesh", str(ref_file), "--mesh-objects", str(k),
                           "--mesh-views", str(p["views"]), "--mesh-size", str(p["size"])],
                          env=env, capture_output=True, text=True, timeout=max(60.0, p["budget_s"]))
    if proc.returncode != 0:
        raise RuntimeError(f"reference (llvmpipe) render exited {proc.returncode}: {proc.stderr[-1500:]}")
    return np.load(ref_file), proc.stdout.strip().splitlines()[-1]


def check_mesh(device: torch.device, plan: dict, out: Path, reference: str | None) -> list[tuple]:
    from c2p.camera import VIEWS_10
    from c2p.render.egl import select_egl_device
    from c2p.render.mesh import MeshRenderer

    p = plan["mesh"]
    ref, ref_gl = mesh_reference(p, out, reference)
    k = ref.shape[0]
    egl_index = select_egl_device(None)
    got, gl = render_meshes(k, p["views"], p["size"])
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    mean, bad = float(diff.mean()), float((diff.max(axis=-1) > MESH_BAD_LEVEL).mean())
    on_gpu_ok = device.type != "cuda" or "llvmpipe" not in gl.lower()
    meshes, v = _meshes(p["objects"]), VIEWS_10[: p["views"]].numpy()
    with MeshRenderer(p["size"]) as r:
        it = iter(range(10**9))

        def render_one() -> None:
            r.render(meshes[next(it) % len(meshes)], v[:, 0], v[:, 1], 1.0, light="fixed")

        runs, secs = timed(render_one, torch.device("cpu"), p["objects"], p["budget_s"])
    return [("mesh device", f"EGL device {egl_index}: {gl}", f"reference: {ref_gl}", on_gpu_ok),
            ("mesh parity", f"mean |dRGB| {mean:.3f}, {100 * bad:.3f}% px > {MESH_BAD_LEVEL}",
             f"<= {MESH_MEAN_MAX:g}, <= {100 * MESH_BAD_FRAC_MAX:g}%", mean <= MESH_MEAN_MAX and bad <= MESH_BAD_FRAC_MAX),
            ("mesh speed", f"{runs / secs:.2f} objects/s ({p['views']} views, {p['size']}²)",
             f"{secs / runs * 1e3:.0f} ms per object", True)]


def check_step(device: torch.device, plan: dict, results: dict) -> list[tuple]:
    from c2p.config.core import load_config
    from c2p.config.pretrain import PretrainConfig
    from c2p.train.engine import build_engine, init_distributed
    from c2p.train.pretrain import _micro_step, build_clip2point

    p = plan["step"]
    cfg = load_config(PretrainConfig, REPO / "configs" / "pretrain" / "tiny.yaml", [
        "data.shards=[unused]", "data.imgfeat_tag=check", f"model.name={p['model']}", f"depth.image_size={p['size']}",
        f"data.image_size={p['size']}", f"depth.radius={p['radius']}", f"data.points={p['points']}",
        f"train.batch_size={p['batch']}", "train.zero_stage=2", "train.precision=bf16", "train.backend=auto"])
    place = init_distributed(cfg)
    _, model = build_clip2point(cfg, pretrained=False)
    engine = build_engine(model, cfg, world_size=1, precision="bf16", device=device)
    gen = torch.Generator().manual_seed(0)
    dim = model.depth.visual.output_dim
    batch = {"points": unit_sphere_points(gen, p["batch"], p["points"]),
             "view": torch.tensor([[0.0, 0.0, 1.0]]).repeat(p["batch"], 1), "imgfeat": torch.randn(p["batch"], dim, generator=gen)}
    if device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}
    step_gen = torch.Generator(device=device).manual_seed(0)
    losses = []

    def one() -> None:
        losses.append(_micro_step(engine, None, batch, cfg, step_gen, device, torch.bfloat16)["loss"])

    runs, secs = timed(one, device, p["reps"], p["budget_s"])
    samples_s = runs * p["batch"] / secs
    achieved = samples_s * p["flops_per_sample"]
    c = plan["ceilings"]
    mfu, sheet = achieved / c["peak_flops"], (achieved / c["datasheet_flops"] if c["datasheet_flops"] else None)
    results["step_samples_per_s"] = samples_s
    finite = all(math.isfinite(float(x.detach())) for x in losses)
    sheet_txt = f", {100 * sheet:.3g}% of datasheet" if sheet is not None else ""
    return [("step bf16 ZeRO-2", f"{samples_s:.1f} samples/s, {achieved / 1e12:.3g} TFLOP/s, MFU {100 * mfu:.3g}%{sheet_txt}",
             f"{p['model']} B={p['batch']}, {place.backend}, {secs / runs * 1e3:.1f} ms/step", finite)]


def write_imgfeat_shards(root: Path, objects: int, shards: int, dim: int = 512) -> Path:
    """``objects`` random objects as the render job stores them: 8192 float16 points, 10 views, ``imgfeat.check``."""
    from testdata import object_sample, write_shard_dir

    from c2p.camera import VIEWS_10

    rng = np.random.default_rng(0)
    views = [[float(e), float(a), 1.0] for e, a in VIEWS_10.tolist()]

    def one(i: int) -> dict:
        pts = rng.standard_normal((8192, 3))
        pts /= np.linalg.norm(pts, axis=1, keepdims=True)
        return object_sample("check", f"o{i:06d}", f"c{i % 8}", i % 8, pts, views=views,
                             imgfeat={"check": rng.standard_normal((10, dim)).astype(np.float16)})

    per = [[one(i) for i in range(s, objects, shards)] for s in range(shards)]
    return write_shard_dir(root, per, corpus="check", labels=[f"c{j}" for j in range(8)])


def check_loader(device: torch.device, plan: dict, out: Path, results: dict) -> list[tuple]:
    from c2p.config.pretrain import DataConfig
    from c2p.data import PretrainStream
    from c2p.data.stream import batch_to_device

    p = plan["loader"]
    root = write_imgfeat_shards(out / "imgfeat_shards", p["objects"], p["shards"])
    cfg = DataConfig(shards=[str(root)], points=1024, workers=p["workers"], imgfeat_tag="check", shuffle_buffer=256)
    stream = iter(PretrainStream(cfg, rank=0, world_size=1, seed=0, batch_size=p["batch"], device=device))
    for _ in range(p["workers"]):  # every worker started and its first batch made
        batch_to_device(next(stream), device)
    runs, secs = timed(lambda: batch_to_device(next(stream), device), device, p["reps"], p["budget_s"])
    samples_s = runs * p["batch"] / secs
    consumed = results.get("step_samples_per_s")
    ratio = samples_s / consumed if consumed else float("nan")
    verdict = "feeds the step" if ratio >= 1 else "the step waits for data"
    return [("loader", f"{samples_s:.0f} samples/s with {p['workers']} workers ({p['objects']} objects)",
             f"{ratio:.2f}x the step's {consumed or float('nan'):.0f} samples/s: {verdict}", True)]


# ----------------------------------------------------------------------------- main


def print_table(rows: list[tuple]) -> None:
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"\n{'check':<{w0}}  {'result':<{w1}}  ok    bound / detail")
    for name, result, detail, ok in rows:
        print(f"{name:<{w0}}  {result:<{w1}}  {'yes' if ok else 'NO ':<4}  {detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget-s", type=float, default=None, help="seconds for the timed parts (cuda 420, cpu 30)")
    parser.add_argument("--smallest", action="store_true", help="cpu: the smallest sizes (CI)")
    parser.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for results.json (default: a temp dir)")
    parser.add_argument("--mesh-reference", help="llvmpipe renders made by --reference-mesh (default: render them now)")
    parser.add_argument("--reference-mesh", metavar="FILE", help="only write the llvmpipe renders of the parity meshes to FILE (.npy)")
    parser.add_argument("--mesh-objects", type=int, default=PARITY_MESHES, help="with --reference-mesh")
    parser.add_argument("--mesh-views", type=int, default=10, help="with --reference-mesh")
    parser.add_argument("--mesh-size", type=int, default=224, help="with --reference-mesh")
    args = parser.parse_args(argv)
    if args.reference_mesh:  # the llvmpipe half of the mesh check, in its own process
        images, gl = render_meshes(args.mesh_objects, args.mesh_views, args.mesh_size)
        np.save(args.reference_mesh, images)
        print(gl)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "error: --device cuda: torch sees no CUDA device here; expected a GPU machine (or --device cpu)\n")
    t_start = time.perf_counter()
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    budget = args.budget_s if args.budget_s is not None else (420.0 if device.type == "cuda" else 30.0)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="c2p-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    ceilings = measure_ceilings(device, torch.bfloat16, args.smallest)
    plan = make_plan(device, ceilings, budget, args.smallest)
    print("plan:", json.dumps(plan, default=str), flush=True)
    (out / "plan.json").write_text(json.dumps(plan, indent=1, default=str))
    results: dict = {}
    sheet = f", datasheet {ceilings['datasheet_flops'] / 1e12:.0f} TFLOP/s" if ceilings["datasheet_flops"] else ""
    rows = [("ceilings", (f"{ceilings['peak_flops'] / 1e12:.3g} TFLOP/s {ceilings['dtype']} matmul, "
                          f"{ceilings['copy_bytes_per_s'] / 1e9:.0f} GB/s copy"), ceilings["device_name"] + sheet, True)]
    checks = [("depth", lambda: check_depth(device, plan)), ("mesh", lambda: check_mesh(device, plan, out, args.mesh_reference)),
              ("step", lambda: check_step(device, plan, results)), ("loader", lambda: check_loader(device, plan, out, results))]
    for name, check in checks:
        t0 = time.perf_counter()
        try:
            got = check()
        except Exception as err:  # noqa: BLE001 - one failed check must not hide the others' numbers
            traceback.print_exc()
            got = [(name, f"error: {type(err).__name__}: {str(err)[:160]}", "see the traceback above", False)]
        results[name] = {"rows": [list(r) for r in got], "seconds": round(time.perf_counter() - t0, 2)}
        rows += got
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    (out / "results.json").write_text(json.dumps({"plan": plan, "results": results}, indent=1, default=str))
    rows.append(("total", f"{results['total_s']:.0f} s", f"budget {budget:.0f} s for the timed parts; results in {out}", True))
    print_table(rows)
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
