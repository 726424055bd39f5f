"""Few-shot methods: heads that score query features against support features, batched over episodes.

>>> from fewshot_bench import methods
>>> head = methods.create("protonet")
>>> scores = head.scores(support, support_labels, query)  # (E, N*K, D), (E, N*K), (E, Q, D) -> (E, Q, N)

Built-ins register themselves; other packages add methods through the ``fewshot_bench.methods``
entry-point group; ``"path/to/file.py:ClassName"`` loads a class from a file.
"""

from __future__ import annotations

from . import bdcspn, cosine, knn, logistic, protonet, ridge, simnl, simpleshot, svm  # noqa: F401  (register)
from ._loading import ENTRY_POINT_GROUP, MethodInfo, available, create, describe, get_method_class
from .base import METHODS, FewShotMethod, register_method
from .bdcspn import BDCSPN
from .cosine import CosineCentroid
from .knn import KNearestNeighbours
from .laplacianshot import LaplacianShot
from .logistic import LogisticRegressionHead
from .protonet import ProtoNet
from .ptmap import PTMAP
from .ridge import RidgeHead
from .simnl import SimNL
from .simpleshot import SimpleShot
from .soft_kmeans import SoftKMeans
from .svm import CrammerSingerSVM
from .tim import TIM, AlphaTIM
from .transductive_finetuning import TransductiveFinetuning

__all__ = [
    "AlphaTIM",
    "BDCSPN",
    "CosineCentroid",
    "CrammerSingerSVM",
    "ENTRY_POINT_GROUP",
    "FewShotMethod",
    "KNearestNeighbours",
    "LaplacianShot",
    "LogisticRegressionHead",
    "METHODS",
    "MethodInfo",
    "PTMAP",
    "ProtoNet",
    "RidgeHead",
    "SimNL",
    "SimpleShot",
    "SoftKMeans",
    "TIM",
    "TransductiveFinetuning",
    "available",
    "create",
    "describe",
    "get_method_class",
    "register_method",
]
