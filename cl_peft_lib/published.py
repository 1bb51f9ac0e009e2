"""Published numbers that are obtainable here, each with its source: the anchors beside our offline verdicts.

The paper's own tables (Wistuba et al. 2024) are not obtainable here (no internet; only its abstract
is quoted in the book), so its L2L/S-LoRA numbers are not listed. What is listed comes from the methods'
official repositories or from reproduction repositories, all with a ViT-B/16 pretrained on ImageNet-21k
(``vit_base_patch16_224`` in21k; S-Prompts in21k fine-tuned on in1k), at the paper track's settings —
not comparable to the offline track's numbers, which use another backbone and other data.

``python -m cl_peft_lib.published`` prints the Markdown table that the paper-track appendix holds
(a test checks that the two agree).

Chapters: ``book/appendix_paper_track.md``, ``notebooks/05_head_to_head.ipynb``,
``notebooks/08_after_the_swap.ipynb``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    """One published result.

    Attributes:
        method: our method name (:data:`cl_peft_lib.methods.METHODS`).
        benchmark: the benchmark as its source names it.
        accuracy: final average accuracy (%) (A_T).
        forgetting: forgetting (%) where the source gives it.
        std: the spread the source reports (± over its runs), where given.
        source: where the number is printed (repository and file).
        note: what the number is (backbone, what the source reports).
    """

    method: str
    benchmark: str
    accuracy: float
    forgetting: float | None
    std: float | None
    source: str
    note: str


#: The anchors, in the book's order (paper-era methods first).
PUBLISHED: tuple[Published, ...] = (
    Published("l2p", "Split CIFAR-100 (10 tasks)", 83.83, 7.63, None,
              "JH-LEE-KR/l2p-pytorch, README.md", "ViT-B/16 in21k; the PyTorch reimplementation's reported run"),
    Published("dualprompt", "Split CIFAR-100 (10 tasks)", 86.51, 5.16, None,
              "JH-LEE-KR/dualprompt-pytorch, README.md", "ViT-B/16 in21k; the PyTorch reimplementation's reported run"),
    Published("sprompts", "CORe50", 83.13, None, 0.51,
              "iamwangyabin/S-Prompts, README.md (Table 2)", "ViT-B/16 in21k→in1k, S-Prompts with ViT"),
    Published("sprompts", "DomainNet", 50.62, None, None,
              "iamwangyabin/S-Prompts, README.md (Table 2)", "ViT-B/16 in21k→in1k, S-Prompts with ViT"),
    Published("coda", "Split CIFAR-100 (10 tasks)", 86.3, None, None,
              "RL-VIG/LibContinual, reproduce/codaprompt/README.md (Results: reported 86.33, reproduced 86.22, vit_pt_imnet)", "ViT-B/16 in21k; the paper's number as LibContinual lists it (its reproduction: 86.22)"),
    Published("inflora", "Split CIFAR-100 (10 tasks)", 86.5, None, None,
              "RL-VIG/LibContinual, reproduce/inflora/README.md (Results: reported 86.51 ± 0.73 after the 10th task, reproduced 87.09)", "ViT-B/16 in21k; the paper's number as LibContinual lists it (its reproduction: 87.09)"),
    Published("ranpac", "Split CIFAR-100 (10 tasks)", 92.2, None, None,
              "RanPAC/RanPAC, paper_tables/Table_data_main_cifar224.csv (row 'Algorithm 1'; args/cifar224_publish.csv: pretrained_vit_b16_224_in21k)", "ViT-B/16 in21k; the authors' table"),
    Published("sdlora", "Split CIFAR-100 (10 tasks)", 87.26, None, None,
              "WuYichen-97/SD-Lora-CL, logs/C100.log (last 'CNN top1 curve' entry, after task 10)",
              "ViT-B/16 in21k→in1k (timm augreg2_in21k_ft_in1k); one run (seed 1994) of the official code's log, "
              "quoted here; the paper's table differs (88.01, as RL-VIG/LibContinual reproduce/sd_lora/README.md "
              "lists it as 'Reported Last Acc'; 87.26 is what it lists for the SD-LoRA-RR variant)"),
)


def for_method(method: str) -> list[Published]:
    """The anchors of ``method`` (possibly none)."""
    return [p for p in PUBLISHED if p.method == method]


def markdown_table(methods: tuple[str, ...] | None = None) -> str:
    """The anchors as a Markdown table (method, benchmark, A_T, forgetting, source)."""
    rows = ["| method | benchmark | final average accuracy (%) | forgetting (%) | source | what |",
            "| --- | --- | --- | --- | --- | --- |"]
    for p in PUBLISHED:
        if methods is not None and p.method not in methods:
            continue
        acc = f"{p.accuracy:.2f}" + (f" ± {p.std:.2f}" if p.std is not None else "")
        fg = f"{p.forgetting:.2f}" if p.forgetting is not None else "–"
        rows.append(f"| `{p.method}` | {p.benchmark} | {acc} | {fg} | {p.source} | {p.note} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
