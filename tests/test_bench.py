"""The benchmark suite (benchmarks/bench.py, package benchmarks/clbench) runs, writes its JSON schema,
measures what it says, and times the loop's own training step."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    import clbench

    return clbench


@pytest.fixture
def one_thread():
    """One thread: the micro model is too small to gain from two, and a loaded CI CPU punishes spinning threads."""
    n = torch.get_num_threads()
    yield 1
    torch.set_num_threads(n)


def _settings(bench, methods, threads):
    s = bench.preset("cpu")
    s.backbone, s.methods, s.batch_sizes = "test_vit_micro", methods, [8]
    s.warmup, s.steps, s.repeats, s.threads = 1, 2, 1, threads
    s.fused_methods, s.ceiling_n, s.ceiling_iters = [], 128, 2
    return s


def test_bench_cpu_schema(bench, one_thread, tmp_path):
    out = tmp_path / "bench.json"
    res = bench.run_benchmark(_settings(bench, ["finetune", "linear_probe"], one_thread), str(out), log=lambda _: None)
    on_disk = json.loads(out.read_text())
    assert on_disk["schema"] == bench.SCHEMA and on_disk["status"] == "complete"
    assert on_disk["configs"] == json.loads(json.dumps(res["configs"]))
    for k in ("torch", "timm", "peft", "date", "device", "backbone"):
        assert on_disk["provenance"][k]
    assert on_disk["ceiling"]["tflops"] > 0
    assert on_disk["reference_flops"]["ok"], on_disk["reference_flops"]

    cfgs = {c["name"]: c for c in on_disk["configs"]}
    assert set(cfgs) == {"finetune", "linear_probe", "ref_full_ft", "ref_peft_lora"}
    for c in cfgs.values():
        assert c["status"] == "ok", c.get("error")
        assert c["batch_size"] == 8 and c["compile"] is False
        assert c["train_img_s"] > 0 and c["train_step_ms"] > 0
        assert c["infer_img_s"]["no_grad"] > 0 and c["infer_img_s"]["inference_mode"] > 0
        assert c["flops_train_step"] > 0 and 0 < c["mfu"]
        assert c["train_ratio_ref_full_ft"] > 0 and c["train_ratio_ref_peft_lora"] > 0
    assert cfgs["ref_peft_lora"]["infer_img_s"]["merged_inference_mode"] > 0

    # trainable parameters: what the method itself reports when built through the public API as the loop does
    from cl_peft_lib.backbones import create_backbone
    from cl_peft_lib.methods import get_method_class

    C, T = bench.SHAPES["cpu"]["class"]
    for name in ("finetune", "linear_probe"):
        cls = get_method_class(name)
        m = cls(create_backbone("test_vit_micro"), "class", C, T, cls.config_cls(batch_size=8))
        m.begin_task(0, list(range(C // T)))
        assert cfgs[name]["trainable_params"] == m.num_trainable() == cfgs[name]["optimizer_params"]
    vit = create_backbone("test_vit_micro")
    assert cfgs["ref_full_ft"]["trainable_params"] == sum(p.numel() for p in vit.parameters()) + vit.num_features * C + C
    # frozen backbone: no weight gradients, so fewer FLOPs per step than full fine-tuning
    assert cfgs["linear_probe"]["flops_train_step"] < cfgs["finetune"]["flops_train_step"]

    names = [t["name"] for t in on_disk["targets"]]
    assert "finetune_train_img_s_bs8" in names and "lora_train_img_s_bs8" in names
    for t in on_disk["targets"]:
        assert set(t) >= {"name", "value", "threshold", "pass", "note"}
        assert t["pass"] is None  # the targets are the H200's, not checked in cpu mode
    assert "finetune" in bench.format_table(on_disk)


def test_bench_skips_unregistered_and_records_errors(bench, one_thread):
    s = _settings(bench, ["linear_probe", "no_such_method"], one_thread)
    s.references = False
    res = bench.run_benchmark(s, None, log=lambda _: None)
    assert res["skipped"] == [{"method": "no_such_method", "reason": res["skipped"][0]["reason"]}]
    assert [c["name"] for c in res["configs"]] == ["linear_probe"]
    assert res["configs"][0]["train_ratio_ref_full_ft"] is None  # no reference measured


def test_bench_e2e_in_memory(bench, one_thread):
    s = _settings(bench, [], one_thread)
    s.skip_micro, s.e2e = True, ["linear_probe"]
    s.e2e_epochs, s.e2e_tasks, s.e2e_train, s.e2e_test, s.e2e_batch, s.e2e_img = 1, 2, 40, 20, 16, 8
    s.e2e_classes = 4
    res = bench.run_benchmark(s, None, log=lambda _: None)
    (e,) = res["e2e"]
    assert e["status"] == "complete", e.get("error")
    assert e["wall_s"] > 0 and 0 <= e["loader_wait_s"] < e["wall_s"] and e["batches"] > 0
    assert any(t["name"] == "e2e_linear_probe_wall_s" for t in res["targets"])
    # timed by a Runner subclass: the loop's own Runner is left as the loop defines it (no monkey-patching)
    from cl_peft_lib import loop

    assert loop.Runner.model_batches.__qualname__ == "Runner.model_batches"
    assert e["loader_wait_train_s"] > 0 and e["loader_wait_eval_s"] > 0


def test_targets_logic_gpu_mode(bench):
    """The target checks on hand-made GPU-mode configs (the GPU run must get them right the first time)."""
    def cfg(name, train, mfu=None, infer=None, **kw):
        return {"name": name, "batch_size": 256, "compile": kw.pop("compile", False),
                "fused_optimizer": kw.pop("fused", False), "status": "ok", "train_img_s": train, "mfu": mfu,
                "infer_img_s": infer or {}, **kw}

    cfgs = [cfg("ref_full_ft", 2736, 0.3, {"inference_mode": 8000.0}), cfg("ref_peft_lora", 3220, 0.3),
            cfg("finetune", 3000, 0.4), cfg("finetune", 3800, 0.5, fused=True),
            cfg("lora", 5100, 0.50, {"inference_mode": 7500.0, "merged_inference_mode": 7900.0}),
            cfg("l2p", 3000, 0.46), cfg("l2l", 3000, 0.40),
            cfg("slora", 4000, 0.5, {"merged_inference_mode": 4000.0, "adapted_pass_merged_inference_mode": 7800.0})]
    e2e = [{"method": "l2p", "status": "complete", "wall_s": 170.0, "tasks": 10, "epochs": 5, "batch_size": 128}]
    t = {x["name"]: x for x in bench.compute_targets(cfgs, 256, e2e, "gpu")}
    assert t["finetune_train_img_s_bs256"]["pass"] is False and t["finetune_train_img_s_bs256"]["pass_any"] is True
    assert t["lora_train_img_s_bs256"]["pass"] is True
    assert t["l2p_mfu_vs_lora_bs256"]["pass"] is True and t["l2p_mfu_vs_lora_bs256"]["value"] == pytest.approx(0.92)
    assert t["l2l_mfu_vs_lora_bs256"]["pass"] is False
    assert t["sprompts_mfu_vs_lora_bs256"]["pass"] is None  # not measured
    assert t["lora_merged_infer_vs_plain_vit_bs256"]["pass"] is True
    s = t["slora_merged_infer_vs_plain_vit_bs256"]
    assert s["pass"] is False and s["adapted_pass_merged_ratio"] == pytest.approx(0.975)
    assert t["e2e_l2p_wall_s"]["pass"] is True and t["e2e_l2p_wall_s"]["op"] == "<="
    # two-pass limit: half the plain ViT's 8,000 img/s; S-LoRA merged 4,000 = 1.0 of it, L2P measured nothing
    two = t["slora_infer_vs_two_pass_limit_bs256"]
    assert two["value"] == pytest.approx(1.0) and two["pass"] is True and two["limit_img_s"] == 4000.0
    assert t["l2p_infer_vs_two_pass_limit_bs256"]["pass"] is None
    cpu = bench.compute_targets(cfgs, 256, e2e, "cpu")
    assert all(x["pass"] is None and x["applies"] is False for x in cpu)
    res = {"mode": "gpu", "schema": bench.SCHEMA, "configs": cfgs, "targets": list(t.values()), "e2e": e2e,
           "provenance": {"gpu": "H200", "torch": "2.11", "timm": "1.0.29", "peft": "0.21.0", "date": "today"},
           "ceiling": {"dtype": "bfloat16", "n": 8192, "tflops": 790.0}}
    assert "FAIL finetune_train_img_s_bs256" in bench.format_table(res)
    assert "| `lora` | 256 | 5,100 |" in bench.format_markdown(res)


def test_bench_times_the_loops_train_step(bench, one_thread, monkeypatch):
    """Every timed training step of the micro-benchmark is a call of cl_peft_lib.loop.train_step on the
    method the loop's Runner built (a spy counts the calls and records the method)."""
    from cl_peft_lib import loop

    calls = []
    real = loop.train_step

    def spy(method, *args, **kwargs):
        calls.append(method)
        return real(method, *args, **kwargs)

    monkeypatch.setattr(loop, "train_step", spy)
    built = []
    real_init = loop.Runner.__init__

    def init_spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append(self.method)

    monkeypatch.setattr(loop.Runner, "__init__", init_spy)
    s = _settings(bench, ["linear_probe"], one_thread)
    s.references, s.warmup, s.steps, s.repeats = False, 1, 2, 2
    res = bench.run_benchmark(s, None, log=lambda _: None)
    assert res["configs"][0]["status"] == "ok", res["configs"][0].get("error")
    assert len(calls) == s.warmup + s.steps * s.repeats
    assert len(built) == 1 and all(m is built[0] for m in calls)


