"""What each trial and report task asks Ray for, and whether the cluster can give it.

``resources.gpu: auto`` packs small trials several to a GPU (:func:`packing_fraction`);
``fanout.gpu: auto`` gives a report task a quarter of a GPU when there is one. Before anything is
submitted, :func:`check_feasible` compares each request with the cluster's nodes: Ray would otherwise
wait forever for a request no node can hold (its autoscaler prints "No available node types can
fulfill resource request" every 35 s), so an impossible request is an error naming the request and
what the cluster has.
"""

from __future__ import annotations

import logging
import math

import ray

from sweeps.config import SweepConfig
from xai_lab.config import ModelConfig
from xai_lab.errors import UserError
from xai_lab.models import work_per_image

log = logging.getLogger(__name__)

# Packing rule for resources.gpu: auto, from the one-H200 figures in ../shared/DESIGN.md (bf16,
# channels_last): ResNet18 at 48 px trains at ~18,000 img/s alone at batch 128 and four such trials
# packed on one GPU reach ~55,000 together (3x): one small trial leaves most of the GPU idle. A trial's
# work per image is its model's FLOPs relative to ResNet18 at 48 px (xai_lab.models.work_per_image:
# ResNet18 : 34 : 50 ~ 1 : 2 : 2.3, the CIFAR-style ResNet-20 ~1.1), times (input_size / 48) ** 2, and
# a trial big enough to fill the GPU on its own (ResNet34/50 at 112 px, 19,500 / 13,000 img/s alone)
# gains nothing from sharing it. Only the ResNet18-at-48 point is measured; the others follow from the
# work per image. Re-measure with benchmarks/packing.py on the GPU you sweep on and move the thresholds
# if its figures say so.
PACK_FRACTIONS = ((2.0, 0.25), (6.0, 0.5))  # (largest work per image relative to ResNet18@48, fraction)

# A report task's GPU share under fanout.gpu: auto (four report tasks share one GPU).
FANOUT_GPU_SHARE = 0.25


def packing_fraction(model: ModelConfig) -> float:
    """The GPU fraction of one trial under ``resources.gpu: auto``: 0.25 (four per GPU) for ResNet18 up
    to ~64 px, ResNet34 and the CIFAR-style ResNets up to ResNet-32 at 48 px; 0.5 (two per GPU) for
    mid-sized work (ResNet18 at 96-112 px, ResNet50 at 48 px); a whole GPU for ResNet34/50 at 96-112 px
    and larger."""
    work = work_per_image(model)
    for limit, fraction in PACK_FRACTIONS:
        if work <= limit:
            return fraction
    return 1.0


def trial_resources(cfg: SweepConfig, model: ModelConfig | None = None) -> dict[str, float]:
    """CPUs and GPUs of one trial (``model``: its ModelConfig, for ``gpu: auto``).

    GPU ``auto``: 0 without GPUs; else :func:`packing_fraction` of the trial's depth and input
    size, but never a smaller share than ``max_concurrent`` trials need to spread over the GPUs
    (with 8 GPUs and 4 trials in flight, each gets a whole GPU). CPU ``auto``: the CPUs shared
    equally by ``max_concurrent`` trials.
    """
    total = ray.cluster_resources()
    n_gpu, n_cpu = total.get("GPU", 0.0), total.get("CPU", 1.0)
    conc = cfg.search.max_concurrent
    gpu = cfg.resources.gpu
    if gpu == "auto":
        if n_gpu < 1:
            gpu = 0.0
        else:
            share = 1.0 if conc <= n_gpu else 1.0 / math.ceil(conc / n_gpu)
            gpu = max(share, packing_fraction(model)) if model is not None else share
    cpu = cfg.resources.cpu
    if cpu == "auto":
        cpu = max(1.0, math.floor(n_cpu / conc))
    return {"cpu": float(cpu), "gpu": float(gpu)}


def fanout_resources(cfg: SweepConfig) -> dict[str, float]:
    """CPUs and GPUs of one report task; ``fanout.gpu: auto`` is a quarter of a GPU when Ray sees any, else 0."""
    gpu = cfg.fanout.gpu
    if gpu == "auto":
        gpu = FANOUT_GPU_SHARE if ray.cluster_resources().get("GPU", 0.0) >= 1 else 0.0
    return {"cpu": float(cfg.fanout.cpu), "gpu": float(gpu)}


def node_capacities() -> list[dict[str, float]]:
    """The CPU and GPU totals of each alive node."""
    return [
        {"cpu": float(n["Resources"].get("CPU", 0.0)), "gpu": float(n["Resources"].get("GPU", 0.0))}
        for n in ray.nodes()
        if n.get("Alive")
    ]


def describe_cluster(nodes: list[dict[str, float]]) -> str:
    """``2 nodes: 8 CPU + 1 GPU, 4 CPU + 0 GPU`` (what an error shows beside the request)."""
    if not nodes:
        return "no alive node"
    each = ", ".join(f"{n['cpu']:g} CPU + {n['gpu']:g} GPU" for n in nodes)
    return f"{len(nodes)} node{'s' * (len(nodes) != 1)}: {each}"


def check_feasible(request: dict[str, float], what: str, *, autoscaling: bool) -> None:
    """Raise a :class:`UserError` when no node can hold ``request`` (``{"cpu": c, "gpu": g}``).

    Args:
        request: one trial's or one report task's resources (one placement-group bundle).
        what: the sweep keys that set it, for the message (``resources.gpu=0.25 ...``).
        autoscaling: the driver is connected to a cluster (``--address``), whose autoscaler may add nodes
            of a type the cluster has none of yet (cluster.yaml starts with zero GPU workers): the request is
            then logged and left to the autoscaler instead of refused.
    """
    nodes = node_capacities()
    if any(request["cpu"] <= n["cpu"] and request["gpu"] <= n["gpu"] for n in nodes):
        return
    asked = f"{request['cpu']:g} CPU + {request['gpu']:g} GPU"
    if autoscaling:
        log.warning("no node can hold %s (%s) yet; waiting for the cluster's autoscaler to add one (%s)",
                    asked, what, describe_cluster(nodes))
        return
    raise UserError(
        f"{what} asks each task for {asked}, which no node can hold ({describe_cluster(nodes)}); "
        "lower it or set it to auto"
    )
