"""Issue 30, item 4: the default recipe's fine-grained term at contrastive batch sizes, today's
einsum path beside the fused op (``shapley_kernels.late_interaction``), peak memory and time.

    OMP_NUM_THREADS=1 python benchmarks/late_interaction_scaling.py fine --sizes 64,128,256,512,1024,2048,4096
    OMP_NUM_THREADS=1 python benchmarks/late_interaction_scaling.py step --sizes 64,512

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
loading included) for ``--steps`` steps of the ``default`` config at batch B: ``cmc`` (the CMC-only
step: ``loss.tsa=false loss.fine_contrast=0``), ``default-einsum`` (today's term) and ``default``
(the op); time = median s/iter after the first step.

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
    import torch

    from loupe_core.config import load_config
    from loupe_core.objective import LoupeObjective
    from loupe_core.pipeline import build_data, seed_everything
    from loupe_core.train import train
    from loupe_core.train.distributed import DistContext

    if variant == "default-einsum":
        _use_einsum()
    extra = ["loss.tsa=false", "loss.fine_contrast=0"] if variant == "cmc" else []
    cfg = load_config("default", [f"data.root={root}", f"data.train_size={max(4000, B)}", f"train.batch_size={B}",
                                  f"train.steps={steps}", "train.log_every=1", "train.ckpt_every=0",
                                  "train.tensorboard=false", "train.progress=false", "eval.final=false", *extra])
    seed_everything(cfg.train.seed)
    data = build_data(cfg, DistContext())
    objective = LoupeObjective(cfg.model, cfg.loss)
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(cfg, run_dir, objective, data.train, data.collate)
        rows = [json.loads(line) for line in open(result.history_path)]
    secs = [B / r["train/samples_per_s"] for r in rows if "train/samples_per_s" in r]
    return {"seconds": statistics.median(secs[1:] or secs), "first_s": secs[0], "peak_mib": _memory_kib("VmHWM") / 1024,
            "threads": torch.get_num_threads(), "last_loss": result.losses[-1]}


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
    p.add_argument("what", choices=("fine", "step", "child-fine", "child-step"))
    p.add_argument("--sizes", default="64,128,256,512,1024,2048,4096")
    p.add_argument("--paths", default=None,
                   help=f"fine: {','.join(FINE_PATHS)} (and op-cuda on a GPU); step: {','.join(STEP_VARIANTS)}")
    p.add_argument("--Q", type=int, default=8)
    p.add_argument("--P", type=int, default=64)
    p.add_argument("--d", type=int, default=64)
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
    if a.what == "child-step":
        print(json.dumps(run_step(sizes[0], a.paths, a.steps, a.root)))
        return
    paths = a.paths.split(",") if a.paths else list(FINE_PATHS if a.what == "fine" else STEP_VARIANTS)
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