def test_bench_step_raises_the_loops_non_finite_error_after_backward(bench, one_thread):
    """A NaN loss in the benchmark's step stops it with the loop's NonFiniteLossError, raised after
    backward (gradients exist) and before the optimizer steps (parameters unchanged)."""
    from cl_peft_lib import loop
    from clbench import micro

    torch.set_num_threads(one_thread)
    s = _settings(bench, ["linear_probe"], one_thread)
    b = bench.Bench(s, None, log=lambda _: None)
    r = micro.build_runner(b, "linear_probe", 8)
    task0 = r.scenario.tasks[0]
    r.method.begin_task(0, task0.classes)
    opt, sched, scaler, params = micro.training_state(r, 10)
    before = [p.detach().clone() for p in params]
    x, y = b.input(8, task0.classes)
    x[0] = float("nan")
    with pytest.raises(loop.NonFiniteLossError, match="loss became nan in the benchmark; lower the learning rate"):
        loop.train_step(r.method, x, y, opt, scaler, params, r.mcfg, r.device, sched, " in the benchmark")
    assert all(p.grad is not None for p in params)
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    # and the driver records it as the config's error instead of losing the other configs
    b.input = lambda bs, classes, seed=0: (torch.full((bs, 3, b.attrs[0], b.attrs[0]), float("nan")),
                                           torch.tensor(classes[:1] * bs))
    from clbench.run import run_config

    run_config(b, "method", lambda: micro.bench_method(b, "linear_probe", 8), {"name": "linear_probe", "batch_size": 8})
    (rec,) = b.results["configs"]
    assert rec["status"] == "error" and rec["error"].startswith("NonFiniteLossError: loss became nan")


