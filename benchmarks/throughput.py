"""Training throughput: the project's loop vs the bare model step vs a classic DataLoader loop.

All three train the same model (depth, stem, input size, batch size, optimizer) in one run
on one device and report images per second:

* ``project``: :func:`xai_lab.train.train_steps`, exactly the loop ``fit`` runs: uint8 data on
  the device, indices drawn there, whole-batch augmentation there (``augment.strength``), the
  resize inside the model, bf16 autocast (CUDA, or a CPU with AMX / AVX512-BF16) and channels_last.
* ``bare_step``: forward + backward + optimizer step on one float batch already on the device
  (no data handling at all): the ceiling.
* ``dataloader``: torchvision ``ImageFolder`` over PNG files, PIL transforms of the same
  augmentation (RandomAffine, flip, ColorJitter, Resize, RandomErasing), a ``DataLoader`` with
  worker processes and pinned memory: the usual way.

Each depth and input size (default ResNet 18/34/50 at 48 and 112 px; ``--depths 20`` is the CIFAR-style
ResNet-20) is one setting: the three loops at the project's defaults (bf16 autocast where the device
computes bf16 natively, channels_last, cuDNN benchmark mode on CUDA; no torch.compile), then the
project's loop once per measured switch, each flipped alone:
``compile`` (``train.compile: true``; its compile time is the first step's), ``cudnn_benchmark``,
``channels_last`` and ``bf16`` (each off). All loops of a setting take turns in timed rounds, so a
busy machine slows them alike; the median round counts. Peak GPU memory is reported per loop.

Prints one JSON line: ``results`` holds one row per setting with ``project_img_per_s``,
``bare_step_img_per_s``, ``dataloader_img_per_s``, ``ratio_vs_bare``, ``ratio_vs_dataloader``,
``fer2013_epoch_s`` (28,709 images at the project's rate), ``peak_gpu_mem_mb`` and ``switches``.

    python benchmarks/throughput.py                                  # the whole grid
    python benchmarks/throughput.py --depths 18 --input-sizes 112 --switches compile
    python benchmarks/throughput.py --smoke                          # seconds, to check that it runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xai_lab.config import AugmentConfig, ExperimentConfig, ModelConfig, TrainConfig
from xai_lab.data.synthfaces import CLASSES, generate
from xai_lab.device import autocast, bf16_on, resolve_device
from xai_lab.models import MODELS, build_model, get_spec, resolve_model_config
from xai_lab.train import make_optimizer, train_steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(cfg: ExperimentConfig, device: torch.device, num_classes: int):
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes, 1).to(device)
    if cfg.train.channels_last:
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
    if cfg.train.channels_last:
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
                if cfg.train.channels_last:
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


SWITCHES = ("compile", "cudnn_benchmark", "channels_last", "bf16")
DEPTHS = tuple(sorted(spec.depth for spec in MODELS.values()))
FER2013_TRAIN_IMAGES = 28_709


def _variant(cfg: ExperimentConfig, switch: str) -> ExperimentConfig:
    """``cfg`` with one switch flipped from the project's default (compile on; the others off)."""
    train = dataclasses.replace(
        cfg.train,
        compile=switch == "compile",
        cudnn_benchmark=cfg.train.cudnn_benchmark and switch != "cudnn_benchmark",
        channels_last=cfg.train.channels_last and switch != "channels_last",
        amp=cfg.train.amp and switch != "bf16",
    )
    return dataclasses.replace(cfg, train=train)


def _with_cudnn_flag(run, flag: bool):
    """cuDNN's benchmark mode is process-wide: set it before each call of ``run``."""

    def wrapped(n):
        torch.backends.cudnn.benchmark = flag
        run(n)

    return wrapped


def measure(loops: dict, steps: int, warmup: int, rounds: int, batch_size: int, device) -> dict[str, dict]:
    """Each loop: warm up (the first call timed apart: compile time), then the loops take turns,
    ``rounds`` times; images/s is the median. Peak GPU memory is taken over each loop's warm-up."""
    out: dict[str, dict] = {}
    for name, run in loops.items():
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t0 = time.perf_counter()
        run(1)
        _sync(device)
        first = time.perf_counter() - t0
        run(warmup)
        _sync(device)
        out[name] = {"first_step_s": first,
                     "peak_gpu_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2**20)
                     if device.type == "cuda" else None}
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(rounds):
        for name, run in loops.items():
            _sync(device)
            t0 = time.perf_counter()
            run(steps)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    for name, t in times.items():
        out[name]["img_per_s"] = steps * batch_size / float(np.median(t))
    return out


def _csv(kind, choices=None):
    def parse(text: str):
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if choices is not None and any(v not in choices for v in values):
            values = []
        if not values and text.strip().lower() != "none":
            valid = ", ".join(map(str, choices)) if choices else "numbers"
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {valid}, got {text!r}")
        return values

    return parse


