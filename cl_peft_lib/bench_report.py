"""The benchmark suite's report: text and Markdown tables of a results JSON (``cl-peft-bench/1``).

The suite (``benchmarks/bench.py``, package ``benchmarks/clbench``) writes the JSON; this module
only reads it, so that chapter 7 renders its tables from the installed library (on Colab the
repository's ``benchmarks/`` folder is not there) and the suite's ``--show`` prints the same.

Chapter: ``notebooks/07_efficiency.ipynb``.
"""
from __future__ import annotations


def format_table(res: dict) -> str:
    """A compact text table of the results (the last lines of the output)."""
    p = res["provenance"]
    lines = [f"== cl-peft benchmark ({res['mode']}) on {p.get('gpu') or p.get('device')} | torch {p['torch']} "
             f"timm {p['timm']} peft {p['peft']} | {p['date']} | backbone {p.get('backbone')}"]
    c = res.get("ceiling")
    if c:
        lines.append(f"ceiling: {c['dtype']} {c['n']}^3 matmul {c['tflops']:.4g} TFLOP/s")
    rf = res.get("reference_flops")
    if rf:
        lines.append(f"ViT fwd FLOPs/img counted {rf['vit_fwd_flops_per_img_counted'] / 1e9:.3f} G vs analytic "
                     f"{rf['vit_fwd_flops_per_img_analytic'] / 1e9:.3f} G ({'ok' if rf['ok'] else 'MISMATCH'})")
    hdr = (f"{'config':<22}{'bs':>5}{'train/s':>9}{'xFT':>6}{'xLoRA':>6}{'inf/s':>9}{'merged':>8}{'xViT':>6}"
           f"{'GiB':>7}{'params':>11}{'GF/img':>8}{'MFU':>6}")
    lines += [hdr, "-" * len(hdr)]
    for r in res.get("configs", []):
        name = r["name"] + ("+fused" if r.get("fused_optimizer") else "") + ("+compile" if r.get("compile") else "")
        if r["status"] != "ok":
            lines.append(f"{name:<22}{r['batch_size']:>5}  {r['status'].upper()}: "
                         f"{(r.get('error') or r.get('note') or '')[:70]}")
            continue
        inf = r.get("infer_img_s", {})
        i_m = inf.get("inference_mode")
        merged = inf.get("merged_inference_mode")
        xvit = (r.get("infer_ratio_plain_vit") or {}).get("merged_inference_mode" if merged else "inference_mode")

        def fmt(v, w, spec):
            return f"{format(v, spec):>{w}}" if v is not None else f"{'-':>{w}}"
        lines.append(f"{name:<22}{r['batch_size']:>5}{fmt(r.get('train_img_s'), 9, '.0f')}"
                     f"{fmt(r.get('train_ratio_ref_full_ft'), 6, '.2f')}{fmt(r.get('train_ratio_ref_peft_lora'), 6, '.2f')}"
                     f"{fmt(i_m, 9, '.0f')}{fmt(merged, 8, '.0f')}{fmt(xvit, 6, '.2f')}"
                     f"{fmt(r.get('peak_mem_train_gib'), 7, '.2f')}{fmt(r.get('trainable_params'), 11, 'd')}"
                     f"{fmt((r.get('flops_train_per_img') or 0) / 1e9 or None, 8, '.2f')}{fmt(r.get('mfu'), 6, '.3f')}")
    for sk in res.get("skipped", []):
        lines.append(f"skipped {sk['method']}: {sk['reason']}")
    if res.get("targets"):
        lines.append("targets:")
        for t in res["targets"]:
            mark = {True: "PASS", False: "FAIL", None: "n/a "}[t["pass"]]
            extra = ""
            if t.get("pass_any") is not None and t.get("pass_any") != t["pass"]:
                extra = f" (with fused/compile: {'PASS' if t['pass_any'] else 'FAIL'})"
            if t.get("adapted_pass_merged_ratio") is not None:
                extra += f" (routed pass alone: {t['adapted_pass_merged_ratio']:.3f})"
            val = "-" if t["value"] is None else f"{t['value']:.4g}"
            lines.append(f"  {mark} {t['name']}: {val} {t['op']} {t['threshold']}{extra}")
    for e in res.get("e2e", []):
        if e.get("status") == "complete":
            lines.append(f"e2e {e['method']}: {e['wall_s']:.1f} s wall (train {e.get('train_s', 0):.1f}, "
                         f"eval {e.get('eval_s', 0):.1f}; bs {e.get('batch_size')}, {e.get('epochs')} ep x "
                         f"{e.get('tasks')} tasks), loader wait {e.get('loader_wait_s', 0):.2f} s "
                         f"({100 * e.get('loader_wait_frac', 0):.1f}%)")
        else:
            lines.append(f"e2e {e['method']}: {e.get('status')} {(e.get('error') or e.get('note') or '')[:100]}")
    for n in res.get("notes", []):
        lines.append(f"note: {n[:300]}")
    return "\n".join(lines)


