"""The engine's run features: --init-from, --resume RUN/checkpoints/step_N, the config that
travels with each checkpoint, keep-best whatever the intervals, --dry-run figures, per-block
activation checkpointing, bf16 autocast fine-tuning on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gptforge.io import load_safetensors
from gptforge.train.config import build_run_config
from gptforge.train.loop import train

TINY = {
    "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 16, "model.dropout": 0.0,
    "train.batch_size": 4, "train.warmup_steps": 2, "train.eval_iters": 2, "train.eval_interval": 4,
    "train.ckpt_interval": 4, "train.keep_last": 10, "log.interval": 1, "log.progress": False,
}  # fmt: skip


def _cfg(data: Path, **extra: object):
    return build_run_config(None, None, {**TINY, "data.dir": str(data), **extra})


def _lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _gf(*argv: str) -> int:
    from gptforge.cli.main import main

    return main(list(argv))


def test_init_from_first_loss_is_the_source_models_loss(char_data: Path, tmp_path: Path, make_char_dataset) -> None:
    """The first logged loss of a run started from a trained model is that model's loss on
    the first batch (reference: the source model on the loader's first batch); continued
    training on a new corpus (same tokenizer) lowers the loss on its val split."""
    from gptforge.data.loader import BatchLoader
    from gptforge.data.shards import open_dataset
    from gptforge.model.loading import load_model
    from gptforge.tokenizer import load_tokenizer

    src = train(_cfg(char_data, **{"train.max_steps": 8}), tmp_path / "src")
    tok = load_tokenizer(str(char_data / "tokenizer.json"))
    other = make_char_dataset(tmp_path / "other", text="Speak, citizen, speak: we are resolved to proceed.\n" * 60,
                              tokenizer=tok)  # fmt: skip
    rc = _gf("train", "--init-from", str(src.final_dir), "--data", str(other), "--out", str(tmp_path / "cont"),
             "--train.max_steps", "30", "--train.batch_size", "4", "--train.lr", "3e-3", "--train.warmup_steps",
             "0", "--train.eval_interval", "0", "--train.eval_iters", "2", "--log.interval", "1",
             "--log.progress", "false", "--train.seed", "5")  # fmt: skip
    assert rc == 0
    source = load_model(src.final_dir)
    x, y = BatchLoader(open_dataset(other), "train", 4, 16, "random", 5, 0, 1, torch.device("cpu")).next_batch()
    source.train()  # the training forward (dropout is 0)
    with torch.no_grad():
        _, expected = source(x, y)
    first = next(r for r in _lines(tmp_path / "cont") if r.get("step") == 1 and "loss" in r)
    assert first["loss"] == float(expected)
    vx, vy = BatchLoader(open_dataset(other), "val", 8, 16, "random", 0, 0, 1, torch.device("cpu")).next_batch()
    after = load_model(tmp_path / "cont")
    with torch.no_grad():
        assert after(vx, vy)[1] < source.eval()(vx, vy)[1]


def test_init_from_refuses_other_tokenizer_and_shape(char_data: Path, tmp_path: Path, make_char_dataset,
                                                     capsys) -> None:  # fmt: skip
    src = train(_cfg(char_data, **{"train.max_steps": 2}), tmp_path / "src")
    other = make_char_dataset(tmp_path / "other", text="xyz qrs tuv\n" * 200)
    assert _gf("train", "--init-from", str(src.final_dir), "--data", str(other), "--out", str(tmp_path / "a")) == 2
    err = capsys.readouterr().err
    assert "made with tokenizer char" in err and "but model uses" in err  # names both
    assert _gf("train", "--init-from", str(src.final_dir), "--data", str(char_data), "--out", str(tmp_path / "b"),
               "--model.n_layer", "4") == 2  # fmt: skip
    assert "keeps the source model's shape; drop model.n_layer" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_init_from_with_lora_trains_adapters_only(char_data: Path, tmp_path: Path) -> None:
    src = train(_cfg(char_data, **{"train.max_steps": 2}), tmp_path / "src")
    assert _gf("train", "--init-from", str(src.final_dir), "--data", str(char_data), "--out", str(tmp_path / "l"),
               "--lora.rank", "2", "--train.max_steps", "4", "--log.progress", "false") == 0  # fmt: skip
    config = json.loads((tmp_path / "l" / "final" / "config.json").read_text())
    assert [v["kind"] for v in config["variants"]] == ["lora"]
    a = load_safetensors(src.final_dir / "model.safetensors")
    b = load_safetensors(tmp_path / "l" / "final" / "model.safetensors")
    assert torch.equal(a["transformer.wte.weight"], b["transformer.wte.weight"])  # frozen
    assert any(k.endswith("lora_B") and b[k].abs().sum() > 0 for k in b)  # the adapters moved


def test_resume_from_a_chosen_checkpoint_and_config_change_is_recorded(char_data: Path, tmp_path: Path,
                                                                       capsys) -> None:  # fmt: skip
    """--resume RUN/checkpoints/step_4 of a 12-step run equals the straight run from step 4
    (the config comes from that checkpoint); a changed lr is warned about and logged."""
    straight = train(_cfg(char_data, **{"train.max_steps": 8}), tmp_path / "run")
    assert straight.step == 8
    ref = {r["step"]: r["loss"] for r in _lines(tmp_path / "run") if "loss" in r}
    assert _gf("train", "--resume", str(tmp_path / "run" / "checkpoints" / "step_0000004"),
               "--log.progress", "false") == 0  # fmt: skip
    again = {r["step"]: r["loss"] for r in _lines(tmp_path / "run") if "loss" in r}
    assert again == ref  # steps 5-8 re-run from step 4: the same losses, bitwise
    capsys.readouterr()
    assert _gf("train", "--resume", str(tmp_path / "run" / "checkpoints" / "step_0000004"),
               "--train.lr", "5e-4", "--log.progress", "false") == 0  # fmt: skip
    assert "resuming with a changed config: train.lr" in capsys.readouterr().err  # (the CLI's log goes to stderr)
    changed = [r for r in _lines(tmp_path / "run") if "config_changed" in r]
    assert changed and changed[-1]["step"] == 4 and "train.lr" in changed[-1]["config_changed"]


def test_keep_best_whatever_the_intervals(char_data: Path, tmp_path: Path) -> None:
    """Checkpoints every 3 steps, evaluations every 4: each checkpoint still knows its val loss
    (so keep-best can pick among them), and final/config.json says which val loss belongs to
    its weights. (Before, only a checkpoint on an eval step had one: here none but the last.)"""
    from gptforge.train import checkpoint as ckpt

    res = train(_cfg(char_data, **{"train.max_steps": 9, "train.ckpt_interval": 3, "train.eval_interval": 4,
                                   "train.keep_last": 10}), tmp_path / "run")  # fmt: skip
    vals = {step: json.loads((p / "state.json").read_text())["val_loss"]
            for step, p in ckpt.list_checkpoints(tmp_path / "run")}  # fmt: skip
    assert sorted(vals) == [3, 6, 9] and all(isinstance(v, float) for v in vals.values()), vals
    evals = {r["step"]: r["val_loss"] for r in _lines(tmp_path / "run") if r.get("val_loss") is not None}
    assert {s: evals[s] for s in (3, 6, 9)} == vals  # the checkpoint's figure is the logged evaluation
    final = json.loads((res.final_dir / "config.json").read_text())["training"]
    assert final["step"] == 9 and final["val_loss"] == res.last_eval["val"] == vals[9]
    assert final["best_val_loss"] == min(evals.values())


def test_dry_run_bytes_are_exact_and_nothing_is_written(char_data: Path, tmp_path: Path, capsys) -> None:
    """Parameter, gradient and optimizer bytes equal what a real step allocates."""
    from gptforge import GPT
    from gptforge.train.optim import build_optimizer
    from gptforge.train.plan import plan_run

    cfg = _cfg(char_data, **{"train.max_steps": 10, "train.grad_accum": 3})
    plan = plan_run(cfg)
    assert plan["tokens_per_step"] == 4 * 3 * 16 and plan["total_tokens"] == 4 * 3 * 16 * 10
    model = GPT(_with_vocab(cfg).model)
    opt = build_optimizer(model, cfg.train, torch.device("cpu"))
    x = torch.randint(0, model.config.vocab_size, (2, 8))
    _, loss = model(x, x)
    loss.backward()
    opt.step()
    params = {id(p): p for p in model.parameters()}.values()
    mem = plan["memory_per_device"]
    assert mem["parameters"] == sum(p.numel() * p.element_size() for p in params)
    assert mem["gradients"] == sum(p.grad.numel() * p.grad.element_size() for p in params)
    assert mem["optimizer"] == sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                                   if isinstance(t, torch.Tensor))  # fmt: skip
    out = tmp_path / "never"
    assert _gf("train", "--data", str(char_data), "--out", str(out), "--dry-run", "--model.n_layer", "2",
               "--model.n_embd", "32", "--model.n_head", "2", "--model.block_size", "16") == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "tokens per step" in text and "activations (estimate)" in text and "nothing was written" in text
    assert not out.exists()


def _with_vocab(cfg):  # noqa: ANN001, ANN202
    from gptforge.config import apply
    from gptforge.data.shards import open_dataset

    return apply(cfg, {"model.vocab_size": open_dataset(cfg.data.dir).vocab_size}, source="test")


def test_activation_checkpointing_gives_the_same_gradients(char_data: Path) -> None:
    """Recomputing each block in backward changes memory, not numbers (reference: no recompute)."""
    from gptforge import GPT

    cfg = _with_vocab(_cfg(char_data))
    torch.manual_seed(0)
    a = GPT(cfg.model)
    b = GPT(cfg.model)
    b.load_state_dict(a.state_dict())
    b.activation_checkpointing = True
    x = torch.randint(0, cfg.model.vocab_size, (2, 16))
    for m in (a, b):
        m.train()
        m(x, x)[1].backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=0, msg=n)
