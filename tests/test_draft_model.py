"""Draft model: VATA masks, MTP unroll == step-by-step inference, export round trip."""

from __future__ import annotations

import json

import pytest
import torch

from sparrow_vllm.draft import SparrowDraftConfig, SparrowDraftModel, load_draft, save_draft
from sparrow_vllm.draft.evaluate import simulate_sample
from sparrow_vllm.draft.model import mtp_unroll
from sparrow_vllm.draft.propose import draft_chain, prefill
from sparrow_vllm.draft.train import collate, draft_sequence, mtp_loss

V, TH, H = 64, 16, 32
VIDEO = 63


def tiny_cfg(**kw) -> SparrowDraftConfig:
    base = dict(anchor_layers=[1, 2], target_num_layers=3, target_hidden_size=TH, hidden_size=H,
                intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                target_vocab_size=V, draft_vocab_size=V, window_size=4, rope_theta=100.0,
                video_token_id=VIDEO, image_token_id=62, mtp_depth=3)
    base.update(kw)
    if base.get("recipe") == "eagle3":
        base.setdefault("attention", "full")
    return SparrowDraftConfig(**base)


def tiny_model(cfg, seed=0) -> SparrowDraftModel:
    g = torch.Generator().manual_seed(seed)
    m = SparrowDraftModel(cfg, torch.randn(cfg.target_vocab_size, cfg.hidden_size, generator=g))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m.eval()


def fake_sample(n_pre=5, n_vis=12, n_post=4, n_resp=8, seed=0, A=2) -> dict:
    """A stored sample with all positions: text prompt, video, text prompt, response."""
    g = torch.Generator().manual_seed(seed)
    n = n_pre + n_vis + n_post + n_resp
    ids = torch.randint(0, 60, (n,), generator=g)
    ids[n_pre:n_pre + n_vis] = VIDEO
    text = ids != VIDEO
    text_index = torch.cumsum(text.long(), 0) - 1
    text_index[~text] = -1
    rs = n_pre + n_vis + n_post
    greedy = torch.full((n,), -1)
    greedy[rs - 1:n - 1] = ids[rs:]
    t_pos = torch.arange(n)
    t_pos[n_pre:n_pre + n_vis] = n_pre + torch.arange(n_vis) // 4
    t_pos[n_pre + n_vis:] = t_pos[n_pre + n_vis - 1] + 1 + torch.arange(n - n_pre - n_vis)
    return {"ids": ids.int(), "greedy": greedy.int(), "text_index": text_index.int(), "t_pos": t_pos.int(),
            "seq_pos": torch.arange(n).int(), "hidden": torch.randn(n, A, TH, generator=g).half(),
            "response_start": rs}


def chain_outputs(model, sample, origin_text_rows=None, k=3):
    """Prenorms of a k-chain at each response origin, via the inference path."""
    seq = draft_sequence(sample, model.config)
    g = model.combine_hidden_states(seq["hidden"].float())
    nxt = torch.cat([seq["ids"][1:], seq["ids"].new_zeros(1)])
    pre, kv = prefill(model, nxt, g, seq["positions"])
    outs = []
    rs = seq["response_start"]
    for j in range(rs - 1, len(seq["ids"]) - 1):
        _, p = draft_chain(model, kv, j, pre[j], int(seq["positions"][j]), k)
        outs.append(p)
    return torch.stack(outs)


def training_outputs(model, sample):
    seq = draft_sequence(sample, model.config)
    batch, C = collate([seq], model.config.mtp_depth, model.config.num_layers)
    g = model.combine_hidden_states(batch["hidden"])
    return torch.stack(mtp_unroll(model, batch["ids"], g, batch["positions"], batch["valid"],
                                  model.config.mtp_depth, query_from=C))


