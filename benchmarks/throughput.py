"""Training throughput: the project's loop vs the bare model step vs a classic DataLoader loop.

All three train the same model (depth, stem, input size, batch size, optimizer) in one run
on one device and report images per second:

* ``project``: :func:`xai_lab.train.train_steps`, exactly the loop ``fit`` runs: uint8 data on
  the device, indices drawn there, whole-batch augmentation there (``augment.strength``), the
  resize inside the model, bf16 autocast and channels_last on CUDA.
* ``bare_step``: forward + backward + optimizer step on one float batch already on the device
  (no data handling at all): the ceiling.
* ``dataloader``: torchvision ``ImageFolder`` over PNG files, PIL transforms of the same
  augmentation (RandomAffine, flip, ColorJitter, Resize, RandomErasing), a ``DataLoader`` with
  worker processes and pinned memory: the usual way.

Prints one JSON line with ``project_img_per_s``, ``bare_step_img_per_s``,
``dataloader_img_per_s``, ``ratio_vs_bare``, ``ratio_vs_dataloader``, the device and the settings.

    python benchmarks/throughput.py                      # ResNet18, 48 px, bs 256
    python benchmarks/throughput.py --depth 50 --input-size 112
    python benchmarks/throughput.py --smoke              # seconds, to check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xai_lab.config import AugmentConfig, ExperimentConfig, ModelConfig, TrainConfig
from xai_lab.data.synthfaces import CLASSES, generate
from xai_lab.device import autocast, resolve_device
from xai_lab.models import build_model
from xai_lab.train import make_optimizer, train_steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(cfg: ExperimentConfig, device: torch.device, num_classes: int):
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes, 1).to(device)
    if device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg.train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    step_model = torch.compile(model) if cfg.train.compile else model
    return model.train(), step_model, optimizer, scheduler


def project_loop(cfg: ExperimentConfig, images: np.ndarray, labels: np.ndarray, device):
    """``run(n)``: n steps of the project's training loop."""
    _, step_model, opt, sched = _setup(cfg, device, len(CLASSES))
    x = torch.from_numpy(images).to(device)
    y = torch.from_numpy(labels).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    bs = cfg.train.batch_size

    def run(n):
        order = torch.randint(0, len(x), (n * bs,), generator=gen, device=device)
        loss = train_steps(step_model, opt, sched, x, y, order, n, cfg, gen)
        float(loss)  # the loop's one sync

    return run


def bare_loop(cfg: ExperimentConfig, device):
    """``run(n)``: n forward/backward/optimizer steps on one batch already on the device."""
    _, step_model, opt, _ = _setup(cfg, device, len(CLASSES))
    bs, size = cfg.train.batch_size, cfg.model.input_size
    x = torch.rand(bs, 1, size, size, device=device)  # already at the model's input size
    if device.type == "cuda" and cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, len(CLASSES), (bs,), device=device)

    def run(n):
        for _ in range(n):
            with autocast(device, cfg.train.amp):
                logits = step_model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def _write_folder(images: np.ndarray, labels: np.ndarray, root: Path) -> None:
    from PIL import Image

    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        d = root / CLASSES[lab]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(d / f"{i:05d}.png")


