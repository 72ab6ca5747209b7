"""Grouped projections (exact and low-rank through shared codes): the same function and gradients as one projection
per connection; a fresh connection (α = 0) changes nothing; connections still prune, by name,
to the model built without them; a low-rank BAIM partitions and saves without loss."""

import pytest
import torch

from baim.cloud import fuse, partition
from baim.learners import StagedVAE, tier_spec
from baim.models import BAIM, BAIMConfig, Connection, LowRankProjection, Projection, load_model, save_model
from conftest import look_trained, trained_learners

RANKS = [0, 4]  # exact 1×1 projections, and rank 4 through shared codes


def _reference_execute(model, side, targets, n, make_input):
    """``BAIM._execute`` as it was before grouping: each connection a separate
    :class:`Projection` on its source's raw rows, gathered for the target's samples."""
    into = {}
    for name, c in model.conn_keys.items():
        if c.side == side:
            into.setdefault((c.dst, c.dst_stage), []).append((name, c))
    depth = {l: len(model.stage_modules(side, l)) for l in range(len(model.learners))}
    empty = torch.zeros(n, dtype=torch.bool)
    run, used = {}, {}
    for s in range(max(depth.values()) - 1, -1, -1):
        for l in range(len(model.learners)):
            if s < depth[l]:
                m = run.get((l, s + 1), empty)
                used[(l, s)] = m | targets[l] if s == depth[l] - 1 and l in targets else m
        readers = {}
        for (b, j), lst in into.items():
            for _, c in lst:
                if j >= s and (b, j) in used and c.src_stage == s:
                    readers[(c.src, s)] = readers.get((c.src, s), empty) | used[(b, j)]
        for l in range(len(model.learners)):
            if s < depth[l]:
                run[(l, s)] = used[(l, s)] | readers.get((l, s), empty)

    def rows_of(store, key, mask):
        have, feats = store[key]
        return feats if torch.equal(have, mask) else feats[mask[have].nonzero().squeeze(1)]

    raw, mixed = {}, {}
    for s in range(max(depth.values())):
        for l in range(len(model.learners)):
            if s < depth[l] and run[(l, s)].any():
                mask = run[(l, s)]
                h = make_input(l, mask.nonzero().squeeze(1)) if s == 0 else rows_of(mixed, (l, s - 1), mask)
                raw[(l, s)] = (mask, model.stage_modules(side, l)[s](h))
                model.stage_calls[(side, l, s)] += int(mask.sum())
        for l in range(len(model.learners)):
            if s < depth[l] and used[(l, s)].any():
                mask = used[(l, s)]
                g = rows_of(raw, (l, s), mask)
                for name, c in into.get((l, s), []):
                    g = g + model.connections[name](rows_of(raw, (c.src, c.src_stage), mask))
                mixed[(l, s)] = (mask, g)
    return {l: mixed[(l, depth[l] - 1)][1] for l in targets if targets[l].any()}


class _OneByOne(BAIM):
    def _execute(self, side, targets, n, make_input):
        return _reference_execute(self, side, targets, n, make_input)


def _model(dtype=torch.float64, seed=0, rank=0):
    """Small and large learners (decoder sides 8/16/32 and 4/8/16/32) over two tasks, every
    candidate at h = 3 with random α, and gates that spread samples, so targets read several
    sources of several sizes (shrunk and grown) on differing sample sets."""
    torch.manual_seed(seed)
    learners = [StagedVAE(tier_spec(t)) for t in ("small", "large", "medium", "large")]
    model = fuse(learners, [0, 0, 1, 1], ["a", "b"], top_k=1, height=3, seed=seed, projection_rank=rank).to(dtype)
    with torch.no_grad():
        for p in model.connections.values():
            p.alpha.normal_(0, 0.3)
            p.bias.normal_(0, 0.1)
        for g in model.lsgates:
            g.net[2].weight.normal_(0, 1.0)
    return model.eval()


