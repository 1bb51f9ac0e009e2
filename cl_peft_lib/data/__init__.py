"""Data: offline and paper-scale loaders, scenarios, the benchmark registry.

Chapter: ``notebooks/01_continual_learning.ipynb`` (benchmarks and scenarios).
"""
from .base import DatasetNotFoundError, TensorImageDataset
from .scenarios import BENCHMARKS, Scenario, Task, build_benchmark, class_incremental, domain_incremental

__all__ = ["BENCHMARKS", "DatasetNotFoundError", "Scenario", "Task", "TensorImageDataset", "build_benchmark",
           "class_incremental", "domain_incremental"]
