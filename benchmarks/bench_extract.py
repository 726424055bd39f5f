"""Feature-extraction throughput: the suite's pipeline against a naive PIL + torchvision DataLoader (not a test).

    python benchmarks/bench_extract.py --images 512 --json bench_extract.json            # CPU
    python benchmarks/bench_extract.py --device cuda --images 20000 --json bench_extract.json

For ResNet-12 at 84 px (``metaoptnet-mini``) and Conv-4 at 32 px (``metaoptnet-cifar``), randomly
initialised (seeded), on ``--images`` synthetic uint8 RGB images:

* ``fewshot_bench``: ``fewshot_bench.features.extract_features`` on the images as a memory-mapped
  uint8 ``.npy`` (how ``fewshot_bench.data`` serves a split): uint8 batches go to the device and are
  transformed there; on CUDA with AMP (bf16, fp16 where bf16 is missing), fp32 on CPU;
* naive: the usual tutorial pipeline: a ``Dataset`` of decoded PIL images,
  ``torchvision.transforms.Compose([ToTensor(), Normalize(mean, std)])``, a ``DataLoader``
  (``--workers``, each value timed; ``pin_memory`` on CUDA), the model under ``torch.no_grad`` (and
  the same autocast on CUDA), outputs gathered with ``.cpu()``.

Both use ``--batch-size``; the time covers the whole pass over the images (after one warm-up
batch), best of ``--repeats``; on CUDA timings synchronise. Throughput is images per second; the
ratio is ours / the best naive setting. The features of the two pipelines are compared (max abs
difference; they differ only by float rounding of the normalisation).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import command_line, timed

from fewshot_bench.backbones import create_backbone
from fewshot_bench.features import _resolve_amp, extract_features
from fewshot_bench.transforms import get_transform

CASES = {"resnet12": ("metaoptnet-mini", 84), "conv4": ("metaoptnet-cifar", 32)}


def ours(model, images: np.ndarray, transform, device, batch: int, amp) -> np.ndarray:
    return extract_features(model, images, transform, batch_size=batch, device=device, amp=amp or False,
                            progress=False)


def naive(model, images: np.ndarray, transform, device, batch: int, amp, workers: int) -> np.ndarray:
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    pil = [Image.fromarray(np.asarray(im)) for im in images]  # decoded images, as after Image.open(...)
    tf = T.Compose([T.ToTensor(), T.Normalize(transform.mean, transform.std)])

    class Images(Dataset):
        def __len__(self):
            return len(pil)

        def __getitem__(self, i):
            return tf(pil[i])

    loader = DataLoader(Images(), batch_size=batch, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    model.eval().to(device)
    out = []
    with torch.no_grad():
        for x in loader:
            x = x.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out.append(model(x).float().cpu())
    return torch.cat(out).numpy()




def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default=None, help="bf16 | fp16 | off (default: bf16/fp16 on CUDA, off on CPU)")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="DataLoader workers of the naive pipeline, each timed (default: 0 and min(8, CPUs))")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = _resolve_amp(args.amp if args.amp is not None else None, device)
    workers = args.workers if args.workers is not None else sorted({0, min(8, os.cpu_count() or 1)})
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            tf_name, side = CASES[arch]
            transform = get_transform(tf_name)
            rng = np.random.default_rng(args.seed)
            path = Path(tmp) / f"{arch}.npy"
            np.save(path, rng.integers(0, 256, (args.images, side, side, 3), dtype=np.uint8))
            images = np.load(path, mmap_mode="r")
            torch.manual_seed(args.seed)
            model = create_backbone(arch, image_size=side)
            ours(model, images[: args.batch_size], transform, device, args.batch_size, amp)  # warm-up
            t_ours, f_ours = timed(lambda: ours(model, images, transform, device, args.batch_size, amp),
                                   args.repeats, device)
            rows.append({"arch": arch, "size": side, "pipeline": "fewshot_bench extract_features", "workers": 0,
                         "seconds": t_ours, "images_per_s": args.images / t_ours, "max_abs_diff": 0.0})
            for w in workers:
                naive(model, images[: args.batch_size], transform, device, args.batch_size, amp, w)  # warm-up
                t, f = timed(lambda: naive(model, images, transform, device, args.batch_size, amp, w),
                             args.repeats, device)
                rows.append({"arch": arch, "size": side, "pipeline": "naive PIL + torchvision DataLoader",
                             "workers": w, "seconds": t, "images_per_s": args.images / t,
                             "max_abs_diff": float(np.abs(f - f_ours).max())})
    table = pd.DataFrame(rows)
    best_naive = table[table.pipeline.str.startswith("naive")].groupby("arch").images_per_s.max()
    table["ours_over_best_naive"] = [
        r.images_per_s / best_naive[r.arch] if r.pipeline.startswith("fewshot") else float("nan")
        for r in table.itertuples()
    ]
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"{args.images} synthetic images, batch {args.batch_size}, device {device} ({dev_name}), "
          f"amp {None if amp is None else str(amp).replace('torch.', '')}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average before {load_before[0]:.2f}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    checks = []
    if device.type == "cuda" and "resnet12" in args.arch:
        r = table[(table.arch == "resnet12") & table.pipeline.str.startswith("fewshot")].iloc[0]
        checks = [(f"resnet12 84 px >= 10,000 images/s ({r.images_per_s:.0f})", r.images_per_s >= 10_000),
                  (f"resnet12 84 px >= 5x the naive pipeline ({r.ours_over_best_naive:.1f}x)",
                   r.ours_over_best_naive >= 5)]
    else:
        print("The GPU targets (ResNet-12 84 px >= 10,000 images/s with AMP, >= 5x naive) apply to "
              "--device cuda on an H100-class GPU; not checked on this device.")
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if args.json:
        from fewshot_bench._io import atomic_write_json

        atomic_write_json(args.json, {
            "command": command_line("bench_extract.py", argv),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "device": str(device), "device_name": dev_name,
            "amp": None if amp is None else str(amp).replace("torch.", ""),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "load_average_before": load_before,
            "results": table.to_dict("records"), "checks": [{"check": n, "pass": ok} for n, ok in checks],
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
