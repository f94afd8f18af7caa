"""Fast tests of the fit loop's bookkeeping: round arithmetic, engine timing windows, the config guard of the
DataModule, and the run report built from files on disk (the full loop runs in test_fit.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from plot_checks import assert_drawn_png

from regenesis_pl.callbacks.engine import EngineCallback
from regenesis_pl.data.datamodule import ReGenesisDataModule
from regenesis_pl.method.synthesis import SynthesisConfig
from regenesis_pl.report import write_report
from regenesis_pl.round_schedule import RoundSchedule
from regenesis_pl.tasks.registry import TaskConfig


@pytest.mark.parametrize("epoch,per_round,expected_round,starts,ends", [
    (0, 1, 0, True, True), (1, 1, 1, True, True), (0, 3, 0, True, False), (2, 3, 0, False, True),
    (3, 3, 1, True, False), (5, 3, 1, False, True),
])
def test_round_arithmetic(epoch, per_round, expected_round, starts, ends):
    schedule = RoundSchedule(rounds=2, epochs_per_round=per_round)
    assert schedule.round_of(epoch) == expected_round
    assert schedule.starts_round(epoch) is starts
    assert schedule.ends_round(epoch) is ends
    assert schedule.epochs == 2 * per_round
    schedule.check_epoch(epoch)
    with pytest.raises(ValueError, match="past the last round"):
        schedule.check_epoch(2 * per_round)


def test_round_summary_excludes_other_rounds_and_the_build():
    cb = EngineCallback(run_dir="unused")
    cb.rounds = {0: {"start": 100.0, "end": 200.0}, 1: {"start": 200.0, "end": 260.0}}
    cb.build_window = (100.0, 130.0)            # the engine was built inside round 0's window
    cb.events = [
        {"round": -1, "start": 130.0, "end": 140.0, "pushed": False, "push_s": 0.0, "wake_s": 0.0,
         "sleep_s": 0.0, "use_s": 10.0},       # base evaluation, also inside round 0's window
        {"round": 0, "start": 140.0, "end": 170.0, "pushed": False, "push_s": 0.0, "wake_s": 0.5,
         "sleep_s": 0.1, "use_s": 30.0},
        {"round": 0, "start": 190.0, "end": 200.0, "pushed": True, "push_s": 3.0, "wake_s": 0.5,
         "sleep_s": 0.1, "use_s": 6.0},
        {"round": 1, "start": 200.0, "end": 220.0, "pushed": True, "push_s": 2.0, "wake_s": 0.0,
         "sleep_s": 0.0, "use_s": 18.0},
    ]
    summary = cb.round_summary()
    assert summary[0]["seconds"] == pytest.approx(100 - 30 - 10)
    assert summary[0]["pushes"] == 1 and summary[0]["push_s"] == pytest.approx(3.0)
    assert summary[0]["push_share"] == pytest.approx(3.0 / 60, abs=1e-4)
    assert summary[0]["wake_s"] == pytest.approx(1.0)
    assert summary[1]["seconds"] == pytest.approx(60.0)
    assert summary[1]["push_share"] == pytest.approx(2.0 / 60, abs=1e-4)


def _datamodule(tmp_path, **overrides):
    args = {"train_task": TaskConfig(name="arithmetic", split="train", limit=4),
                "synthesis": SynthesisConfig(guidelines_per_question=2), "run_dir": str(tmp_path)}
    args.update(overrides)
    return ReGenesisDataModule(**args)


def test_checkpoint_of_another_config_is_refused(tmp_path):
    saved = _datamodule(tmp_path).state_dict()
    same = _datamodule(tmp_path, rounds=5, num_workers=2)   # more rounds / workers: still the same run
    same.load_state_dict(saved)
    other = _datamodule(tmp_path, synthesis=SynthesisConfig(guidelines_per_question=3), batch_size=8)
    with pytest.raises(ValueError, match="another configuration") as err:
        other.load_state_dict(saved)
    assert "batch_size" in str(err.value) and "synthesis.guidelines_per_question" in str(err.value)


def test_checkpoint_older_than_a_new_setting_still_resumes(tmp_path):
    saved = _datamodule(tmp_path).state_dict()
    del saved["config"]["data"]["synthesis"]["dedup_threshold"]  # as if written before the field existed
    saved["config_hash"] = "0" * 16
    _datamodule(tmp_path).load_state_dict(saved)
    saved["config"]["data"]["batch_size"] = 99  # ... but a real difference is still refused
    with pytest.raises(ValueError, match="differs in: data.batch_size"):
        _datamodule(tmp_path).load_state_dict(saved)


@pytest.mark.parametrize("bad,match", [({"rounds": 0}, "rounds"), ({"val_fraction": 1.0}, "val_fraction"),
                                       ({"overflow": "wrap"}, "overflow")])
def test_bad_datamodule_settings_fail_with_the_setting_named(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        _datamodule(tmp_path, **bad)


def _score(task, acc, parse, n=10):
    return {"task": task, "n": n, "correct": round(acc * n), "parsed": round(parse * n), "accuracy": acc,
            "parse_rate": parse, "mean_tokens": 50.0}


def test_report_tables_and_plots(tmp_path):
    (tmp_path / "eval").mkdir()
    for name, rnd, acc in (("base", -1, 0.1), ("round-0", 0, 0.3), ("round-1", 1, 0.4)):
        per_task = {"arithmetic": _score("arithmetic", acc, 0.5), "strategyqa": _score("strategyqa", 0.2, 0.9)}
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps({
            "name": name, "round": rnd, "in_domain": ["arithmetic"], "ood": ["strategyqa"], "per_task": per_task,
            "in_domain_mean": acc, "ood_mean": 0.2}))
    for k, kept in ((0, 7), (1, 11)):
        folder = tmp_path / f"round-{k}"
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({
            "round": k, "questions": 8, "questions_solved": 4 + k, "solved_main_pass": 2, "candidates": 24,
            "answer_parse_rate": 0.5, "kept": kept, "hint": {"questions": 6, "recovered": 2 + k},
            "guidelines": {"g01": {"candidates": 8, "accepted": 2, "kept": 2, "accept_rate": 0.25},
                           "g02": {"candidates": 8, "accepted": 4, "kept": 3, "accept_rate": 0.5}}}))
    (tmp_path / "engine_timings.json").write_text(json.dumps({"backend": "vllm", "build_s": 30.0, "rounds": {
        "0": {"seconds": 120.0, "pushes": 1, "push_s": 0.6, "wake_s": 0.0, "sleep_s": 0.0, "use_s": 90.0,
              "push_share": 0.005}}}))
    path = write_report(tmp_path)
    text = path.read_text()
    assert "| arithmetic | in-domain | 10 | 10.0% (50.0%) | 30.0% (50.0%) | 40.0% (50.0%) |" in text
    assert "| strategyqa | OOD |" in text
    assert "Best round by mean in-domain accuracy: **1** (40.0%); base: 10.0%." in text
    assert "| 1 | 8 | 5 | 2 | 6 / 3 | 24 | 50.0% | 11 |" in text
    assert "| 0 | 120.0 | 1 | 0.60 |" in text and "| 0.50% |" in text
    for name in ("accuracy_per_round", "guideline_accept_rates", "paths_kept_per_round"):
        png = tmp_path / "plots" / f"{name}.png"
        assert_drawn_png(png)
        assert f"plots/{name}.png" in text


def test_report_says_what_is_missing(tmp_path):
    text = write_report(tmp_path).read_text()
    assert "No evaluation was written" in text and "No synthesis statistics" in text
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nope")


def test_eval_gating_stops_after_patience_rounds_without_gain(tmp_path):
    from regenesis_pl.callbacks.evaluation import EvaluationCallback

    with pytest.raises(ValueError, match="evaluation.patience=0"):
        EvaluationCallback(in_domain=[TaskConfig(name="arithmetic")], patience=0)
    cb = EvaluationCallback(in_domain=[TaskConfig(name="arithmetic")], patience=2, run_dir=str(tmp_path))
    trainer = SimpleNamespace(should_stop=False, is_global_zero=True)
    cb.history = [{"kind": "base", "in_domain_mean": 0.30}]
    stops = []
    for k, score in enumerate([0.50, 0.40, 0.50]):  # round 2 only ties the best: no gain
        cb.history.append({"kind": "round", "in_domain_mean": score})
        cb.record_round(trainer, k, score)
        stops.append(trainer.should_stop)
    assert stops == [False, False, True] and cb.stopped_after == 2
    assert (cb.best_round, cb.best_score, cb.rounds_without_gain) == (0, 0.50, 2)
    decision = json.loads((tmp_path / "eval" / "stopped.json").read_text())
    assert decision["after_round"] == 2 and decision["best_round"] == 0 and decision["bar"] == 0.50
    # the state survives a checkpoint, and the report says why the run ended early
    again = EvaluationCallback(in_domain=[TaskConfig(name="arithmetic")], patience=2)
    again.load_state_dict(cb.state_dict())
    assert (again.rounds_without_gain, again.stopped_after) == (2, 2)
    text = write_report(tmp_path).read_text()
    assert "Stopped early after round 2: 2 round(s) without a gain over 50.0% (patience 2); use round 0's export." \
        in text


def test_eval_gating_counts_a_regression_below_the_base_model():
    from regenesis_pl.callbacks.evaluation import EvaluationCallback

    cb = EvaluationCallback(in_domain=[TaskConfig(name="arithmetic")], patience=1, run_dir="unused")
    cb.history = [{"kind": "base", "in_domain_mean": 0.40}, {"kind": "round", "in_domain_mean": 0.25}]
    trainer = SimpleNamespace(should_stop=False, is_global_zero=False)
    cb.record_round(trainer, 0, 0.25)
    assert trainer.should_stop and cb.best_round == 0 and cb.stopped_after == 0


def test_eval_gating_ends_a_real_trainer_fit_early(tmp_path):
    """The stop flag set at a round end ends a real ``Trainer.fit`` there (a tiny model; scores scripted)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from regenesis_pl.callbacks.evaluation import EvaluationCallback
    from regenesis_pl.callbacks.round_driver import RoundDriver

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Rounds(L.LightningDataModule):
        epochs_per_round = 1

        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)

    scores = iter([0.5, 0.4, 0.3, 0.9, 0.9])

    class Scripted(EvaluationCallback):
        def questions(self):
            return []

        def evaluate(self, trainer, pl_module, name, round_k, kind):
            summary = {"kind": kind, "round": round_k, "in_domain_mean": next(scores)}
            self.history.append(summary)
            return summary

    cb = Scripted(in_domain=[TaskConfig(name="arithmetic")], patience=2, evaluate_base=False, run_dir=str(tmp_path),
                  write_report=False)
    # the real round owner sequences the round ends; its engines and data are stand-ins (no generation here)
    driver = RoundDriver()
    driver.engines = SimpleNamespace(end_round=lambda trainer, k: None)
    driver.data = SimpleNamespace(schedule=RoundSchedule(rounds=5, epochs_per_round=1), questions=list)
    driver.evaluation = cb
    cb.engines, cb.data = driver.engines, driver.data
    trainer = L.Trainer(max_epochs=5, callbacks=[cb, driver], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Tiny(), datamodule=Rounds())
    assert trainer.current_epoch == 3 and cb.stopped_after == 2  # rounds 0-2 ran; rounds 3 and 4 did not
    assert [h["round"] for h in cb.history] == [0, 1, 2]


