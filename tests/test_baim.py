"""The BAIM: exact reproduction at init, connection rule, sparse execution, pruning,
strategies, checkpoints, continual learning and learner-level pruning."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from baim.cloud import add_learners, fuse, prune_learners
from baim.config import Recipe
from baim.models import BAIM, Connection, candidate_connections, load_model, save_model, train_baim
from conftest import trained_learners


def _learners(tiers, seed=0):
    return trained_learners(tiers, seed, batch=16)


def _data(n=48, tasks=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 1, 32, 32, generator=g) * 255).to(torch.uint8).numpy()
    return x, np.arange(n) % tasks


@pytest.mark.parametrize("tier", ["small", "large"])
def test_fresh_baim_k1_reproduces_edge_model_exactly(tier):
    ls = _learners([tier, "medium", "large"])
    model = fuse(ls, [0, 1, 2], ["a", "b", "c"], top_k=1, height=3).eval()
    assert len(model.connections) > 0  # cross-task connections are present, with α = 0
    x = torch.rand(8, 1, 32, 32)
    noise = torch.randn(8, model.latent_dim)
    with torch.no_grad():
        out = model(x, torch.zeros(8, dtype=torch.long), noise=noise)
        ref, mu, logvar = ls[0](x, noise[:, : ls[0].spec.latent_dim])
    assert torch.equal(out.x_hat, ref)
    assert torch.equal(out.mu[:, : mu.shape[1]], mu)
    # coordinates no squad encoder speaks for are N(0, 1)
    d = ls[0].spec.latent_dim
    if d < model.latent_dim:
        assert not out.spoken[:, d:].any() and torch.equal(out.logvar[:, d:], torch.zeros_like(out.logvar[:, d:]))


def test_product_of_experts_matches_formula():
    ls = _learners(["small", "medium"])
    model = fuse(ls, [0, 0], ["a"], top_k=1, connections=False).eval()
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        mu, logvar, spoken = model.posterior(x, torch.zeros(4, dtype=torch.long))
        (m1, v1), (m2, v2) = ls[0].encode(x), ls[1].encode(x)
    d1 = m1.shape[1]
    p1, p2 = torch.exp(-v1), torch.exp(-v2[:, :d1])
    torch.testing.assert_close(mu[:, :d1], (m1 * p1 + m2[:, :d1] * p2) / (p1 + p2))
    torch.testing.assert_close(logvar[:, :d1], -torch.log(p1 + p2))
    torch.testing.assert_close(mu[:, d1:], m2[:, d1:])  # one expert: passed through
    assert spoken.all()


def _acyclic(conns, counts):
    """Kahn's algorithm on the computation graph: f(l,s) → f(l,s+1), f(a,i) → f(b,j+1)."""
    nodes = {(side, l, s) for l, c in enumerate(counts) for side, k in (("enc", 0), ("dec", 1)) for s in range(c[k])}
    edges = {(side, l, s): [] for (side, l, s) in nodes}
    indeg = dict.fromkeys(nodes, 0)
    for side, l, s in nodes:
        if (side, l, s + 1) in nodes:
            edges[(side, l, s)].append((side, l, s + 1))
    for c in conns:
        if (c.side, c.dst, c.dst_stage + 1) in nodes:
            edges[(c.side, c.src, c.src_stage)].append((c.side, c.dst, c.dst_stage + 1))
    for outs in edges.values():
        for v in outs:
            indeg[v] += 1
    queue = [v for v, d in indeg.items() if d == 0]
    seen = 0
    while queue:
        v = queue.pop()
        seen += 1
        for w in edges[v]:
            indeg[w] -= 1
            if indeg[w] == 0:
                queue.append(w)
    return seen == len(nodes)


@settings(max_examples=60, deadline=None)
@given(depths=st.lists(st.integers(1, 5), min_size=2, max_size=5), height=st.sampled_from([0, 1, 3]))
def test_candidate_connections_follow_the_rule(depths, height):
    counts = [(d, d) for d in depths]
    conns = candidate_connections(counts, height)
    expected = set()
    for side in ("enc", "dec"):
        for a, da in enumerate(depths):
            for b, db in enumerate(depths):
                for i in range(da):
                    for j in range(db):
                        if a != b and 0 <= j - i <= height:
                            expected.add(Connection(side, a, i, b, j))
    assert set(conns) == expected and len(conns) == len(expected)
    assert all(c.side in ("enc", "dec") for c in conns)  # never across the bottleneck
    assert _acyclic(conns, counts)


def test_connections_never_cross_bottleneck_in_module():
    model = fuse(_learners(["small", "large"]), [0, 1], ["a", "b"], height=3)
    for c in model.conn_keys.values():
        src = model.stage_modules(c.side, c.src)[c.src_stage]
        dst = model.stage_modules(c.side, c.dst)[c.dst_stage]
        side_of = lambda m: "enc" if any(m is s for l in model.learners for s in l.encoder_stages) else "dec"  # noqa: E731
        assert side_of(src) == side_of(dst) == c.side