def test_entry_point_show_markdown_is_the_report(bench):
    """`python benchmarks/bench.py --show FILE --markdown` prints cl_peft_lib.bench_report's Markdown of FILE."""
    from cl_peft_lib.bench_report import format_markdown

    path = ROOT / "benchmarks" / "results_h200.json"
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--show", str(path), "--markdown"],
                         capture_output=True, text=True, check=True).stdout
    res = json.loads(path.read_text())
    assert out == format_markdown(res) + "\n"
    assert "| `lora` | 256 |" in out


def test_chapter_tables_come_from_the_report():
    """Chapter 7's tables (cl_peft_lib.bench_report): one row per measured config, values from the JSON."""
    from cl_peft_lib.bench_report import configs_markdown, e2e_lines, targets_markdown

    res = json.loads((ROOT / "benchmarks" / "results_h200.json").read_text())
    ok = [c for c in res["configs"] if c.get("status") == "ok"]
    rows = configs_markdown(res).splitlines()[2:]
    assert len(rows) == len(ok)
    c = ok[0]
    assert rows[0].startswith(f"| {c['name']} | {c['batch_size']} | no | {c['train_img_s']:,.0f} | "
                              f"{c['train_ratio_ref_full_ft']:.2f} |")
    assert len(configs_markdown(res, bs=128).splitlines()) - 2 == sum(c["batch_size"] == 128 for c in ok)
    t = [r for r in targets_markdown(res).splitlines()[2:] if r.startswith("| ")]
    assert [r.split(" | ")[0][2:] for r in t] == [x["name"] for x in res["targets"]]
    why = [r for r in targets_markdown(res).splitlines() if r.startswith("- **")]
    assert why == [f"- **{x['name']}**, read off the profiler traces: {x['explained_by_trace']}"
                   for x in res["targets"] if x.get("explained_by_trace")] + [
        f"- **{x['name']}**, read off the measured passes: {x['explained']} (compiled: {x['compiled']:.3f} of the "
        f"compiled limit)" for x in res["targets"] if x.get("explained")]
    # every missed two-pass target (eager and compiled) is read off its measured passes
    assert {x["name"] for x in res["targets"] if x.get("explained")} == {
        x["name"] for x in res["targets"] if "two_pass" in x["name"] and x["pass_any"] is False}
    assert {x["name"] for x in res["targets"] if x.get("explained_by_trace")} == {
        x["name"] for x in res["targets"] if x["name"].split("_train_img_s")[0] in ("finetune", "lora")
        and x["pass_any"] is False}, "a missed training target of the H200 file has no trace reading"
    assert len(e2e_lines(res)) == len(res["e2e"]) and all(x.startswith("end-to-end ") for x in e2e_lines(res))


