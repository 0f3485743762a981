"""Explanations: attribution maps (``explainers``), their scores (``metrics``), drawing (``drawing``),
the ``explain`` verb (``run``) and studies that train, explain and plot against a knob (``study``)."""