def _fixed_gate(model: BAIM, task: int, prefer: list[int]) -> None:
    """Make LSGate `task` always rank squad positions in `prefer` order."""
    g = model.lsgates[task]
    with torch.no_grad():
        g.net[2].weight.zero_()
        g.net[2].bias.copy_(
            torch.tensor([10.0 - prefer.index(i) if i in prefer else -10.0 for i in range(g.num_learners)])
        )


def test_sparse_execution_runs_only_selected_decoders_and_their_closure():
    ls = _learners(["small", "medium", "large", "small"])
    # squad 0 = learners 0, 1, 2; learner 3 is task 1's
    model = BAIM.from_learners(ls, [0, 0, 0, 1], ["a", "b"], [Connection("dec", 2, 0, 0, 1)], top_k=1).eval()
    _fixed_gate(model, 0, [0, 1, 2])
    tasks = torch.tensor([0, 0, 0, 1, 1])
    model.stage_calls.clear()
    with torch.no_grad():
        model.decode(torch.randn(5, model.latent_dim), tasks)
    calls = model.stage_calls
    assert all(calls[("dec", 0, s)] == 3 for s in range(3))  # selected for the 3 task-0 samples
    assert all(calls[("dec", 3, s)] == 2 for s in range(3))  # task 1's only learner
    assert calls[("dec", 2, 0)] == 3  # feeds learner 0's stage 1: runs stage 0 only ...
    assert all(calls[("dec", 2, s)] == 0 for s in range(1, 4))  # ... and nothing deeper
    assert all(calls[("dec", 1, s)] == 0 for s in range(3))  # unselected, feeds nobody


def test_gradients_reach_gates_adapters_and_alpha():
    ls = _learners(["small", "medium", "large"])
    model = fuse(ls, [0, 0, 1], ["a", "b"], top_k=2, height=1)
    with torch.no_grad():  # α away from 0 so that gradients also reach P
        for p in model.connections.values():
            p.alpha.fill_(0.1)
    model.train()
    x = torch.rand(16, 1, 32, 32)
    out = model(x, torch.tensor([0] * 8 + [1] * 8))
    ((out.x_hat - x) ** 2).mean().backward()
    assert model.lsgates[0].net[2].weight.grad.abs().sum() > 0
    assert all(a.weight.grad.abs().sum() > 0 for a in model.adapters)
    alphas = [p.alpha.grad for p in model.connections.values()]
    assert sum(int(g is not None and g.abs() > 0) for g in alphas) > len(alphas) // 2


def test_pruning_removes_lowest_scores_and_parameters():
    model = fuse(_learners(["small", "medium", "large"]), [0, 1, 2], ["a", "b", "c"], height=2)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.connections.values():
            p.alpha.fill_(float(torch.rand(())))
    scores = {n: p.score() for n, p in model.connections.items()}
    prune_params = {n: list(p.parameters()) for n, p in model.connections.items()}
    before_n, before_p = len(model.connections), model.num_parameters()
    victims = model.prune_connections(0.25)
    assert len(victims) == int(0.25 * before_n)
    assert max(scores[v] for v in victims) <= min(scores[n] for n in model.connections)
    assert len(model.connections) == before_n - len(victims)
    removed = sum(p.numel() for n in victims for p in prune_params[n])
    assert model.num_parameters() == before_p - removed
    assert not any(name.startswith(f"connections.{v}.") for v in victims for name, _ in model.named_parameters())


def test_freeze_keeps_learners_bit_identical():
    ls = _learners(["small", "medium", "large"])
    model = fuse(ls, [0, 0, 1], ["a", "b"], strategy="freeze", height=1)
    before = {k: v.clone() for k, v in model.learners.state_dict().items()}
    gate_before = model.lsgates[0].net[2].weight.clone()  # squad a has two learners to choose from
    x, t = _data(tasks=2)
    train_baim(model, x, t, Recipe(epochs=1, batch_size=16))
    after = model.learners.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BatchNorm statistics
    assert not torch.equal(gate_before, model.lsgates[0].net[2].weight)
    assert any(not torch.equal(a.weight, torch.eye(a.out_features, a.in_features)) for a in model.adapters)


def test_finetune_changes_learners_and_scratch_starts_fresh():
    ls = _learners(["small", "medium", "large"])
    ft = fuse(ls, [0, 1, 2], ["a", "b", "c"], strategy="finetune", height=0)
    w0 = ft.learners[0].image_head.weight.clone()
    assert torch.equal(w0, ls[0].image_head.weight)
    x, t = _data()
    train_baim(ft, x, t, Recipe(epochs=1, batch_size=16))
    assert not torch.equal(w0, ft.learners[0].image_head.weight)
    sc = fuse(ls, [0, 1, 2], ["a", "b", "c"], strategy="scratch", height=0)
    assert [l.spec for l in sc.learners] == [l.spec for l in ls]
    assert not torch.equal(sc.learners[0].image_head.weight, ls[0].image_head.weight)
    assert torch.equal(sc.learners[0].encoder_stages[0][1].running_var, torch.ones(16))  # fresh BN