# ------------------------------------------------------------------------------------------ weight pushes
class _Engine:
    """Records what it is told to serve (prompt plumbing only; the real engines are tested elsewhere)."""

    def __init__(self):
        self.calls = []

    def load_weights(self, folder, weights_id=None):
        self.calls.append(("load", Path(folder).name, weights_id))

    def set_adapter(self, folder):
        self.calls.append(("adapter", Path(folder).name if folder else None))


class _QLoRAModule:
    mode, adapter_only = "qlora", True

    def __init__(self):
        self.writes, self.step_weights = [], 0

    def trainable_state_fingerprint(self):
        return f"w{self.step_weights}"

    def merge_blocker(self):
        return None

    def save_adapter(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "adapter_config.json").write_text(json.dumps({"r": 4, "step": self.step_weights}))
        return path

    def save_served_weights(self, path, dtype, base_only=False):
        self.writes.append((Path(path).name, str(dtype), base_only))
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"weights")
        return path

    def export_hf(self, path, merged=False):
        raise AssertionError("a weight push never exports")


def _trainer(step):
    strategy = SimpleNamespace(barrier=lambda name=None: None, broadcast=lambda obj, src=0: obj)
    return SimpleNamespace(global_step=step, ckpt_path=None, is_global_zero=True, strategy=strategy,
                           state=SimpleNamespace(fn="fit"))