def format_markdown(res: dict) -> str:
    """The micro-benchmark results as a Markdown table (for README and the efficiency chapter)."""
    p = res["provenance"]
    c = res.get("ceiling") or {}
    out = [f"{p.get('gpu') or p.get('device')}, torch {p['torch']}, timm {p['timm']}, peft {p['peft']}, {p['date']}, "
           f"backbone `{p.get('backbone')}`, ceiling {c.get('dtype')} {c.get('tflops', 0):.4g} TFLOP/s "
           f"(schema {res.get('schema')}, commit {p.get('commit')})", "",
           "| config | batch | train img/s | x full-FT ref | x peft-LoRA ref | infer img/s | merged img/s | "
           "peak GiB (train) | trainable params | train GFLOP/img | MFU |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v, spec):
        return "-" if v is None else format(v, spec)
    for r in res.get("configs", []):
        name = f"`{r['name']}`" + (" fused" if r.get("fused_optimizer") else "") + (" compiled" if r.get("compile") else "")
        if r["status"] != "ok":
            out.append(f"| {name} | {r['batch_size']} | {r['status']} | | | | | | | | |")
            continue
        inf = r.get("infer_img_s", {})
        gf = (r.get("flops_train_per_img") or 0) / 1e9 or None
        out.append(f"| {name} | {r['batch_size']} | {f(r.get('train_img_s'), ',.0f')} | "
                   f"{f(r.get('train_ratio_ref_full_ft'), '.2f')} | {f(r.get('train_ratio_ref_peft_lora'), '.2f')} | "
                   f"{f(inf.get('inference_mode'), ',.0f')} | {f(inf.get('merged_inference_mode'), ',.0f')} | "
                   f"{f(r.get('peak_mem_train_gib'), '.1f')} | {f(r.get('trainable_params'), ',d')} | {f(gf, '.2f')} | "
                   f"{f(r.get('mfu'), '.3f')} |")
    if res.get("targets"):
        out += ["", "| target | value | threshold | pass |", "|---|---:|---:|---|"]
        for t in res["targets"]:
            out.append(f"| {t['name']} | {f(t['value'], '.4g')} | {t['op']} {t['threshold']} | "
                       f"{ {True: 'yes', False: 'no', None: 'n/a'}[t['pass']] } |")
    return "\n".join(out)


# ---------------------------------------------------------------- the tables of chapter 7
def train_throughput(c: dict) -> float | None:
    """A config's training images/s; None for a method that trains no backbone pass by backprop (RanPAC:
    a closed-form solve), which the tables write as "no backprop" and the explorers leave at 0."""
    return c.get("train_img_s")


def _num(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def configs_markdown(res: dict, bs: int | None = None) -> str:
    """Chapter 7's table of the measured configs (all batch sizes, or ``bs``): throughputs, their ratios
    to the references and to the plain ViT, trainable parameters, MFU and peak training memory. A config
    measured with its optimizer's ``fused=True`` implementation is named ``"<method> (fused optimizer)"``."""
    rows = [c for c in res["configs"] if c.get("status") == "ok" and (bs is None or c["batch_size"] == bs)]
    head = ("| config | batch | compiled | train img/s | × full FT | × peft LoRA | infer img/s | × plain ViT | params | "
            "MFU | peak mem (GiB) |")
    out = [head, "|" + "---|" * 11]
    for c in rows:
        inf = c["infer_img_s"]["inference_mode"] if isinstance(c["infer_img_s"], dict) else c["infer_img_s"]
        ratio = c.get("infer_ratio_plain_vit") or {}
        ratio = ratio.get("inference_mode") if isinstance(ratio, dict) else ratio
        name = c["name"] + (" (fused optimizer)" if c.get("fused_optimizer") else "")
        tr = train_throughput(c)
        train = "no backprop" if tr is None else f"{tr:,.0f}"
        out.append(f"| {name} | {c['batch_size']} | {'yes' if c.get('compile') else 'no'} | {train} | "
                   f"{_num(c.get('train_ratio_ref_full_ft'), '.2f')} | {_num(c.get('train_ratio_ref_peft_lora'), '.2f')} | "
                   f"{inf:,.0f} | {_num(ratio, '.2f')} | {c['trainable_params']:,} | "
                   f"{_num(c.get('mfu'), '.2f')} | {_num(c.get('peak_mem_train_gib'), '.1f')} |")
    return "\n".join(out)


def runs_note(res: dict, bs: int | None = None) -> str:
    """A sentence for a results file that several benchmark runs wrote (``--append``): ratios and MFU are per
    run, and which rows (of batch ``bs``, or all) carry no ratio because their run measured no reference;
    ``""`` for a file of one run."""
    runs = res.get("ceiling_runs") or []
    if len(runs) < 2:
        return ""
    rows = [c for c in res["configs"] if c.get("status") == "ok" and (bs is None or c["batch_size"] == bs)]
    bare = sorted({c["name"] for c in rows if c.get("run", 0) > 0 and c.get("train_ratio_ref_full_ft") is None
                   and not c.get("infer_ratio_plain_vit")})
    return (f"The file holds {len(runs)} benchmark runs; each row's ratios (× full FT, × peft LoRA, × plain ViT) "
            f"come from references measured in its own run, and its MFU from its own run's matmul ceiling "
            f"({', '.join(f'{t:.0f}' for t in runs if t)} TFLOP/s)."
            + (f" Rows added by a later run without references show no ratio: {', '.join(bare)}." if bare else ""))


def targets_markdown(res: dict) -> str:
    """Chapter 7's table of the targets; ``pass`` counts fused/compiled variants too (``pass_any``); below it, for
    each missed training target that a profiler trace covers, the trace's reading (``explained_by_trace``), and for
    each missed two-pass target the reading of its measured passes (``explained``)."""
    lines = ["| target | value | threshold | pass |", "|---|---|---|---|"]
    for t in res.get("targets", []):
        ok = t.get("pass_any", t.get("pass"))
        v = t.get("value")
        lines.append(f"| {t['name']} | {'-' if v is None else f'{v:,.3g}'} | {t['op']} {t['threshold']:,} | "
                     f"{'n/a (CPU)' if ok is None else ('yes' if ok else 'no')} |")
    why = [f"- **{t['name']}**, read off the profiler traces: {t['explained_by_trace']}"
           for t in res.get("targets", []) if t.get("explained_by_trace")]
    why += [f"- **{t['name']}**, read off the measured passes: {t['explained']}"
            + (f" (compiled: {t['compiled']:.3f} of the compiled limit)" if t.get("compiled") is not None else "")
            for t in res.get("targets", []) if t.get("explained")]
    return "\n".join(lines + ([""] + why if why else []))


def e2e_lines(res: dict) -> list[str]:
    """One line per end-to-end run: status, wall time and the share of it spent waiting for batches."""
    nan = float("nan")
    return [f"end-to-end {e.get('method')}: {e.get('status')}, wall {e.get('wall_s', nan):.0f} s, "
            f"loader wait {100 * e.get('loader_wait_frac', nan):.1f}%" for e in res.get("e2e") or []]


def fp16_markdown(res: dict) -> str:
    """The appendix's table of a run under ``CL_PEFT_AMP=fp16`` (the T4's path, GradScaler on): per method,
    peak GPU memory of the training step and of ``predict``, the steps the scaler skipped, and throughput.

    Chapter: ``book/appendix_paper_track.md`` ("fp16 on the H200").
    """
    p, s = res["provenance"], res["settings"]
    steps = s["warmup"] + s["steps"] * s["repeats"]
    rows = ["| method | batch | peak memory, training step (GiB) | peak memory, predict (GiB) | "
            f"skipped steps (of {steps}) | train img/s |", "|---|---:|---:|---:|---:|---:|"]
    done = [r for r in res.get("configs", []) if r.get("status") == "ok"]
    for r in sorted(done, key=lambda r: r["method"]):
        def num(k, spec):
            return format(r[k], spec) if r.get(k) is not None else "-"
        rows.append(f"| {r['method']} | {r['batch_size']} | {num('peak_mem_train_gib', '.2f')} | "
                    f"{num('peak_mem_infer_gib', '.2f')} | {r.get('fp16_skipped_steps', '-')} | {num('train_img_s', ',.0f')} |")
    missing = [m for m in s["methods"] if m not in {r["method"] for r in done}]
    note = (f"\n\nNot measured in this run (its time budget ended first): {', '.join(missing)}." if missing else "")
    dates = ", ".join(dict.fromkeys(str(r.get("date")) for r in [p, *res.get("provenance_runs", [])]))
    return ("\n".join(rows) + f"\n\n{p.get('gpu') or p.get('device')}, {dates}, autocast "
            f"{p.get('amp_dtype')}, backbone `{p.get('backbone')}` (random weights), one synthetic task at 224 px."
            + note)