def test_training_prunes_on_schedule():
    model = fuse(_learners(["small", "medium", "large"]), [0, 1, 2], ["a", "b", "c"], height=1)
    n0 = len(model.connections)
    x, t = _data()
    log = train_baim(
        model, x, t, Recipe(epochs=2, batch_size=16), prune_interval=1, prune_ratio=0.5, test_sets={0: x[:8]}
    )
    assert [r["connections"] for r in log] == [n0 - n0 // 2, n0 - n0 // 2 - (n0 - n0 // 2) // 2]
    assert log[1]["parameters"] < log[0]["parameters"]
    assert set(log[0]["usage"]) == {"a", "b", "c"} and "a" in log[0]["test_loss"]


def test_save_load_same_outputs(tmp_path):
    model = fuse(_learners(["small", "large", "medium"]), [0, 0, 1], ["a", "b"], height=1)
    with torch.no_grad():
        for p in model.connections.values():
            p.alpha.fill_(0.05)
    model.prune_connections(0.3)
    save_model(model, tmp_path / "b")
    loaded = load_model(tmp_path / "b")
    x, t, noise = torch.rand(6, 1, 32, 32), torch.tensor([0, 1, 0, 1, 0, 1]), torch.randn(6, model.latent_dim)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, t, noise=noise).x_hat, loaded(x, t, noise=noise).x_hat)
        g1 = torch.Generator().manual_seed(0)
        g2 = torch.Generator().manual_seed(0)
        assert torch.equal(model.generate(1, 4, g1), loaded.generate(1, 4, g2))
    assert loaded.num_parameters() == model.num_parameters()


def test_add_learners_keeps_old_outputs_and_trains_only_new_parts():
    ls = _learners(["small", "medium"])
    model = fuse(ls, [0, 1], ["a", "b"], top_k=1, height=1).eval()
    x, noise = torch.rand(4, 1, 32, 32), torch.randn(4, model.latent_dim)
    with torch.no_grad():
        before = model(x, torch.ones(4, dtype=torch.long), noise=noise).x_hat
    newcomer = _learners(["large"], seed=3)[0]
    n_conn = len(model.connections)
    trainable = add_learners(model, [(newcomer, "c")])
    assert model.task_names == ["a", "b", "c"] and model.latent_dim == 128
    assert len(model.connections) > n_conn and model.lsgates[2].num_learners == 1
    assert any(n.startswith("learners.2.") for n in trainable)
    assert not any(n.startswith(("learners.0.", "learners.1.")) for n in trainable)
    big_noise = torch.cat([noise, torch.zeros(4, 128 - noise.shape[1])], 1)
    with torch.no_grad():
        after = model(x, torch.ones(4, dtype=torch.long), noise=big_noise).x_hat
    torch.testing.assert_close(after, before)  # old squads unchanged (new connections have α = 0)
    # joining an existing squad grows its gate
    add_learners(model, [(_learners(["small"], seed=4)[0], "a")])
    assert model.lsgates[0].num_learners == 2
    xs, ts = _data(n=24)
    frozen_before = model.learners[0].image_head.weight.clone()
    train_baim(model, xs, ts, Recipe(epochs=1, batch_size=8), only=trainable)
    assert torch.equal(frozen_before, model.learners[0].image_head.weight)


def test_prune_learners_deselects_and_trims():
    ls = _learners(["small", "medium", "large"])
    model = BAIM.from_learners(ls, [0, 0, 0], ["a"], [Connection("dec", 2, 1, 0, 2)], top_k=1).eval()
    p0 = model.num_parameters()
    dropped = prune_learners(model, {0: torch.tensor([90.0, 10.0, 0.0])}, threshold=0.05)
    assert dropped == [2]
    assert model.lsgates[0].active.tolist() == [True, True, False]
    # learner 2's decoder stage 1 is still read by learner 0: stages 0-1 stay, the rest goes
    assert (
        len(model.learners[2].decoder_stages) == 2
        and model.learners[2].image_head is None
        and model.trimmed == {2: {"dec": 2}}
    )
    assert model.num_parameters() < p0
    _fixed_gate(model, 0, [2, 0, 1])  # even a gate that prefers it cannot pick it
    with torch.no_grad():
        model.stage_calls.clear()
        model.decode(torch.randn(3, model.latent_dim), torch.zeros(3, dtype=torch.long))
    assert model.stage_calls[("dec", 0, 2)] == 3 and model.stage_calls[("dec", 2, 1)] == 3