def measure_setting(args, depth: int, size: int, switches: list[str], images, labels, folder: Path, device,
                    steps: int, warmup: int, rounds: int, workers: int) -> dict:
    """One depth and input size: project vs bare vs DataLoader, and the project loop with each switch."""
    cifar = get_spec(resolve_model_config(ModelConfig(depth=depth)).name).family == "cifar"
    cfg = ExperimentConfig(
        model=ModelConfig(depth=depth, input_size=size, stem="auto" if cifar else args.stem),
        train=TrainConfig(batch_size=args.batch_size, amp=True, channels_last=True, compile=False,
                          cudnn_benchmark=True),
        augment=AugmentConfig(strength=args.strength),
    )
    cuda = device.type == "cuda"
    loops = {
        "project": _with_cudnn_flag(project_loop(cfg, images, labels, device), True),
        "bare": _with_cudnn_flag(bare_loop(cfg, device), True),
        "dataloader": _with_cudnn_flag(dataloader_loop(cfg, folder, device, workers), True),
    }
    for switch in switches:
        variant = _variant(cfg, switch)
        loops[switch] = _with_cudnn_flag(project_loop(variant, images, labels, device), variant.train.cudnn_benchmark)
    speed = measure(loops, steps, warmup, rounds, args.batch_size, device)
    project, bare, dataloader = (speed[k]["img_per_s"] for k in ("project", "bare", "dataloader"))
    row = {
        "depth": depth,
        "input_size": size,
        "project_img_per_s": round(project, 1),
        "bare_step_img_per_s": round(bare, 1),
        "dataloader_img_per_s": round(dataloader, 1),
        "ratio_vs_bare": round(project / bare, 3),
        "ratio_vs_dataloader": round(project / dataloader, 3),
        "fer2013_epoch_s": round(FER2013_TRAIN_IMAGES / project, 2),
        "peak_gpu_mem_mb": {k: speed[k]["peak_gpu_mem_mb"] for k in ("project", "bare", "dataloader")},
        "switches": {},
    }
    for switch in switches:
        r = speed[switch]
        row["switches"][switch] = {
            "setting": "on" if switch == "compile" else "off",
            # cuDNN is CUDA's; bf16 needs a device that computes it natively: elsewhere the run repeats the default
            "applies": {"cudnn_benchmark": cuda, "bf16": bf16_on(device)}.get(switch, True),
            "project_img_per_s": round(r["img_per_s"], 1),
            "vs_default": round(r["img_per_s"] / project, 3),
            "peak_gpu_mem_mb": r["peak_gpu_mem_mb"],
            **({"compile_s": round(r["first_step_s"], 2)} if switch == "compile" else {}),
        }
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", type=_csv(int, DEPTHS), default=None,
                   help="default 18,34,50 (smoke: 18); CIFAR-style ResNets: 8,14,20,32,44,56")
    p.add_argument("--input-sizes", type=_csv(int), default=None, help="default 48,112 (smoke: 48)")
    p.add_argument("--switches", type=_csv(str, SWITCHES), default=None,
                   help=f"project-loop variants, each measured alone: {','.join(SWITCHES)} or none "
                        "(default: all on a GPU; all but compile on the CPU and in --smoke)")
    p.add_argument("--stem", default="imagenet", choices=["imagenet", "small"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--strength", type=float, default=0.5, help="augment.strength")
    p.add_argument("--steps", type=int, default=None, help="timed steps per loop (default: 30 on GPU, 4 on CPU)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds, loops taking turns (median reported)")
    p.add_argument("--images", type=int, default=4096, help="images in the dataset")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: all cores - 1)")
    p.add_argument("--device", default="auto")
    p.add_argument("--smoke", action="store_true", help="tiny: checks that it runs, not how fast")
    args = p.parse_args(argv)
    if min(args.batch_size, args.rounds, args.images, args.steps or 1) < 1:
        p.error("--batch-size, --rounds, --images and --steps must be at least 1")
    if any(s < 16 for s in args.input_sizes or []):
        p.error("--input-sizes must be at least 16")

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.smoke:
        torch.set_num_threads(1)  # tiny batches: more threads only fight over a busy machine's cores
    depths = args.depths or ([18] if args.smoke else [18, 34, 50])
    sizes = args.input_sizes or ([48] if args.smoke else [48, 112])
    switches = args.switches if args.switches is not None else [
        s for s in SWITCHES if cuda and not args.smoke or s != "compile"]
    if args.smoke:
        args.batch_size, args.images, steps, warmup, rounds = 8, 64, 2, 1, 1
    else:
        steps = args.steps or (30 if cuda else 4)
        warmup = 10 if cuda else 2
        rounds = args.rounds
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 1)
    if args.smoke:
        workers = min(workers, 1)
    faces = generate(n_per_class=max(1, args.images // len(CLASSES)), seed=0)
    images, labels = faces.images[:, None], faces.labels

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _write_folder(images, labels, Path(tmp))
        for depth in depths:
            for size in sizes:
                rows.append(measure_setting(args, depth, size, switches, images, labels, Path(tmp), device,
                                            steps, warmup, rounds, workers))
    result = {
        "benchmark": "throughput",
        "device": (torch.cuda.get_device_name(device) if cuda
                   else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"),
        "results": rows,
        "bf16": bf16_on(device),
        "settings": {"default": "bf16 autocast where native, channels_last, cudnn benchmark on CUDA; compile off",
                     "stem": args.stem, "batch_size": args.batch_size, "augment_strength": args.strength,
                     "steps": steps, "warmup": warmup, "rounds": rounds, "dataloader_workers": workers,
                     "torch": torch.__version__, "smoke": args.smoke},
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
