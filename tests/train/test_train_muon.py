"""Muon (train.optimizer muon): our step against torch.optim.Muon (bitwise with bf16
Newton-Schulz) and the SVD, the combined optimizer against Muon and AdamW run separately,
the parameter split, per-group learning rates, and a bitwise resume."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from tests.train.test_train_resume import _cfg, _eval_losses, _train_losses

from gptforge.model.config import GPTConfig
from gptforge.model.gpt import GPT
from gptforge.train.config import TrainConfig
from gptforge.train.muon import Muon, default_ns_dtype, newton_schulz
from gptforge.train.optim import MuonWithAdamW, build_optimizer, muon_param_groups, set_lr

MODERN = dict(positions="rope", normalization="rmsnorm", qk_norm=True, activation="relu2", tie_weights=False)


def _model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32, **MODERN))


def _loss(model: GPT, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 40, (4, 16), generator=g)
    return model(x, torch.roll(x, -1, 1))[1]


def test_groups_split_hidden_matrices_from_the_rest() -> None:
    model = _model()
    cfg = TrainConfig(optimizer="muon", lr=2e-3, muon_lr=0.05)
    (muon,), (embed_head, vectors) = muon_param_groups(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in muon["params"]} == {
        f"transformer.h.{i}.{m}.weight" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }
    assert {names[id(p)] for p in embed_head["params"]} == {"transformer.wte.weight", "lm_head.weight"}
    assert all(p.dim() == 1 for p in vectors["params"]) and vectors["weight_decay"] == 0.0
    assert sum(p.numel() for g in (muon, embed_head, vectors) for p in g["params"]) == model.num_params()
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    set_lr(opt, 1e-3)  # half of the peak lr: every group at half its own peak
    assert [g["lr"] for g in opt.param_groups] == [0.025, 1e-3, 1e-3]


def test_muon_in_bf16_equals_torch_muon_bitwise() -> None:
    """Reference: torch.optim.Muon (whose Newton-Schulz is bf16) over 4 steps with weight decay."""
    ours, ref = _model(), _model()
    pick = lambda m: [p for n, p in m.named_parameters() if ".h." in n and p.dim() == 2]  # noqa: E731
    opt = Muon(pick(ours), lr=0.03, weight_decay=0.1, ns_dtype="bf16")
    ref_opt = torch.optim.Muon(pick(ref), lr=0.03, weight_decay=0.1, momentum=0.95, nesterov=True)
    for step in range(4):
        for model, o in ((ours, opt), (ref, ref_opt)):
            _loss(model, step).backward()
            o.step()
            o.zero_grad()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), name


def test_newton_schulz_in_fp32_approximates_the_orthogonal_factor() -> None:
    """Reference: U V^T from the SVD. The quintic iteration leaves singular values in about
    [0.7, 1.2] (by design), with U V^T's singular vectors."""
    g = torch.randn(96, 40, generator=torch.Generator().manual_seed(0))
    u, _, vt = torch.linalg.svd(g, full_matrices=False)
    for m in (g, g.T):
        out = newton_schulz(m)
        assert out.shape == m.shape and out.dtype == torch.float32
        s = torch.linalg.svdvals(out)
        assert 0.6 < float(s.min()) and float(s.max()) < 1.25, s
    ref = u @ vt
    cos = float((newton_schulz(g) * ref).sum() / (newton_schulz(g).norm() * ref.norm()))
    assert cos > 0.98


def test_stacked_muon_step_equals_one_matrix_at_a_time_in_fp32() -> None:
    """Reference: the Muon update written out per matrix (momentum, Nesterov, Newton-Schulz
    on that matrix alone, decay, shape-scaled step). Our step stacks same-shaped updates
    (c_fc (4C, C) turned wide joins mlp.c_proj (C, 4C)) into batched matmuls."""
    ours, ref = _model(), _model()
    pick = lambda m: [p for n, p in m.named_parameters() if ".h." in n and p.dim() == 2]  # noqa: E731
    opt = Muon(pick(ours), lr=0.03, weight_decay=0.1)
    bufs = {id(p): torch.zeros_like(p) for p in pick(ref)}
    for step in range(4):
        _loss(ours, step).backward()
        opt.step()
        opt.zero_grad()
        _loss(ref, step).backward()
        with torch.no_grad():
            for p in pick(ref):
                buf = bufs[id(p)]
                buf.mul_(0.95).add_(p.grad, alpha=0.05)
                update = 0.05 * p.grad + 0.95 * buf  # Nesterov look-ahead
                p.mul_(1 - 0.03 * 0.1).sub_(0.03 * max(1, p.size(0) / p.size(1)) ** 0.5 * newton_schulz(update))
                p.grad = None
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    stack = torch.randn(3, 24, 40, generator=torch.Generator().manual_seed(1))
    for tall in (False, True):
        x = stack.mT if tall else stack
        torch.testing.assert_close(newton_schulz(x), torch.stack([newton_schulz(m) for m in x]),
                                   rtol=1e-6, atol=1e-6)