@pytest.mark.parametrize("path", ["inference", "training"])
def test_vata_ignores_visual_and_out_of_window(path):
    torch.manual_seed(0)
    cfg = tiny_cfg(window_size=4)
    model = tiny_model(cfg)
    run = chain_outputs if path == "inference" else training_outputs
    s = fake_sample()
    with torch.no_grad():
        ref = run(model, s)
        # 1. visual positions: hidden states and token ids perturbed -> nothing changes
        v = fake_sample()
        vis = v["text_index"] < 0
        v["hidden"][vis] = torch.randn_like(v["hidden"][vis].float()).half() * 100
        v["ids"][vis] = 7
        assert torch.equal(run(model, v), ref)
        # 2. a text position older than every query's window -> nothing changes
        o = fake_sample()
        o["hidden"][0] = o["hidden"][0] * -50  # text index 0; first query is at text index 8 > W
        o["ids"][0] = 11
        assert torch.equal(run(model, o), ref)
        # 3. inside the window (the last prompt text position) -> outputs change
        w = fake_sample()
        last_prompt = w["response_start"] - 2
        w["hidden"][last_prompt] = w["hidden"][last_prompt] * -50
        assert not torch.allclose(run(model, w), ref)


def test_full_attention_baseline_reads_visual_positions():
    model = tiny_model(tiny_cfg(recipe="eagle3"))
    s, v = fake_sample(), fake_sample()
    vis = v["text_index"] < 0
    v["hidden"][vis] = v["hidden"][vis] * -50
    with torch.no_grad():
        assert not torch.allclose(chain_outputs(model, v), chain_outputs(model, s))


@pytest.mark.parametrize("num_layers,recipe,window", [(1, "sparrow", 3), (2, "sparrow", 2), (1, "eagle3", 4),
                                                      (2, "eagle3", 4), (1, "sparrow", 1)])
def test_mtp_unroll_equals_step_by_step(num_layers, recipe, window):
    cfg = tiny_cfg(num_layers=num_layers, recipe=recipe, window_size=window, mtp_depth=4)
    model = tiny_model(cfg, seed=1)
    seq = draft_sequence(fake_sample(seed=3), cfg)
    ids, pos = seq["ids"], seq["positions"]
    n = len(ids)
    with torch.no_grad():
        g = model.combine_hidden_states(seq["hidden"].float())
        unrolled = mtp_unroll(model, ids[None], g[None], pos[None], torch.ones(1, n, dtype=torch.bool), 4)
        pre, kv = prefill(model, torch.cat([ids[1:], ids.new_zeros(1)]), g, pos)
        for j in range(n - 4):
            # inference feeds the drafted tokens; teacher forcing feeds ids[j+s]: force the same
            _, prenorms = draft_chain(model, kv, j, pre[j], int(pos[j]), 4,
                                      forced_tokens=[int(ids[j + s]) for s in range(2, 5)])
            for s in range(4):
                torch.testing.assert_close(prenorms[s], unrolled[s][0, j], atol=1e-5, rtol=1e-5)


def test_norm_before_residual_flag_changes_math():
    a = tiny_model(tiny_cfg(norm_before_residual=False), seed=2)
    b = tiny_model(tiny_cfg(norm_before_residual=True), seed=2)
    s = fake_sample()
    with torch.no_grad():
        assert not torch.allclose(chain_outputs(a, s), chain_outputs(b, s))


EXPECTED_KEYS = {
    "fc.weight", "midlayer.input_layernorm.weight", "midlayer.hidden_norm.weight",
    "midlayer.self_attn.q_proj.weight", "midlayer.self_attn.k_proj.weight",
    "midlayer.self_attn.v_proj.weight", "midlayer.self_attn.o_proj.weight",
    "midlayer.post_attention_layernorm.weight", "midlayer.mlp.gate_proj.weight",
    "midlayer.mlp.up_proj.weight", "midlayer.mlp.down_proj.weight", "norm.weight", "lm_head.weight",
}


