"""Explanations: attribution maps (``explainers``), drawing (``drawing``) and the ``explain`` verb (``run``)."""
