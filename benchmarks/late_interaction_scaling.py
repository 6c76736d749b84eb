"""Issue 30, item 4: the default recipe's fine-grained term at contrastive batch sizes, today's
einsum path beside the fused op (``shapley_kernels.late_interaction``), peak memory and time.

    OMP_NUM_THREADS=1 python benchmarks/late_interaction_scaling.py fine --sizes 64,128,256,512,1024,2048,4096
    OMP_NUM_THREADS=1 python benchmarks/late_interaction_scaling.py step --sizes 64,512
    OMP_NUM_THREADS=1 python benchmarks/late_interaction_scaling.py labels --sizes 64,512,4096

``fine``: ``fine_contrastive_loss`` forward + backward on random L2-normalised queries [B, Q, d]
(each caption with 1..Q present queries), patches [B, P, d] (defaults: the ``default`` recipe's
Q = 8 phrases, P = 64 patches, d = 64), float32. Paths: ``einsum`` (the pre-issue-30 body of
``late_interaction_similarity``, kept here as the baseline: it materialises [B, B, Q, P]), ``op``
(the fused op, backend "auto": cpp on the CPU, triton on a GPU), ``op-torch`` (the op's chunked
torch backend) and, on a GPU, ``op-cuda`` (the CUDA kernels): the child hides the other backends
with ``SHAPLEY_KERNELS_DISABLE``. ``--device cuda`` runs the term on the GPU (benchmarks/gpu_suite.sh)
and measures peak memory with ``torch.cuda.max_memory_allocated`` (above what the inputs hold);
without a CUDA device it prints that it skipped and exits 0.
``step``: one process per variant runs the real training loop (``loupe_core.train.train``, data
loading included, through ``bench_compile.main``) for ``--steps`` steps of the ``default`` config at batch B: ``cmc`` (the CMC-only
step: ``loss.tsa=false loss.fine_contrast=0``), ``default-einsum`` (today's term) and ``default``
(the op); time = median s/iter after the first step.

``labels``: ``max_game_region_values`` (phi, excess and the Shapley IoU) of B x Q maximum games
over the P patches of a square grid, ``--candidates`` random rectangles broadcast to every game
(the default recipe's dense labels of matched pairs, issue 30 item 3).

Every case runs in a fresh child process. Peak memory = the child's peak resident set (VmHWM,
reset through /proc/self/clear_refs just before each measured call, after a warm-up call
on B = 2 that loads the extension) minus its resident set at
that point: what the calls add on top of their inputs (``fine``); for ``step`` the whole
process's peak. Cases whose einsum tensor would exceed ``--einsum-limit-gib`` are skipped.
Prints one markdown table (and JSON lines with --json). On a shared machine compare the paths of
one run (they run interleaved, size by size), and prefer the memory column, which load does not
change.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINE_PATHS = ("einsum", "op", "op-torch")
# the op's "auto" backend in the child runs with these backends hidden (SHAPLEY_KERNELS_DISABLE)
HIDDEN = {"einsum": "", "op": "", "op-torch": "cpp,triton,cuda", "op-cuda": "triton"}
STEP_VARIANTS = ("cmc", "default-einsum", "default")


def einsum_similarity(queries, query_mask, patches):
    """The pre-issue-30 ``late_interaction_similarity``: float[Bt, Bi] through a [Bt, Bi, Q, P] tensor."""
    best = __import__("torch").einsum("tqd,ipd->tiqp", queries, patches).amax(dim=3)
    weight = query_mask.to(best.dtype)
    return (best * weight[:, None, :]).sum(dim=2) / weight.sum(dim=1, keepdim=True).clamp(min=1.0)


def _memory_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _reset_peak() -> int:
    """Reset the peak resident set to the current one; return the current one in KiB."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _memory_kib("VmRSS")


def _use_einsum() -> None:
    from loupe_core.objective import losses

    losses.late_interaction_similarity = einsum_similarity  # fine_contrastive_loss looks it up at call time


def run_fine(B: int, path: str, Q: int, P: int, d: int, repeats: int, device: str) -> dict:
    import torch
    import torch.nn.functional as F

    from loupe_core.objective import losses
    from shapley_kernels.late_interaction import _torch_backend

    if path == "einsum":
        _use_einsum()
    def inputs(size):
        g = torch.Generator().manual_seed(0)
        queries = F.normalize(torch.randn(size, Q, d, generator=g), dim=-1).to(device).requires_grad_(True)
        patches = F.normalize(torch.randn(size, P, d, generator=g), dim=-1).to(device).requires_grad_(True)
        query_mask = (torch.arange(Q)[None, :] < torch.randint(1, Q + 1, (size, 1), generator=g)).to(device)
        return queries, query_mask, patches

    cuda = device == "cuda"
    scale = torch.tensor(10.0, device=device, requires_grad=True)
    losses.fine_contrastive_loss(*inputs(2), scale).backward()   # warm-up: loads the extension, registers the ops
    queries, query_mask, patches = inputs(B)
    seconds, peaks, loss = [], [], None
    for _ in range(repeats):
        queries.grad = patches.grad = scale.grad = None
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 1024
        else:
            base = _reset_peak()
        start = time.perf_counter()
        loss = losses.fine_contrastive_loss(queries, query_mask, patches, scale)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() / 1024 if cuda else _memory_kib("VmHWM")
        peaks.append((peak - base) / 1024)
    return {"loss": float(loss), "grad_norm": float(patches.grad.norm()), "seconds": statistics.median(seconds),
            "peak_mib": max(peaks), "chunk_elements": _torch_backend._CHUNK_ELEMENTS}


