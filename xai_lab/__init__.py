"""xai-lab: train ResNets on facial-expression datasets and explain what they learned.

The library never imports Ray: every function here works in a plain process, a
notebook, or a Ray trial (see the ``sweeps`` package for the orchestration).
"""

__version__ = "0.1.0"