def _twin(model):
    twin = _OneByOne(model.config, [StagedVAE(s) for s in model.config.learner_specs]).to(
        model.adapters[0].weight.dtype
    )
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def _run(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    dtype = model.adapters[0].weight.dtype
    x = torch.rand(12, 1, 32, 32, generator=g).to(dtype)
    noise = torch.randn(12, model.latent_dim, generator=g).to(dtype)
    tasks = torch.tensor([0, 1] * 6)
    model.zero_grad(set_to_none=True)
    model.stage_calls.clear()
    out = model(x, tasks, noise=noise)
    (((out.x_hat - x) ** 2).mean() + 1e-3 * out.kl().mean()).backward()
    return out


def test_a_target_reads_several_sources_of_several_sizes():
    model = _model()
    shapes = {}
    for c in model.conn_keys.values():
        p = model.connections[c.name]
        shapes.setdefault((c.side, c.dst, c.dst_stage), set()).add((p.side_in > p.side_out) - (p.side_in < p.side_out))
    assert any(s == {-1, 0, 1} for s in shapes.values())  # grown, same size and shrunk into one target


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_grouped_execution_equals_one_projection_per_connection(dtype, tol, rank):
    model = _model(dtype, rank=rank)
    twin = _twin(model)
    out, ref = _run(model), _run(twin)
    assert model.stage_calls == twin.stage_calls  # the same stages on the same samples
    torch.testing.assert_close(out.x_hat, ref.x_hat, rtol=tol, atol=tol)
    torch.testing.assert_close(out.mu, ref.mu, rtol=tol, atol=tol)
    grads = dict(twin.named_parameters())
    checked = 0
    for name, p in model.named_parameters():
        q = grads[name]
        if p.grad is None:
            assert q.grad is None or not q.grad.any(), name
            continue
        scale = max(float(q.grad.abs().max()), 1e-3)  # a scalar α's gradient is a sum with cancellation
        torch.testing.assert_close(p.grad / scale, q.grad / scale, rtol=tol, atol=tol * 10, msg=name)
        checked += name.startswith("connections.")
    assert checked > (100 if rank else 3 * 100)  # α (and weight and bias) of over a hundred connections
    if rank:  # the shared codes and up-projections: compared above with the rest; most stages run
        for shared in (model.projection_downs, model.projection_ups):
            ps = list(shared.parameters())
            assert sum(p.grad is not None and bool(p.grad.any()) for p in ps) > len(ps) // 2


def test_summed_matches_projections_for_every_size_and_presized_sources():
    torch.manual_seed(0)
    sides = [32, 16, 8, 8, 4, 2]  # into side 8: shrunk ×4 and ×2, equal, grown ×2 and ×4
    projs = [Projection(3 + k, s, 5, 8).double() for k, s in enumerate(sides)]
    for p in projs:
        with torch.no_grad():
            p.alpha.normal_()
    feats = [torch.randn(4, 3 + k, s, s, dtype=torch.float64, requires_grad=True) for k, s in enumerate(sides)]
    ref = sum(p(f) for p, f in zip(projs, feats))
    presized = [torch.nn.functional.avg_pool2d(f, f.shape[-1] // 8) if f.shape[-1] > 8 else f for f in feats]
    for inputs in (feats, presized):
        out = Projection.summed(projs, inputs)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        tangent = torch.randn_like(ref)
        mine = torch.autograd.grad(
            out, [*feats] + [q for p in projs for q in p.parameters()], tangent, retain_graph=True
        )
        theirs = torch.autograd.grad(
            ref, [*feats] + [q for p in projs for q in p.parameters()], tangent, retain_graph=True
        )
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert {n for n, _ in projs[0].named_parameters()} == {"alpha", "conv.weight", "conv.bias"}


def test_low_rank_summed_matches_projections_for_every_size_and_presized_codes():
    torch.manual_seed(0)
    sides = [32, 16, 8, 8, 4, 2]
    up = torch.nn.Conv2d(3, 5, 1, bias=False).double()
    downs = [torch.nn.Conv2d(3 + k, 3, 1).double() for k in range(len(sides))]
    projs = [LowRankProjection(d, s, up, 8).double() for d, s in zip(downs, sides)]
    for p in projs:
        with torch.no_grad():
            p.alpha.normal_()
            p.bias.normal_()
    feats = [torch.randn(4, 3 + k, s, s, dtype=torch.float64, requires_grad=True) for k, s in enumerate(sides)]
    ref = sum(p(f) for p, f in zip(projs, feats))
    codes = [p.code(f) for p, f in zip(projs, feats)]
    presized = [torch.nn.functional.avg_pool2d(c, c.shape[-1] // 8) if c.shape[-1] > 8 else c for c in codes]
    params = [*up.parameters()] + [q for d in downs for q in d.parameters()] + [p.alpha for p in projs]
    for inputs in (codes, presized):
        out = LowRankProjection.summed(projs, inputs)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        tangent = torch.randn_like(ref)
        mine = torch.autograd.grad(out, [*feats] + params, tangent, retain_graph=True)
        theirs = torch.autograd.grad(ref, [*feats] + params, tangent, retain_graph=True)
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # the code is the source's and the up-projection the target's: a connection owns only its gate
    assert {n for n, _ in projs[0].named_parameters()} == {"alpha"}
    # ‖P‖ is the norm of the map U·D the connection applies
    m = (up.weight.flatten(1) @ downs[0].weight.flatten(1)).norm()
    assert projs[0].score() == pytest.approx(float(projs[0].alpha.detach().abs() * m.detach()), rel=1e-12)


@pytest.mark.parametrize("rank", RANKS)
def test_a_fresh_connection_changes_nothing(rank):
    """Adding a connection with α = 0 (as every connection starts) leaves outputs and the other
    parameters' gradients as they were; with α ≠ 0 the same connection changes the output."""
    torch.manual_seed(0)
    learners = trained_learners(["small", "large", "medium"])
    conns = [Connection("dec", 1, 1, 0, 2), Connection("dec", 2, 0, 0, 1), Connection("enc", 1, 0, 0, 1)]
    conns.append(Connection("dec", 1, 1, 2, 1))  # reads the trained connection's source: its code, if low-rank
    base = BAIM.from_learners(learners, [0, 0, 1], ["a", "b"], conns[:1], top_k=2, projection_rank=rank).double()
    with torch.no_grad():
        base.connections[conns[0].name].alpha.fill_(0.7)  # an old, trained connection into the same stage
    grown = BAIM.from_learners(learners, [0, 0, 1], ["a", "b"], conns[:1], top_k=2, projection_rank=rank).double()
    grown.load_state_dict(base.state_dict())
    for c in conns[1:]:
        grown.add_connection(c)
    grown.double()
    assert len(grown.connections) == 4 and grown.num_parameters() > base.num_parameters()
    if rank:  # the fourth shares the first's code
        assert set(grown.projection_downs) == {"dec_1_1", "dec_2_0", "enc_1_0"}
    x = torch.rand(8, 1, 32, 32, dtype=torch.float64)
    noise = torch.randn(8, base.latent_dim, dtype=torch.float64)
    tasks = torch.tensor([0, 1] * 4)
    outs = []
    for m in (base.eval(), grown.eval()):
        m.zero_grad(set_to_none=True)
        out = m(x, tasks, noise=noise)
        out.x_hat.square().mean().backward()
        outs.append(out)
    torch.testing.assert_close(outs[1].x_hat, outs[0].x_hat, rtol=0, atol=0)
    torch.testing.assert_close(outs[1].mu, outs[0].mu, rtol=0, atol=0)
    grads = dict(base.named_parameters())
    for name, p in grown.named_parameters():
        if name in grads and grads[name].grad is not None:
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-12, atol=1e-15, msg=name)
    new = [grown.connections[c.name] for c in conns[1:]]
    assert all(p.alpha.grad is not None and p.alpha.grad.abs() > 0 for p in new)  # they can learn
    with torch.no_grad():
        for p in new:
            p.alpha.fill_(0.3)
        changed = grown(x, tasks, noise=noise)
    assert (changed.x_hat - outs[0].x_hat).abs().max() > 1e-4
    assert (changed.mu - outs[0].mu).abs().max() > 1e-4


@pytest.mark.parametrize("rank", RANKS)
def test_pruned_connection_gives_the_model_built_without_it(rank):
    model = _model(torch.float32, rank=rank)
    victims = model.prune_connections(0.2)
    assert victims and not any(v in model.connections for v in victims)
    kept = [c for c in model.conn_keys.values()]
    rebuilt = BAIM.from_learners(
        [StagedVAE(s) for s in model.config.learner_specs],
        [0, 0, 1, 1],
        ["a", "b"],
        kept,
        top_k=1,
        height=3,
        projection_rank=rank,
    )
    rebuilt.load_state_dict(model.state_dict())  # strict: exactly the surviving connections' parameters
    rebuilt.eval()
    out, ref = _run(model), _run(rebuilt)
    assert model.stage_calls == rebuilt.stage_calls
    torch.testing.assert_close(out.x_hat, ref.x_hat, rtol=0, atol=0)
    a = model.connections[kept[0].name]
    assert a.alpha.grad is not None and torch.equal(a.alpha.grad, rebuilt.connections[kept[0].name].alpha.grad)
    assert model.num_parameters() == rebuilt.num_parameters()


def test_low_rank_code_and_up_projection_go_with_the_last_connection_that_uses_them():
    learners = [StagedVAE(tier_spec(t)) for t in ("small", "large", "medium")]
    conns = [Connection("dec", 1, 1, 0, 2), Connection("dec", 2, 1, 0, 2), Connection("dec", 2, 1, 1, 1)]
    model = BAIM.from_learners(learners, [0, 0, 0], ["a"], conns, projection_rank=4)
    assert set(model.projection_ups) == {"dec_0_2", "dec_1_1"}
    assert set(model.projection_downs) == {"dec_1_1", "dec_2_1"}  # one code per source, shared by two targets
    before = model.num_parameters()
    size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    down_1, up_0 = size(model.projection_downs["dec_1_1"]), size(model.projection_ups["dec_0_2"])
    model.remove_connection(conns[0].name)  # its target is still read by conns[1]; its source by none
    assert set(model.projection_ups) == {"dec_0_2", "dec_1_1"} and set(model.projection_downs) == {"dec_2_1"}
    assert before - model.num_parameters() == 1 + down_1  # its gate, and the code nobody reads now
    model.remove_connection(conns[1].name)
    assert set(model.projection_ups) == {"dec_1_1"} and set(model.projection_downs) == {"dec_2_1"}
    assert before - model.num_parameters() == 2 + down_1 + up_0
    plain = BAIM.from_learners(learners, [0, 0, 0], ["a"], conns[2:], projection_rank=4)
    assert plain.state_dict().keys() == model.state_dict().keys()


def test_low_rank_baim_partitions_saves_and_loads_without_loss(tmp_path):
    learners = trained_learners(["small", "medium", "large", "small", "large"])
    model = fuse(learners, [0, 0, 1, 1, 2], ["a", "b", "c"], top_k=2, height=2, projection_rank=4)
    model = look_trained(model, 0.2, 0.5)
    model.prune_connections(0.8)
    model.eval()
    assert any(model.learner_tasks[c.src] != model.learner_tasks[c.dst] for c in model.conn_keys.values())
    assert BAIMConfig.from_dict(model.config.to_dict()).projection_rank == 4
    assert "projection_rank" not in _model(torch.float32).config.to_dict()  # exact models' files as before
    x, noise = torch.rand(10, 1, 32, 32), torch.randn(10, model.latent_dim)
    for t in range(3):
        compact = partition(model, t)
        assert compact.projection_rank == 4 and compact.num_parameters() < model.num_parameters()
        save_model(compact, tmp_path / f"c{t}")
        loaded = load_model(tmp_path / f"c{t}")
        tasks = torch.full((10,), t, dtype=torch.long)
        with torch.no_grad():
            a = model(x, tasks, noise=noise).x_hat
            for m in (compact, loaded):
                assert (a - m(x, torch.zeros(10, dtype=torch.long), noise=noise).x_hat).abs().max() <= 1e-6


def test_removing_one_of_several_inputs_equals_a_baim_without_it():
    torch.manual_seed(0)
    learners = [StagedVAE(tier_spec(t)).eval() for t in ("small", "large", "medium")]
    conns = [Connection("dec", a, i, 0, 2) for a in (1, 2) for i in (0, 1, 2)]  # six inputs to one stage
    full = BAIM.from_learners(learners, [0, 0, 0], ["a"], conns, top_k=1).eval()
    with torch.no_grad():
        for p in full.connections.values():
            p.alpha.fill_(0.5)
        full.lsgates[0].net[2].bias.copy_(torch.tensor([5.0, 0.0, 0.0]))  # learner 0 decodes
    gone = conns[1].name
    full.remove_connection(gone)
    without = BAIM.from_learners(learners, [0, 0, 0], ["a"], [c for c in conns if c.name != gone], top_k=1)
    without.load_state_dict(full.state_dict())
    z = torch.randn(5, full.latent_dim)
    tasks = torch.zeros(5, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(full.decode(z, tasks)[0], without.eval().decode(z, tasks)[0], rtol=0, atol=0)
        assert not torch.equal(full.decode(z, tasks)[0], learners[0].decode(z[:, : learners[0].spec.latent_dim]))


def test_gentle_pruning_anneals_alpha_to_zero_before_removal():
    """``prune_anneal``: chosen connections reach α = 0 over one interval and only then go;
    none is chosen when no interval is left to anneal it."""
    import numpy as np

    from baim.config import Recipe
    from baim.models import train_baim

    model = fuse(trained_learners(["small", "small", "small"]), [0, 0, 1], ["a", "b"], height=0, projection_rank=4)
    n0 = len(model.connections)
    images = (np.random.default_rng(0).random((16, 1, 32, 32)) * 255).astype(np.uint8)
    log = train_baim(
        model,
        images,
        np.array([0, 1] * 8),
        Recipe(3, batch_size=8),
        prune_interval=1,
        prune_ratio=0.5,
        prune_anneal=True,
    )
    first, second = n0 // 2, (n0 - n0 // 2) // 2
    assert [r["pruned"] for r in log] == [0, first, second]  # only connections whose α is exactly 0 go
    assert [r["annealing"] for r in log] == [first, second, 0]
    assert len(model.connections) == n0 - first - second
    assert all(float(p.alpha.detach()) != 0.0 for p in model.connections.values())


def test_the_baim_trains_to_convergence_and_keeps_the_best_epochs_connections_with_its_weights():
    """With ``patience``, the cloud trains until its validation loss stops improving and keeps
    the best epoch: its weights *and* its connections (a pruning that made validation worse is
    undone), so the model it ends with scores exactly the best epoch's validation loss."""
    import numpy as np

    from baim.config import Recipe
    from baim.errors import ConfigError
    from baim.models import reconstruction_metrics, train_baim

    rng = np.random.default_rng(0)
    images = (rng.random((16, 1, 32, 32)) * 255).astype(np.uint8)
    val = ((rng.random((8, 1, 32, 32)) * 255).astype(np.uint8), np.array([0, 1] * 4))
    model = fuse(trained_learners(["small", "small", "small"]), [0, 0, 1], ["a", "b"], height=0, projection_rank=4)
    log = train_baim(
        model,
        images,
        np.array([0, 1] * 8),
        Recipe(4, batch_size=8, patience=4),
        prune_interval=1,
        prune_ratio=0.3,
        val=val,
    )
    best = min(log, key=lambda r: r["val_loss"])
    assert best is not log[-1] and best["connections"] > log[-1]["connections"]  # pruned further after the best
    assert len(model.connections) == best["connections"]  # the best epoch's connections are back
    again = sum(4 * reconstruction_metrics(model, val[0][val[1] == t], t, 0.00025)["test_loss"] for t in (0, 1)) / 8
    assert again == pytest.approx(best["val_loss"], rel=1e-6)  # and its weights: the same validation loss
    with pytest.raises(ConfigError, match="validation"):
        train_baim(model, images, np.array([0, 1] * 8), Recipe(2, batch_size=8, patience=1))