def test_combined_optimizer_equals_muon_and_adamw_run_separately() -> None:
    """Reference: Muon on the hidden matrices and torch.optim.AdamW on the rest, two
    optimizers stepped one after the other; same weights after 5 steps, bitwise."""
    cfg = TrainConfig(optimizer="muon", lr=3e-3, muon_lr=0.04, weight_decay=0.1)
    ours, ref = _model(), _model()
    opt = build_optimizer(ours, cfg, torch.device("cpu"))
    assert isinstance(opt, MuonWithAdamW)
    muon_groups, adamw_groups = muon_param_groups(ref, cfg)
    ref_muon = Muon(muon_groups, lr=0.04, momentum=0.95, nesterov=True,
                    ns_dtype=default_ns_dtype(torch.device("cpu")))  # the precision the run picks here
    ref_adamw = torch.optim.AdamW(adamw_groups, lr=3e-3, betas=(0.9, 0.99))
    for step in range(5):
        lr = 3e-3 * (step + 1) / 5
        set_lr(opt, lr)
        for o in (ref_muon, ref_adamw):
            set_lr(o, lr)
        for model, opts in ((ours, [opt]), (ref, [ref_muon, ref_adamw])):
            _loss(model, step).backward()
            for o in opts:
                o.step()
                o.zero_grad()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), name
    before = {n: p.detach().clone() for n, p in _model().named_parameters()}
    assert any(not torch.equal(p, before[n]) for n, p in ours.named_parameters())


def test_state_dict_round_trip_continues_identically() -> None:
    cfg = TrainConfig(optimizer="muon", lr=3e-3, muon_lr=0.04)
    a = _model()
    opt_a = build_optimizer(a, cfg, torch.device("cpu"))
    for step in range(3):
        _loss(a, step).backward()
        opt_a.step()
        opt_a.zero_grad()
    b = copy.deepcopy(a)
    opt_b = build_optimizer(b, cfg, torch.device("cpu"))
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert "momentum_buffer" in opt_b._muon.state[next(iter(opt_b._muon.param_groups[0]["params"]))]
    for step in range(3, 6):
        for model, opt in ((a, opt_a), (b, opt_b)):
            set_lr(opt, 1e-3)
            _loss(model, step).backward()
            opt.step()
            opt.zero_grad()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_muon_run_resumes_bitwise(char_data: Path, tmp_path: Path) -> None:
    extra = {"train.optimizer": "muon", "train.muon_lr": 0.03, "model.positions": "rope",
             "model.normalization": "rmsnorm", "model.qk_norm": True, "model.activation": "relu2"}
    from gptforge.train.loop import train
    from gptforge.train.rundir import load_run_config

    train(_cfg(char_data, **extra, **{"train.max_steps": 12}), tmp_path / "straight")
    train(_cfg(char_data, **extra, **{"train.max_steps": 6}), tmp_path / "split")
    train(load_run_config(tmp_path / "split", {"train.max_steps": "12"}), tmp_path / "split", resume=True)
    a, b = _train_losses(tmp_path / "straight"), _train_losses(tmp_path / "split")
    assert sorted(a) == list(range(1, 13)) and a == b
    ea, eb = _eval_losses(tmp_path / "straight"), _eval_losses(tmp_path / "split")
    assert all(ea[s] == eb[s] for s in ea)


def test_default_ns_dtype_follows_the_cpus_bf16_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 iterations where the CPU has AMX or AVX-512 BF16 (or on CUDA), fp32 elsewhere, and
    the choice travels in the optimizer's param groups (so a resume keeps it)."""
    for amx, avx in ((False, False), (True, False), (False, True)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda avx=avx: avx, raising=False)
        want = "bf16" if amx or avx else "fp32"
        assert default_ns_dtype(torch.device("cpu")) == want
        opt = build_optimizer(_model(), TrainConfig(optimizer="muon"), torch.device("cpu"))
        assert {g["ns_dtype"] for g in opt.param_groups if "ns_dtype" in g} == {want}
    assert default_ns_dtype(torch.device("cuda")) == "bf16"
