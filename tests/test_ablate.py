"""The bridge ablation runner: end to end on tiny configs, the trainer it builds, the
summary table and the plot."""

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from matplotlib.container import BarContainer

from ssm_bridge.tools import ablate as ablate
from ssm_bridge.tools.ablate import COLUMNS, Study, make_trainer, prepare_data, run_config
from ssm_bridge.training.train import build
from viz.ablation import plot_ablation, plot_ablation_curves, plot_ablation_watch

TINY = ["--preset", "test-tiny", "--num_train=16", "--scenes.min_objects=1",
        "--scenes.max_objects=2"]


def test_study_end_to_end_writes_csv_md_png_and_reuses_finished_runs(tmp_path, capsys):
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--variants", "ssm_lti,resampler", "--seeds", "0", "--steps", "3", "--out",
            str(out), "--runs", str(runs), "--test_num", "2", "--latency_repeats", "2",
            "--no_progress", "--model.resampler_latents=4", *TINY]
    assert ablate.main(argv) == 0
    with open(out / "results.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[: len(COLUMNS)] == COLUMNS
    assert "vqa_count" in reader.fieldnames and reader.fieldnames[-1] == "test_num"
    assert [r["variant"] for r in rows] == ["ssm_lti", "resampler"]
    for r in rows:
        assert r["steps"] == "3" and r["batch_size"] == "8" and r["test_num"] == "2"
        assert math.isfinite(float(r["final_loss"])) and float(r["train_samples_per_s"]) > 0
        assert float(r["latency_ms"]) > 0 and float(r["bridge_latency_ms"]) > 0
        for k in ("exact_match", "colour", "vqa", "count"):
            assert 0 <= float(r[k]) <= 1
    assert [r["media_tokens"] for r in rows] == ["17", "4"]  # 1 + P, then the latents
    md = (out / "results.md").read_text()
    assert "python -m ssm_bridge.tools.ablate --variants ssm_lti,resampler" in md
    assert "| ssm_lti | 0 |" in md and "| resampler | 0 |" in md and "Machine:" in md
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "curves.csv") as f:
        curves = list(csv.DictReader(f))
    assert {(c["variant"], c["step"]) for c in curves} >= {("ssm_lti", "3"), ("resampler", "3")}
    assert all(math.isfinite(float(c["loss"])) for c in curves)
    meta = json.loads((out / "study.json").read_text())
    assert meta["command"].startswith("python -m ssm_bridge.tools.ablate --variants ssm_lti")
    assert "3 steps of batch 8" in meta["budget"] and meta["train_config"]["num_train"] == 16
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = runs / "ssm_lti-seed0"
    assert (run / "result.json").is_file() and (run / "checkpoints" / "latest").is_file()
    stamp = (run / "result.json").stat().st_mtime_ns
    # Same budget (drawing processes change no result): finished runs are reused.
    assert ablate.main([*argv, "--draw_workers=1"]) == 0
    assert (run / "result.json").stat().st_mtime_ns == stamp
    assert "2 runs" in capsys.readouterr().err


def test_make_trainer_matches_train_build(tmp_path):
    study = Study(variants=["mlp"], seeds=[1], steps=2, preset="test-tiny",
                  runs=str(tmp_path), overrides={"num_train": 8, "scenes": {"max_objects": 2,
                                                                            "min_objects": 1}})
    cfg = run_config(study, "mlp", 1)
    assert cfg.task == "mixed" and cfg.model.bridge_type == "mlp" and cfg.max_steps == 2
    assert cfg.scenes.max_objects == 2 and cfg.scenes.min_dx == 0.11  # study default
    ours, theirs = make_trainer(cfg, prepare_data(cfg, progress=False)), build(cfg)
    a, b = ours.model.state_dict(), theirs.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for x, y in zip(ours.batch_at(0, 0), theirs.batch_at(0, 0)):
        assert torch.equal(x, y)


