"""The orchestration layer: Ray Tune + Optuna sweeps over xai_lab experiments.

``sweeps`` imports :mod:`xai_lab` and holds no training logic: the trainable calls
:func:`xai_lab.train.fit` and reports through its per-epoch callback; the fan-out runs
xai_lab's evaluate, plots and explain as Ray tasks; the comparison and the HTML report
read the files those wrote. See docs/sweeps.md.
"""