def test_qlora_engines_serve_the_dequantized_base_made_once(tmp_path, monkeypatch):
    """QLoRA (nf4): the engine loads the dequantized base, written once and reused by a resumed run made from the
    same model and dtype; a merged push folds into that base, and going back to the adapter path reloads that
    base, never the original model."""
    from regenesis_pl.callbacks import weight_push
    from regenesis_pl.callbacks.weight_push import WeightPush
    from regenesis_pl.layout import RunLayout

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.setattr("regenesis_pl.model_source.resolve_model", lambda name: str(model))
    module, engine = _QLoRAModule(), _Engine()
    push = WeightPush(RunLayout(tmp_path / "run"), "merged", "nf4")
    push.serve_trained_base(_trainer(0), module, engine, "some-model", "torch.bfloat16")
    assert module.writes == [("base-nf4", "torch.bfloat16", True)] and engine.calls == [("load", "base-nf4", None)]
    assert push.facts()["base"].startswith("nf4: the 4-bit base the adapter trains against, dequantized to bfloat16")
    module.step_weights = 1
    assert push.push(_trainer(1), module, engine, 0, "some-model", "torch.bfloat16")
    base_id = weight_push.weights_fingerprint(str(tmp_path / "run" / "weights" / "base-nf4"),
                                              str(tmp_path / "run" / "adapters" / "round-0-step-1"))
    assert engine.calls[-2:] == [("adapter", None), ("load", "round-0-step-1", base_id)]
    push.choice, push._serving = "adapter", (push._pushes, "merged")  # as if auto had picked the adapter path
    push._serve(engine, "adapter", tmp_path / "run" / "adapters" / "round-0-step-1", None, "some-model")
    assert engine.calls[-2:] == [("load", "base-nf4", None), ("adapter", "round-0-step-1")]

    resumed, engine2 = WeightPush(RunLayout(tmp_path / "run"), "merged", "nf4"), _Engine()
    resumed.serve_trained_base(_trainer(1), module, engine2, "some-model", "torch.bfloat16")
    assert len(module.writes) == 2 and engine2.calls == [("load", "base-nf4", None)]  # reused, not rewritten
    other = WeightPush(RunLayout(tmp_path / "run"), "merged", "nf4")
    other.serve_trained_base(_trainer(1), module, _Engine(), "some-model", "torch.float32")
    assert module.writes[-1] == ("base-nf4", "torch.float32", True)  # made from another dtype: rebuilt