def test_decoder_and_vision_variants_run_end_to_end(tmp_path):
    """Issue 17's rows: a Mamba decoder (Cobra-style with the MLP bridge) and the
    attention-free Vim -> SSM -> Mamba, through the same study with the same columns."""
    study = Study(variants=["mlp+mamba", "vim+ssm+mamba"], seeds=[0], steps=2,
                  preset="test-tiny", runs=str(tmp_path / "runs"), out=str(tmp_path / "out"),
                  test_num=2, latency_repeats=1, progress=False,
                  overrides={"num_train": 8, "scenes": {"max_objects": 2, "min_objects": 1}})
    cobra, all_ssm = (run_config(study, v, 0).model for v in study.variants)
    assert (cobra.vision_type, cobra.bridge_type, cobra.decoder_type) == ("vit", "mlp", "mamba")
    assert (all_ssm.vision_type, all_ssm.bridge_type, all_ssm.decoder_type) == \
        ("vim", "ssm", "mamba")
    assert cobra.cross_attn_layers == 0 and cobra.vision_embed_dim == 96  # the study's width
    rows = ablate.run_study(study)
    assert [r["variant"] for r in rows] == ["mlp+mamba", "vim+ssm+mamba"]
    for r in rows:
        assert r["decode_ms_per_token"] > 0 and r["steps"] == 2
    assert (tmp_path / "runs" / "vim+ssm+mamba-seed0" / "result.json").is_file()
    assert "| vim+ssm+mamba | 0 |" in (tmp_path / "out" / "results.md").read_text()


def test_a_clone_continues_the_study_from_the_records_in_its_folder(tmp_path, monkeypatch):
    """The run folders (checkpoints) are not committed; OUT/runs/VARIANT-seedK.json is. A
    clone without the run folders reuses those records (no retraining), curves included,
    and says which machine measured them; a record of another budget is not reused."""
    study = Study(variants=["linear"], seeds=[0], steps=2, preset="test-tiny",
                  runs=str(tmp_path / "runs"), out=str(tmp_path / "out"), test_num=2,
                  latency_repeats=1, progress=False,
                  overrides={"num_train": 8, "scenes": {"max_objects": 2, "min_objects": 1}})
    first = ablate.run_study(study)
    record = tmp_path / "out" / "runs" / "linear-seed0.json"
    saved = json.loads(record.read_text())
    assert saved["row"]["exact_match"] == first[0]["exact_match"]
    assert [c["step"] for c in saved["curve"]][-1] == 2 and saved["row"]["machine"]
    assert not list(record.parent.glob("*.tmp"))

    import shutil
    shutil.rmtree(tmp_path / "runs")  # a fresh clone: records only

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded run was retrained")

    monkeypatch.setattr(ablate, "run_one", no_training)
    again = ablate.run_study(study)
    assert again == json.loads(json.dumps(first, default=str))
    with open(tmp_path / "out" / "curves.csv") as f:
        assert [c["step"] for c in csv.DictReader(f)][-1] == "2"
    assert "Runs measured on: " in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(AssertionError, match="retrained"):  # another budget: trained anew
        ablate.run_study(dataclasses.replace(study, steps=3))


def test_bad_arguments_fail_before_training(capsys):
    with pytest.raises(SystemExit):
        ablate.main(["--variants", "ssm,transformer"])
    assert "unknown variant(s) ['transformer']" in capsys.readouterr().err
    assert ablate.main(["--preset", "test-tiny", "--model.ssm_scan_order=diagonal"]) == 2
    assert "ssm_scan_order must be one of" in capsys.readouterr().err


ROWS = [
    {"variant": "ssm", "seed": 0, "exact_match": 0.5, "vqa": 0.4, "count": 0.9,
     "train_samples_per_s": 100.0, "latency_ms": 2.0, "params_bridge": 1000},
    {"variant": "ssm", "seed": 1, "exact_match": 0.7, "vqa": 0.6, "count": 0.8,
     "train_samples_per_s": 110.0, "latency_ms": 2.2, "params_bridge": 1000},
    {"variant": "mlp", "seed": 0, "exact_match": "0.25", "vqa": "0.5", "count": "",
     "train_samples_per_s": "300", "latency_ms": "1.0", "params_bridge": "500"},
]


def test_summary_is_mean_and_sample_std_over_seeds():
    study = Study(preset="test-tiny", command="python -m ssm_bridge.tools.ablate --seeds 0,1")
    cfg = run_config(study, "ssm", 0)
    md = ablate.results_markdown(ROWS, study, cfg)
    ssm_line = next(line for line in md.splitlines() if line.startswith("| ssm |"))
    assert "| 60.0 ± 14.1 |" in ssm_line  # exact match: mean 0.6, stdev 0.141
    mlp_line = next(line for line in md.splitlines() if line.startswith("| mlp |"))
    assert "| 25.0 |" in mlp_line and "±" not in mlp_line  # one seed: no spread


