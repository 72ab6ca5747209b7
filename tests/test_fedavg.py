"""FedAvg at a fair budget: each edge's Adam survives the rounds; a lone edge sends nothing."""

import math

import pytest
import torch

from baim.compare.common import Settings, build
from baim.compare.measure import Meter, ledger_totals
from baim.compare.methods.federated import _fedavg_round, run_fedavg
from baim.compare.runner import make_context
from baim.config import RunConfig

# 4 edges over the three tasks: tops gets two, footwear and trousers & bags one each
CFG = RunConfig(
    preset="smoke",
    overrides={"num_edges": 4, "samples_per_edge": 64, "cloud_samples": 96, "test_per_task": 16, "fid_count": 8},
)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    out = tmp_path_factory.mktemp("fedavg")
    return make_context(out, CFG, Settings(rounds=2, local_epochs=1, sl_epochs=1, central_epochs=1), keep_messages=True)


def test_the_layout_has_a_shared_and_a_lone_task(ctx):
    assert sorted(len(ctx.edges_of(t)) for t in range(3)) == [1, 1, 2]


def test_each_edges_adam_state_survives_a_round(ctx):
    t = next(t for t in range(3) if len(ctx.edges_of(t)) > 1)
    wire, meter = ctx.wire(), Meter()
    global_model = build("small", ctx.ds, 0)
    local = {e: build("small", ctx.ds, e) for e in ctx.edges_of(t)}
    opts: dict[int, torch.optim.Optimizer] = {}
    with meter.counting():
        _fedavg_round(ctx, wire, meter, t, 0, global_model, local, opts)
        first = {e: opts[e] for e in local}
        w = next(iter(local[ctx.edges_of(t)[0]].parameters()))
        moment = {e: opts[e].state[next(iter(local[e].parameters()))]["exp_avg_sq"].clone() for e in local}
        _fedavg_round(ctx, wire, meter, t, 1, global_model, local, opts)
    for e in local:
        per_round = math.ceil(len(ctx.local_images(e)) / ctx.preset.edge.batch_size) * ctx.settings.local_epochs
        assert opts[e] is first[e]
        state = opts[e].state[next(iter(local[e].parameters()))]
        assert int(state["step"]) == 2 * per_round  # a fresh Adam per round would say per_round
        # Adam's second moment decays from round 1's (β2 = 0.999 over a few steps), not from zero
        assert torch.all(state["exp_avg_sq"] >= 0.99**per_round * moment[e])
    # the edges' optimisers act on the weights the global model was loaded into
    assert any(p is w for p in opts[ctx.edges_of(t)[0]].param_groups[0]["params"])


@pytest.mark.integration
def test_a_lone_edge_books_no_round_bytes(ctx):
    result = run_fedavg(ctx)
    wire = ctx.cache["wires"]["fedavg"]
    lone = {e for t in range(3) if len(ctx.edges_of(t)) == 1 for e in ctx.edges_of(t)}
    shared = set(ctx.edges) - lone
    talked = {edge for _, edge, phase, _ in wire.kept if phase == "rounds"}
    assert talked == shared
    per_edge = ledger_totals(wire.ledger.messages)["per_edge"]
    assert {int(e) for e in per_edge} == shared, per_edge  # the lone edges book no bytes at all
    # two messages per shared edge per round, nothing else
    assert sum(1 for _, _, phase, _ in wire.kept if phase == "rounds") == 2 * len(shared) * ctx.settings.rounds
    assert result.bytes_up > 0 and len(result.extra["rounds"]) == ctx.settings.rounds


@pytest.mark.integration
def test_fedavg_ft_after_fedavg_reuses_its_rounds_and_equals_fedavg_ft_alone(tmp_path):
    """``fedavg_ft`` in the context where ``fedavg`` ran starts from a copy of its rounds (they
    are not run twice, and ``fedavg``'s models are left as they were), and measures exactly
    what ``fedavg_ft`` run on its own does."""
    from baim.compare.methods import federated

    settings = Settings(rounds=2, local_epochs=1, sl_epochs=1, central_epochs=1)
    alone = run_fedavg(make_context(tmp_path / "alone", CFG, settings), finetune=True)
    ctx = make_context(tmp_path / "shared", CFG, settings)
    plain = run_fedavg(ctx)
    before = {k: v.clone() for k, v in ctx.cache["fedavg_rounds"]["smallest"].held[0].state_dict().items()}
    calls = []
    real = federated._fedavg_rounds
    federated._fedavg_rounds = lambda *a: calls.append(a) or real(*a)  # type: ignore[assignment]
    try:
        shared = run_fedavg(ctx, finetune=True)
    finally:
        federated._fedavg_rounds = real
    assert calls == []  # the rounds were not run again
    after = ctx.cache["fedavg_rounds"]["smallest"].held[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the fine-tune worked on a copy
    assert shared.extra["rounds"] == alone.extra["rounds"] == plain.extra["rounds"]
    for key in ("nll_bpd", "test_loss", "fid_fitted"):
        assert [r[key] for r in shared.per_edge] == [r[key] for r in alone.per_edge]
    assert (shared.bytes_up, shared.bytes_down) == (alone.bytes_up, alone.bytes_down)
    assert shared.bytes_down > plain.bytes_down  # the fine-tuned models went down once more
    s, a = shared.to_dict(), alone.to_dict()
    assert (s["edge_flops"], s["cloud_flops"]) == (a["edge_flops"], a["cloud_flops"]) and s["cloud_flops"] > 0
