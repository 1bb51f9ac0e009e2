"""What the chapters share: run one method through the store, and the two checks every chapter makes.

* :func:`run_method`: one run of a method through the shared loop, in its run-store folder (a
  finished run is reused), returning the runner (the trained method inside, for inspection)
  and the results.
* :func:`check_trainable_params`: the run's trainable-parameter count equals the method's closed form.
* :func:`check_learned`: the first task was learnt, clearly above chance (chance over every class:
  all logits are scored, as the reference codes do).

Chapters: ``notebooks/03_prompt_tuning.ipynb`` and ``notebooks/04_lora.ipynb``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from .loop import RunConfig, Runner
from .methods import get_method_class
from .store import run_dir


def run_method(method: str, benchmark: str, profile: str, seed: int = 0, device: str | None = "auto",
               epochs: int | None = None, root: str = "runs", **options: Any) -> tuple[Runner, dict[str, Any]]:
    """Run (or reuse) ``method`` on ``benchmark``; ``epochs`` None keeps the method's (or profile's) default.

    A finished run is reused with its trained method (from its checkpoint). A finished result *without* a
    checkpoint (e.g. one that chapter 5 imported from the packaged results) holds no trained method to
    inspect, so it is trained again here and replaced.

    Returns:
        ``(runner, results)``: ``runner.method`` is the trained method.
    """
    if epochs is not None:
        options.setdefault("epochs", epochs)
    cfg = RunConfig(method, benchmark, profile, seed=seed, device=device, method_options=options, progress=False,
                    out_dir=str(run_dir(profile, benchmark, method, seed, options, root=root)))
    runner = Runner(cfg)
    if runner.finished_result() is not None and not runner.checkpoint_path.exists():
        runner.say("a finished result without its checkpoint: no trained method to inspect, training it again")
        runner = Runner(replace(cfg, resume=False))
    return runner, runner.run()


def check_trainable_params(runner: Runner, result: dict[str, Any]) -> int:
    """Assert that the run's trainable parameters equal the method's closed form; return that count."""
    s, b = runner.scenario, runner.backbone
    formula = get_method_class(runner.cfg.method).expected_trainable_params(
        runner.mcfg, b.num_features, s.num_classes, s.num_tasks, depth=len(b.blocks))
    if result["trainable_params"] != formula:
        raise AssertionError(f"{runner.cfg.method}: {result['trainable_params']:,} trainable parameters, "
                             f"closed form {formula:,}")
    return formula


def check_learned(runner: Runner, result: dict[str, Any], margin: float = 10.0) -> float:
    """Assert that the first task was learnt: ``R[0][0]`` above chance (100 / classes) by ``margin`` points."""
    chance = 100 / runner.scenario.num_classes
    first = result["accuracy_matrix"][0][0]
    if not first > chance + margin:
        raise AssertionError(f"{runner.cfg.method} did not learn its first task: {first:.1f}% (chance {chance:.1f}%)")
    return first