def test_plot_ablation_is_pure_and_reads_csv_strings():
    fig = plot_ablation(ROWS)
    assert len(fig.axes) == 4
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == ["ssm", "mlp"]
    bars = next(c for c in fig.axes[0].containers if isinstance(c, BarContainer))
    # ssm's accuracy bars (the first variant): exact match, VQA, count
    assert [round(b.get_height(), 6) for b in bars] == [60.0, 50.0, 85.0]
    with pytest.raises(ValueError, match="variant"):
        plot_ablation([])


def test_throughput_leaves_out_the_first_log_interval():
    class Done:  # what throughput reads of a finished trainer
        samples_seen, train_seconds = 160, 30.0

    records = [{"samples": 80, "train_seconds": 28.0}, {"samples": 160, "train_seconds": 30.0}]
    assert ablate.throughput(records, Done()) == 40.0  # (160 - 80) / (30 - 28)
    assert ablate.throughput(records[:1], Done()) == 160 / 30.0  # one point: the whole run


def test_plot_ablation_curves_draws_mean_and_seed_band():
    curves = [{"variant": v, "seed": str(s), "step": str(t), "loss": str(base * (s + 1) / t)}
              for v, base in (("ssm", 1.0), ("mlp", 2.0)) for s in (0, 1) for t in (1, 2, 3, 4)]
    fig = plot_ablation_curves(curves, smooth=1)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"ssm", "mlp"}
    # mean over seeds 0 and 1 of base * (s + 1) / step at step 2: base * 1.5 / 2
    assert lines["mlp"].get_ydata()[1] == pytest.approx(1.5)
    assert ax.get_yscale() == "log" and len(ax.collections) == 2  # one band per variant
    with pytest.raises(ValueError, match=r"curves\.csv"):
        plot_ablation_curves([{"variant": "ssm"}])


def test_plot_ablation_watch_draws_each_run_and_chance():
    watch = [{"variant": v, "seed": str(s), "step": str(t), "colour": str(c * t / 100),
              "shape": "0.5"}
             for v, c in (("ssm", 0.9), ("mlp+mamba", 0.25)) for s in (0, 1) for t in (50, 100)]
    fig = plot_ablation_watch(watch, {"colour": 0.25})
    colour, shape = fig.axes  # exact_match is in no row: no panel
    runs = [ln for ln in colour.get_lines() if ln.get_label() != "chance"]
    assert len(runs) == 4 and len(shape.get_lines()) == 4  # one line per (variant, seed)
    assert list(runs[0].get_ydata()) == pytest.approx([45.0, 90.0])  # ssm seed 0, in %
    assert runs[0].get_color() == runs[1].get_color() != runs[2].get_color()
    chance = [ln for ln in colour.get_lines() if ln.get_label() == "chance"]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == pytest.approx(25.0)
    assert [t.get_text() for t in colour.get_legend().get_texts()] == \
        ["ssm", "mlp+mamba", "chance"]
    with pytest.raises(ValueError, match=r"watch\.csv"):
        plot_ablation_watch([{"variant": "ssm", "seed": 0}])


def test_the_published_study_keeps_its_budget(tmp_path):
    """docs/ablation's 18 runs stay valid when the shipped checkpoint's preset changes: the
    published command still plans exactly the config they ran with."""
    meta = json.loads((Path(__file__).resolve().parents[1] / "docs/ablation/study.json")
                      .read_text())
    study = Study(runs=str(tmp_path), overrides={"threads": 1, "model": {}, "scenes": {}})
    cfg = run_config(study, "ssm", 0)
    saved = {**meta["train_config"], "out_dir": cfg.out_dir}
    run = Path(cfg.out_dir)
    run.mkdir()
    budget = {"train": saved, "test_split": study.test_split, "test_num": study.test_num}
    (run / "result.json").write_text(json.dumps({"budget": budget, "row": {"ok": 1}}))
    assert ablate.cached_row(cfg, study) == {"ok": 1}
    saved["precision"] = "bf16"  # a budget that did change is not reused
    (run / "result.json").write_text(json.dumps({"budget": budget, "row": {"ok": 1}}))
    assert ablate.cached_row(cfg, study) is None