def test_append_keeps_earlier_rows_and_takes_ratios_only_within_one_run(bench, one_thread, tmp_path):
    """``--append``: the kept rows keep their MFU (against their own run's ceiling) and ratios; a row of the new
    run gets its MFU from the new run's ceiling, and no ratio when the new run measured no reference."""
    first = bench.run_benchmark(_settings(bench, ["finetune"], one_thread), None, log=lambda _: None)
    kept = {c["name"]: dict(c) for c in first["configs"]}
    s = _settings(bench, ["linear_probe"], one_thread)
    s.references = False
    res = bench.run_benchmark(s, None, log=lambda _: None, append_to=json.loads(json.dumps(first)))
    rows = {c["name"]: c for c in res["configs"]}
    assert set(rows) == {"finetune", "ref_full_ft", "ref_peft_lora", "linear_probe"}
    for n, old in kept.items():  # untouched: same run index, MFU, ceiling and ratios as in the first run
        assert rows[n]["run"] == 0 and rows[n]["mfu"] == old["mfu"] and rows[n]["ceiling_tflops"] == old["ceiling_tflops"]
        assert rows[n]["train_ratio_ref_full_ft"] == old["train_ratio_ref_full_ft"]
    new = rows["linear_probe"]
    assert new["run"] == 1 and new["ceiling_tflops"] == res["ceiling"]["tflops"] == res["ceiling_runs"][1]
    assert res["ceiling_runs"][0] == first["ceiling"]["tflops"]
    assert new["mfu"] == round(new["flops_train_step"] / (new["train_step_ms"] / 1000) / (new["ceiling_tflops"] * 1e12), 4)
    assert new["train_ratio_ref_full_ft"] is None and new["infer_ratio_plain_vit"] is None  # no side-by-side reference
    from cl_peft_lib.bench_report import configs_markdown, runs_note

    assert "| linear_probe | 8 | no | " in configs_markdown(res) and "| – | – |" in configs_markdown(res)
    assert runs_note(res).endswith("without references show no ratio: linear_probe.") and runs_note(first) == ""