def test_qlora_original_base_is_served_as_the_model_and_said_so(tmp_path, monkeypatch):
    from regenesis_pl.callbacks.weight_push import WeightPush
    from regenesis_pl.layout import RunLayout

    monkeypatch.setattr("regenesis_pl.model_source.resolve_model", lambda name: str(tmp_path))
    module, engine = _QLoRAModule(), _Engine()
    push = WeightPush(RunLayout(tmp_path / "run"), "auto", "original")
    push.serve_trained_base(_trainer(0), module, engine, "some-model", "torch.bfloat16")
    assert module.writes == [] and engine.calls == []
    assert "differs from the trained one by the 4-bit quantization error" in push.facts()["base"]
    with pytest.raises(ValueError, match="qlora_base='fp8' is unknown"):
        WeightPush(RunLayout(tmp_path / "run"), "auto", "fp8")


def test_a_module_without_the_trained_weights_protocol_is_refused_in_one_line(tmp_path):
    from regenesis_pl.callbacks.weight_push import WeightPush
    from regenesis_pl.layout import RunLayout

    class Partial:  # a module of one's own that forgot most of what the callbacks need
        mode, adapter_only = "lora", True

    push = WeightPush(RunLayout(tmp_path / "run"), "adapter", "original")
    with pytest.raises(TypeError) as info:
        push.push(_trainer(3), Partial(), _Engine(), 0, "embedded", "float32")
    message = str(info.value)
    assert "\n" not in message and message.startswith("weight push: Partial lacks ['trainable_state_fingerprint'")
    assert "export_hf" in message and "SFTModule" in message