def test_curve_rows_skip_a_torn_last_line(tmp_path):
    """A run killed mid-write of metrics.jsonl: its curve is the complete lines (the torn
    one raised a JSONDecodeError before)."""
    run = tmp_path / "ssm-seed0"
    run.mkdir()
    train = {"kind": "train", "step": 1, "samples": 4, "train_seconds": 0.5, "loss": 3.0}
    (run / "metrics.jsonl").write_text(json.dumps(train) + '\n{"kind": "train", "st')
    rows = ablate.curve_rows([{"variant": "ssm", "seed": 0}], tmp_path)
    assert rows == [{"variant": "ssm", "seed": 0, "step": 1, "samples": 4,
                     "train_seconds": 0.5, "loss": 3.0}]


def test_escape_steps_find_where_each_run_left_the_plateau():
    """The running mean of 5 log points must fall under 0.6: one low point is noise."""
    flat = [(s, 0.9) for s in range(10, 110, 10)]
    blip = [(s, 0.1 if s == 50 else 0.9) for s in range(10, 110, 10)]
    drop = [(s, 0.9 if s <= 50 else 0.3) for s in range(10, 110, 10)]
    assert ablate.escape_step(flat) is None and ablate.escape_step(blip) is None
    assert ablate.escape_step(drop) == 80  # (0.9 * 2 + 0.3 * 3) / 5 = 0.54 at step 80
    curves = [{"variant": v, "seed": str(seed), "step": str(s), "loss": str(x)}
              for v, seed, pts in (("a", 0, flat), ("a", 1, drop), ("b", 0, drop))
              for s, x in pts]
    assert ablate.escape_steps(curves) == {("a", 0): None, ("a", 1): 80, ("b", 0): 80}
    table = ablate.escape_table(curves)
    assert "| a | never | 80 | 1 of 2 |" in table and "| b | 80 |  | 1 of 1 |" in table


def test_a_run_that_left_the_loss_plateau_at_chance_colour_is_not_counted_as_reading():
    """vim+ssm+mamba seed 0 at 6000 steps left the loss plateau but named colours at
    chance (23.7 %, chance 25 %): the table must say so rather than count it."""
    drop = [(s, 0.9 if s <= 50 else 0.3) for s in range(10, 110, 10)]
    curves = [{"variant": v, "seed": seed, "step": s, "loss": x}
              for v, seed in (("a", 0), ("a", 1)) for s, x in drop]
    rows = [{"variant": "a", "seed": 0, "colour": 0.237}, {"variant": "a", "seed": 1,
                                                           "colour": 0.93}]
    table = ablate.escape_table(curves, rows, chance=0.25)
    assert "runs that also read colour" in table
    assert "| a | 80, colour at chance | 80 | 2 of 2 | 1 of 2 |" in table
    assert ablate.reads_colour({"colour": 0.5}, 0.25)
    assert not ablate.reads_colour({"colour": 0.49}, 0.25)
    assert not ablate.reads_colour({}, 0.25)  # no colour measured: not shown to read it