def run_step(B: int, variant: str, steps: int, root: str) -> dict:
    """The real loop through ``bench_compile.main`` (eager): its steady median after the first step."""
    import contextlib
    import io

    import bench_compile

    if variant == "default-einsum":
        _use_einsum()
    extra = ["loss.tsa=false", "loss.fine_contrast=0"] if variant == "cmc" else []
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        bench_compile.main(["--config", "default", "--steps", str(steps), "--skip", "1", "--root", root,
                            f"train.batch_size={B}", f"data.train_size={max(4000, B)}", *extra])
    result = json.loads(printed.getvalue().strip().splitlines()[-1])
    return {"seconds": result["steady_median_s"], "first_s": result["first_step_s"],
            "peak_mib": _memory_kib("VmHWM") / 1024, "threads": result["threads"], "last_loss": result["last_loss"]}


def run_labels(B: int, Q: int, P: int, candidates: int) -> dict:
    """``max_game_region_values`` (all three scores) on B x Q maximum games over P patches (a square
    grid) with ``candidates`` random rectangles of it, broadcast to every game (issue 30, item 3)."""
    import torch

    import shapley_kernels as sk

    side = int(round(P ** 0.5))
    g = torch.Generator().manual_seed(0)
    rows, cols = (torch.randint(0, side, (candidates, 2), generator=g).sort(dim=1).values for _ in range(2))
    r = torch.arange(side)
    inside_rows = (r[None, :] >= rows[:, :1]) & (r[None, :] <= rows[:, 1:])                 # [K, side]
    inside_cols = (r[None, :] >= cols[:, :1]) & (r[None, :] <= cols[:, 1:])
    regions = (inside_rows[:, :, None] & inside_cols[:, None, :]).reshape(candidates, side * side)
    values = torch.randn(B, Q, side * side, generator=g)
    names = ("phi", "excess", "shapley_iou")
    sk.max_game_region_values(values[:1], regions, score=names)                                 # warm-up
    base = _reset_peak()
    start = time.perf_counter()
    sk.max_game_region_values(values, regions[None, None], score=names)
    return {"seconds": time.perf_counter() - start, "peak_mib": (_memory_kib("VmHWM") - base) / 1024,
            "largest_region": int(regions.sum(dim=1).max())}


def _child(args: list, hidden: str = "") -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if hidden:  # the op's "auto" then picks the next backend
        env["SHAPLEY_KERNELS_DISABLE"] = hidden
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("fine", "step", "labels", "child-fine", "child-step", "child-labels"))
    p.add_argument("--sizes", default="64,128,256,512,1024,2048,4096")
    p.add_argument("--paths", default=None,
                   help=f"fine: {','.join(FINE_PATHS)} (and op-cuda on a GPU); step: {','.join(STEP_VARIANTS)}")
    p.add_argument("--Q", type=int, default=8)
    p.add_argument("--P", type=int, default=64)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--candidates", type=int, default=256, help="labels: candidate rectangles per image")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "loupe_bench_li_data"))
    p.add_argument("--einsum-limit-gib", type=float, default=4.0,
                   help="skip the einsum path where its [B, B, Q, P] float32 tensor is larger")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="fine: where the term runs (cuda: peak = torch.cuda.max_memory_allocated)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: nothing to measure (skipped)")
            return
    if a.what == "child-fine":
        print(json.dumps(run_fine(sizes[0], a.paths, a.Q, a.P, a.d, a.repeats, a.device)))
        return
    if a.what == "child-labels":
        print(json.dumps(run_labels(sizes[0], a.Q, a.P, a.candidates)))
        return
    if a.what == "child-step":
        print(json.dumps(run_step(sizes[0], a.paths, a.steps, a.root)))
        return
    default_paths = {"fine": FINE_PATHS, "step": STEP_VARIANTS, "labels": ("max_game_region_values",)}
    paths = a.paths.split(",") if a.paths else list(default_paths[a.what])
    rows = []
    for B in sizes:
        for path in paths:
            tensor_gib = B * B * a.Q * a.P * 4 / 2**30
            if "einsum" in path and tensor_gib > a.einsum_limit_gib:
                result = {"skipped": f"[B, B, Q, P] is {tensor_gib:.1f} GiB"}
            elif a.what == "fine":
                result = _child(["child-fine", "--sizes", str(B), "--paths", path, "--Q", str(a.Q), "--P", str(a.P),
                                 "--d", str(a.d), "--repeats", str(1 if B >= 1024 else a.repeats),
                                 "--device", a.device], hidden=HIDDEN[path])
            elif a.what == "labels":
                result = _child(["child-labels", "--sizes", str(B), "--Q", str(a.Q), "--P", str(a.P),
                                 "--candidates", str(a.candidates)])
            else:
                result = _child(["child-step", "--sizes", str(B), "--paths", path, "--steps", str(a.steps),
                                 "--root", a.root])
            rows.append(dict(B=B, path=path, **result))
            if a.json:
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n| B | path | s per call | peak MiB | ratio of time / memory to the first path at this B |")
    print("|---|---|---|---|---|")
    for row in rows:
        first = next(r for r in rows if r["B"] == row["B"])
        if "seconds" not in row:
            print(f"| {row['B']} | {row['path']} | {row.get('skipped') or row.get('error')} | | |")
            continue
        ratio = (f"{row['seconds'] / first['seconds']:.3f} / {row['peak_mib'] / first['peak_mib']:.3f}"
                 if "seconds" in first else "")
        print(f"| {row['B']} | {row['path']} | {row['seconds']:.3f} | {row['peak_mib']:.0f} | {ratio} |")


if __name__ == "__main__":
    sys.exit(main())
