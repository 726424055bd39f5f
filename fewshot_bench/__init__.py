"""fewshot-bench: benchmark image backbones on episodic few-shot classification.

The flow, one module (or package) per stage::

    data/  ->  episodes  ->  features  ->  methods/  ->  evaluate / stats  ->  report
    (splits)   (fixed tasks) (cached       (heads on      (per-episode acc,   (tables,
                             embeddings)    episodes)      CIs, tests)         plots)

``backbones/`` builds the feature extractors, ``train/`` fine-tunes them, and
``cli`` wires everything to the ``fewshot-bench`` command.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