def test_watching_val_captions_changes_nothing_the_run_learns(tmp_path):
    """The watch (val captions every `watch` steps) is left out of the budget, so it must
    not change training: the weights after 4 steps are bit-identical with and without it,
    and the record keeps the watched accuracies."""
    def study(watch, name):
        return Study(variants=["mlp"], seeds=[0], steps=4, preset="test-tiny", watch=watch,
                     runs=str(tmp_path / name), out=str(tmp_path / f"out-{name}"), test_num=2,
                     latency_repeats=1, progress=False,
                     overrides={"num_train": 8, "scenes": {"max_objects": 2, "min_objects": 1}})

    trained = {}
    for watch, name in ((2, "watched"), (0, "plain")):
        cfg = run_config(study(watch, name), "mlp", 0)
        assert (cfg.eval_every, cfg.eval_num) == ((2, ablate.WATCH_NUM) if watch else (0, 0))
        trainer = make_trainer(cfg, prepare_data(cfg, progress=False))
        trainer.fit()
        trained[name] = trainer.model.state_dict()
    a, b = trained["watched"], trained["plain"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    watched, plain = study(2, "w2"), study(0, "p2")
    assert ablate.budget(run_config(watched, "mlp", 0), watched) == \
        ablate.budget(dataclasses.replace(run_config(plain, "mlp", 0),
                                          out_dir=run_config(watched, "mlp", 0).out_dir), plain)
    ablate.run_study(watched)
    record = json.loads((tmp_path / "out-w2" / "runs" / "mlp-seed0.json").read_text())
    assert [w["step"] for w in record["watch"]] == [2, 4]
    assert all(0 <= w["colour"] <= 1 for w in record["watch"])
    assert [w["step"] for w in ablate.watch_rows([{"variant": "mlp", "seed": 0}],
                                                 tmp_path / "nowhere", tmp_path / "out-w2")] \
        == [2, 4]  # from the record, as a clone reads it
    out = tmp_path / "out-w2"
    assert (out / "watch.png").is_file() and "(watch.png)" in (out / "results.md").read_text()


def test_the_escape_table_says_from_which_step_a_watched_run_read_colour():
    drop = [(s, 0.9 if s <= 50 else 0.3) for s in range(10, 110, 10)]
    curves = [{"variant": "a", "seed": seed, "step": s, "loss": x}
              for seed in (0, 1) for s, x in drop]
    watch = [{"variant": "a", "seed": 0, "step": 50, "colour": 0.2},
             {"variant": "a", "seed": 0, "step": 100, "colour": 0.6},
             {"variant": "a", "seed": 1, "step": 50, "colour": 0.6},  # found, then lost
             {"variant": "a", "seed": 1, "step": 100, "colour": 0.3}]
    assert ablate.colour_steps(watch, 0.25) == {("a", 0): 100, ("a", 1): 50}
    rows = [{"variant": "a", "seed": 0, "colour": 0.9}, {"variant": "a", "seed": 1,
                                                         "colour": 0.3}]
    table = ablate.escape_table(curves, rows, 0.25, watch)
    assert "| a | 80, colour from 100 | 80, colour from 50 | 2 of 2 | 1 of 2 |" in table
    late = [{"variant": "a", "seed": 0, "step": 100, "colour": 0.25}]
    assert "80, colour never" in ablate.escape_table(curves[:10], rows[:1], 0.25, late)


def test_report_writes_the_recorded_runs_and_names_the_rest_without_training(tmp_path, capsys):
    args = ["--variants", "ssm,mlp", "--seeds", "0,1", "--steps", "4", "--preset",
            "test-tiny", "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")]
    assert ablate.main([*args, "--report"]) == 2  # nothing recorded yet: a one-line error
    assert "none of the 4 planned runs is recorded" in capsys.readouterr().err
    study = ablate.parse_args([*args, "--report"])
    for variant, seed, loss in (("ssm", 0, 0.5), ("mlp", 1, 0.4)):
        cfg = run_config(study, variant, seed)
        record = {"budget": ablate.budget(cfg, study),
                  "row": {"variant": variant, "seed": seed, "exact_match": 0.5, "colour": 0.9},
                  "curve": [{"step": s, "samples": 32 * s, "train_seconds": s, "loss": loss}
                            for s in (1, 2, 3, 4)]}
        path = ablate.record_path(cfg, study)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, default=str))
    assert ablate.main([*args, "--report"]) == 0
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Under way: 2 of 4 planned runs recorded" in md
    assert "Still to train: ssm seed 1, mlp seed 0" in md
    assert "--report" not in md.splitlines()[2]  # the command shown is the one that trains
    assert [r["variant"] for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))] == \
        ["ssm", "mlp"]
    assert not (tmp_path / "runs").exists()  # nothing trained
    with pytest.raises(SystemExit):
        ablate.parse_args([*args, "--report", "--force"])


def test_chance_of_derives_guessing_from_the_study_scenes():
    cfg = run_config(Study(), "ssm", 0)  # 4 colours, 4 shapes, 2 sizes, 3-5 objects
    assert ablate.chance_of(cfg) == {"colour": 0.25, "shape": 0.25, "size": 0.5,
                                     "count": pytest.approx(1 / 3)}