def dataloader_loop(cfg: ExperimentConfig, folder: Path, device, workers: int):
    """``run(n)``: n steps fed by ImageFolder + PIL transforms + a DataLoader with workers."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    a, s = cfg.augment, cfg.augment.strength
    size = cfg.model.input_size
    tf = T.Compose([
        T.Grayscale(1),
        T.RandomAffine(a.rotation_deg * s, translate=(a.translate * s,) * 2, scale=(1 - a.scale * s, 1 + a.scale * s)),
        T.RandomHorizontalFlip(a.flip * s),
        T.ColorJitter(brightness=a.brightness * s, contrast=a.contrast * s),
        T.Resize(size),
        T.ToTensor(),
        T.Normalize((0.449,), (0.226,)),
        T.RandomErasing(p=a.erase_prob * s, scale=(0.02, max(0.02, a.erase_area * s))),
    ])
    loader = DataLoader(ImageFolder(str(folder), transform=tf), batch_size=cfg.train.batch_size, shuffle=True,
                        num_workers=workers, pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=workers > 0)
    model, _, opt, _ = _setup(cfg, device, len(CLASSES))
    backbone = model.backbone  # the loader already resized and normalised

    batches = iter(())

    def run(n):
        nonlocal batches
        done = 0
        while done < n:
            for x, y in batches:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if device.type == "cuda" and cfg.train.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device, cfg.train.amp):
                    logits = backbone(x)
                loss = F.cross_entropy(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
                if done == n:
                    break
            else:
                batches = iter(loader)

    return run


def measure(loops: dict, steps: int, warmup: int, rounds: int, batch_size: int, device) -> dict[str, float]:
    """Images/s of each loop: warm each up, then time them in turn, ``rounds`` times; the median."""
    for run in loops.values():
        run(warmup)
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(rounds):
        for name, run in loops.items():
            _sync(device)
            t0 = time.perf_counter()
            run(steps)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: steps * batch_size / float(np.median(t)) for name, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=18, choices=[18, 34, 50])
    p.add_argument("--input-size", type=int, default=48)
    p.add_argument("--stem", default="imagenet", choices=["imagenet", "small"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--strength", type=float, default=0.5, help="augment.strength")
    p.add_argument("--steps", type=int, default=None, help="timed steps per loop (default: 50 on GPU, 5 on CPU)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds, loops taking turns (median reported)")
    p.add_argument("--images", type=int, default=4096, help="images in the dataset")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: all cores - 1)")
    p.add_argument("--compile", action="store_true", help="train.compile: torch.compile the model")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--smoke", action="store_true", help="tiny: checks that it runs, not how fast")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    if args.smoke:
        args.batch_size, args.images, steps, warmup, rounds = 8, 64, 2, 1, 1
    else:
        steps = args.steps or (30 if device.type == "cuda" else 4)
        warmup = 10 if device.type == "cuda" else 3
        rounds = args.rounds
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 1)
    if args.smoke:
        workers = min(workers, 1)
    cfg = ExperimentConfig(
        model=ModelConfig(depth=args.depth, input_size=args.input_size, stem=args.stem),
        train=TrainConfig(batch_size=args.batch_size, amp=not args.no_amp, channels_last=not args.no_channels_last,
                          compile=args.compile),
        augment=AugmentConfig(strength=args.strength),
    )
    faces = generate(n_per_class=max(1, args.images // len(CLASSES)), seed=0)
    images, labels = faces.images[:, None], faces.labels

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        _write_folder(images, labels, Path(tmp))
        loops = {
            "project": project_loop(cfg, images, labels, device),
            "bare": bare_loop(cfg, device),
            "dataloader": dataloader_loop(cfg, Path(tmp), device, workers),
        }
        speed = measure(loops, steps, warmup, rounds, args.batch_size, device)
    project, bare, dataloader = speed["project"], speed["bare"], speed["dataloader"]
    result = {
        "benchmark": "throughput",
        "project_img_per_s": round(project, 1),
        "bare_step_img_per_s": round(bare, 1),
        "dataloader_img_per_s": round(dataloader, 1),
        "ratio_vs_bare": round(project / bare, 3),
        "ratio_vs_dataloader": round(project / dataloader, 3),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "peak_gpu_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
        "settings": {"depth": args.depth, "input_size": args.input_size, "stem": args.stem,
                     "batch_size": args.batch_size, "augment_strength": args.strength, "steps": steps, "rounds": rounds,
                     "dataloader_workers": workers, "amp_bf16": cfg.train.amp and device.type == "cuda",
                     "channels_last": cfg.train.channels_last and device.type == "cuda", "compile": args.compile,
                     "torch": torch.__version__, "smoke": args.smoke},
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