def test_trace_reads_kernel_families_busy_time_and_explains_a_miss(bench):
    """The profiler-trace reading (benchmarks/clbench/trace.py) on hand-made kernels and a hand-made trace."""
    from clbench import trace

    assert trace.family("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "matmul"
    assert trace.family("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>") == "attention"
    assert trace.family("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64") == "attention"
    assert trace.family("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float>") == "norm"
    assert trace.family("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer"
    assert trace.family("void at::native::elementwise_kernel<128, 2, direct_copy_kernel_cuda>") == "copy_cast"
    assert trace.family("void at::native::vectorized_elementwise_kernel<4, GeluCUDAKernelImpl>") == "elementwise"
    assert trace.family("mystery") == "other"
    assert trace._busy_us([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17  # overlaps counted once
    assert trace._busy_us([]) == 0

    def rec(compiled, img_s, busy, mm_ms, step_ms):
        return {"method": "lora", "batch_size": 256, "status": "ok", "compile": compiled, "img_s": img_s,
                "gpu_busy_frac": busy, "step_ms": step_ms, "tensor_core_ms": mm_ms,
                "kernel_share_by_family": {"matmul": 0.7, "attention": 0.1, "elementwise": 0.2},
                "mfu_if_gpu_never_idle": 0.3, "mfu_if_only_tensor_core": 0.5, "tensor_core_tflops": 400.0,
                "host_syncs_per_step": {"cudaStreamSynchronize": 2}}
    miss = {"name": "lora_train_img_s_bs256", "threshold": 5000, "pass": False, "pass_any": False}
    # the tensor-core kernels alone would make 256 / 40 ms = 6,400 img/s: the time outside them is the miss
    why = trace.explain(miss, [rec(False, 3000, 0.9, 40.0, 85.0), rec(True, 4000, 0.95, 40.0, 64.0)])
    assert why.startswith("target 5,000 img/s; eager: 3,000 img/s") and "compiled: 4,000 img/s" in why
    assert "the tensor-core kernels alone would meet it" in why and "(38% of the best step" in why
    # tensor-core kernels alone 256 / 60 ms = 4,267 img/s < 5,000: those kernels themselves are the miss
    assert "even the tensor-core kernels alone are too slow" in trace.explain(miss, [rec(False, 3000, 0.9, 60.0, 85.0)])
    assert trace.explain(dict(miss, pass_any=True), [rec(False, 3000, 0.9, 40.0, 85.0)]) is None  # met: nothing to explain
    assert trace.explain(miss, [dict(rec(False, 3000, 0.9, 40.0, 85.0), batch_size=128)]) is None  # no trace at bs 256
    res = {"targets": [miss, {"name": "l2p_mfu_vs_lora_bs256", "threshold": 0.9, "pass": True}]}
    assert trace.explain_targets(res, [rec(False, 3000, 0.9, 40.0, 85.0)]) == ["lora_train_img_s_bs256"]
    assert "explained_by_trace" in res["targets"][0] and "explained_by_trace" not in res["targets"][1]


def test_trace_runs_through_the_benchmark_and_keeps_the_configs(bench, one_thread, tmp_path):
    """``--trace`` on the CPU: a trace record per method next to the untouched configs (a CPU trace has no
    kernels, so it explains nothing); an unknown method is refused by the command line before anything runs."""
    s = _settings(bench, ["lora"], one_thread)
    s.trace, s.trace_steps = ["lora"], 1
    res = bench.run_benchmark(s, str(tmp_path / "b.json"), log=lambda _: None)
    (t,) = res["traces"]
    assert t["status"] == "ok" and t["method"] == "lora" and t["batch_size"] == 8 and t["step_ms"] > 0
    assert t["flops_train_step"] > 0 and t["host_syncs_per_step"]["aten::_local_scalar_dense"] >= 1
    assert t["gpu_busy_frac"] == 0 and t["mfu_if_only_tensor_core"] is None  # no CUDA kernels on a CPU
    assert [c["name"] for c in res["configs"] if c["status"] == "ok"] == ["ref_full_ft", "ref_peft_lora", "lora"]
    assert not any("explained_by_trace" in x for x in res["targets"])
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--mode", "cpu", "--trace", "nosuch"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--trace: unknown method(s) nosuch" in r.stderr