@pytest.mark.parametrize("draft_vocab", [V, 20])
def test_export_round_trip(tmp_path, draft_vocab):
    from safetensors import safe_open

    cfg = tiny_cfg(draft_vocab_size=draft_vocab, num_layers=2, torch_dtype="float32")
    model = tiny_model(cfg, seed=4)
    if draft_vocab < V:
        model.set_vocab(torch.tensor(sorted(torch.randperm(V)[:draft_vocab].tolist())))
    save_draft(model, tmp_path / "d")
    with safe_open(str(tmp_path / "d" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        extra = {k for k in keys if k.startswith("layers.1.")}
        mapped = {"d2t", "t2d"} if draft_vocab < V else set()
        assert keys == EXPECTED_KEYS | extra | mapped
        assert "layers.1.self_attn.q_proj.weight" in extra and "embed_tokens.weight" not in keys
        if draft_vocab < V:
            assert f.get_tensor("d2t").dtype == torch.int64 and f.get_tensor("t2d").dtype == torch.bool
            d2t = f.get_tensor("d2t")
            # vLLM: target id of draft id i is i + d2t[i]
            assert torch.equal(torch.arange(draft_vocab) + d2t, model.draft_to_target(torch.arange(draft_vocab)))
            assert int(f.get_tensor("t2d").sum()) == draft_vocab
    loaded = load_draft(tmp_path / "d", embed_tokens=model.embed_tokens)
    assert loaded.config == cfg
    s = fake_sample()
    with torch.no_grad():
        torch.testing.assert_close(chain_outputs(loaded, s), chain_outputs(model, s))
    cfg_json = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg_json["transformer_layer_config"]["num_hidden_layers"] == 2


def test_fp16_export_is_close(tmp_path):
    model = tiny_model(tiny_cfg(), seed=5)
    save_draft(model, tmp_path / "d")
    loaded = load_draft(tmp_path / "d", embed_tokens=model.embed_tokens)
    s = fake_sample()
    with torch.no_grad():
        torch.testing.assert_close(chain_outputs(loaded, s), chain_outputs(model, s), atol=0.05, rtol=0.02)


def test_mtp_loss_counts_only_generated_labels():
    cfg = tiny_cfg()
    model = tiny_model(cfg)
    seq = draft_sequence(fake_sample(n_resp=8), cfg)
    batch, C = collate([seq], cfg.mtp_depth, 1)
    t2d = model.target_to_draft(torch.arange(V))
    loss, correct, count = mtp_loss(model, batch, C, cfg.mtp_depth, 0.8, t2d)
    # labels are the 8 generated tokens (greedy at rows rs-1 .. n-2); step s reaches them from
    # origins rs-1-s .. n-2-s, so 8 labelled origins per step and none from prompt labels
    assert count == [8, 8, 8]
    loss.backward()
    assert model.fc.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0


def test_oracle_draft_accepts_everything():
    """A draft whose readout is perfect (a successor rule it can compute from its input token)
    is accepted in full: tau = k + 1 on every round but the last."""
    Vo = 16
    cfg = tiny_cfg(target_vocab_size=Vo, draft_vocab_size=Vo, hidden_size=16, num_attention_heads=2,
                   num_key_value_heads=2, head_dim=8, window_size=1, video_token_id=15, image_token_id=14,
                   intermediate_size=8, norm_before_residual=True)
    model = SparrowDraftModel(cfg, torch.eye(Vo))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in (model.midlayer.input_layernorm, model.midlayer.hidden_norm,
                     model.midlayer.post_attention_layernorm, model.norm):
            norm.weight.fill_(1.0)
        model.midlayer.self_attn.v_proj.weight[:, :Vo] = torch.eye(Vo)  # v = e (token part)
        # the token term dominates the (normed, so bounded) hidden term in the residual
        model.midlayer.self_attn.o_proj.weight.copy_(10 * torch.eye(Vo))
        succ = (torch.arange(Vo) + 1) % 14
        model.lm_head.weight[succ, torch.arange(Vo)] = 1.0   # logits peak at successor(token)
    model.eval()
    n = 40
    ids = torch.arange(n) % 14
    s = {"ids": ids.int(), "greedy": torch.cat([ids[1:], torch.tensor([-1])]).int(),
         "text_index": torch.arange(n).int(), "t_pos": torch.arange(n).int(),
         "hidden": torch.randn(n, 2, TH).half(), "response_start": 10}
    # 30 tokens after the prefill's one: k=1 -> 15 rounds of 2 tokens, k=4 -> 6 rounds of 5
    res = simulate_sample(model, s, [1, 4])
    assert res[1] == [1] * 15
    assert res[4] == [4] * 6
    from sparrow_vllm.draft.evaluate import oracle_rounds, summarize

    assert oracle_rounds(res["to_generate"], 4) == res[4]
    summary = summarize([res], [1, 4])
    assert summary["4"]["tau"] == summary["4"]["tau_oracle"] == 5.0
    # a draft predicting the predecessor is never accepted
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[(torch.arange(Vo) - 1) % 14, torch.arange(Vo)] = 1.0
    assert all(a == 0 for a in simulate_sample(model, s, [3])[3])
