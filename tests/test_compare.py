"""``baim compare``: every method on the smoke preset, measured through the codec and ledger."""

import copy
import json

import pytest
import torch

from baim.compare import scaling
from baim.compare.common import Settings
from baim.compare.measure import Meter, Wire, ledger_totals
from baim.compare.runner import METHODS, SCALED, compare, make_context
from baim.config import RunConfig
from baim.learners import StagedVAE, tier_spec
from baim.transport import Message, encode

REQUIRED = (
    "method",
    "bytes_up",
    "bytes_down",
    "raw_data_bytes",
    "edge_cpu_s",
    "cloud_cpu_s",
    "edge_flops",
    "cloud_flops",
    "edge_storage_bytes",
    "cloud_storage_bytes",
    "latency_ms",
    "wall_s",
    "test_loss",
    "fid",
    "fid_sampling",
)


def test_meter_attributes_nested_work_once():
    meter = Meter()
    a, b = torch.rand(64, 64), torch.rand(64, 64)
    with meter.counting():
        with meter.cloud():
            a @ b
            with meter.edge():
                a @ b
                a @ b
    _, edge = meter.totals("edge")
    _, cloud = meter.totals("cloud")
    assert edge == 2 * cloud == 2 * 2 * 64**3


def test_a_paused_meter_counts_no_flops_and_resumes_where_it_was():
    """Measurement inside a method (its per-round scores) runs with the FLOP counter paused:
    a side open across the pause keeps what came before and after, none of the paused work."""
    meter = Meter()
    a, b = torch.rand(64, 64), torch.rand(64, 64)
    with meter.counting():
        with meter.edge():
            a @ b
            with meter.paused():
                a @ b
                with meter.cloud(), meter.paused():  # nested pause: nothing changes
                    a @ b
                assert meter._counter.mode is None  # really off: no interception
            a @ b
        with meter.paused():
            a @ b
        with meter.cloud():
            a @ b
    assert meter.totals("edge")[1] == 2 * 2 * 64**3
    assert meter.totals("cloud")[1] == 2 * 64**3
    with meter.paused():  # outside counting: nothing to pause
        a @ b


def _train_steps(model, steps):
    for _ in range(steps):
        x = torch.rand(8, 1, 32, 32)
        x_hat, mu, logvar = model(x)
        ((x_hat - x) ** 2).mean().backward()


def test_the_meter_counts_what_the_stock_counter_counts_without_a_hook_per_module_call():
    """The stock FlopCounterMode's module tracker keeps a backward-hook handle for every module
    call until it exits: a method that trains inside one counter grew without bound (split
    learning at converged: 21 GB). The meter keeps only the total, which must not change."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = StagedVAE(tier_spec("small"))
    stock = FlopCounterMode(display=False)
    with stock:
        _train_steps(model, 3)
        stock_hooks = len(stock.mod_tracker._hooks)
    meter = Meter()
    with meter.counting():
        with meter.edge():
            _train_steps(model, 3)
        assert not getattr(meter._counter.mod_tracker, "_hooks", [])
    assert stock_hooks > 3 * len(list(model.modules())) // 2  # what grew with every step
    assert meter.totals("edge")[1] == stock.get_total_flops() > 0


def test_wire_counts_encoded_bytes_and_raw_data():
    wire = Wire(keep=True)
    x = torch.zeros(3, 1, 32, 32, dtype=torch.uint8)
    got = wire.up(0, Message("data.upload", {"edge": 0}, {"images": x}), raw_data=x.numel())
    assert torch.equal(got.tensors["images"], x)
    wire.down(1, Message("ack"))
    t = ledger_totals(wire.ledger.messages)
    assert t["up"] == len(encode(Message("data.upload", {"edge": 0}, {"images": x})))
    assert t["down"] == len(encode(Message("ack"))) and t["per_edge"]["1"]["up"] == 0
    assert wire.raw_data_bytes == 3 * 32 * 32


def _measured(out):
    return json.loads((out / "baim" / "compare_measure.json").read_text())["messages"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Every method once on the smoke preset (smaller slices), with tiny round and epoch counts;
    four edges, so that one task has two and FedAvg has something to average (a lone edge sends nothing)."""
    out = tmp_path_factory.mktemp("compare")
    cfg = RunConfig(
        preset="smoke", overrides={"num_edges": 4, "samples_per_edge": 96, "cloud_samples": 96, "test_per_task": 32}
    )
    ctx = make_context(out, cfg, Settings(rounds=2, local_epochs=1, sl_epochs=1, central_epochs=1), keep_messages=True)
    result = compare(out, cfg, METHODS, ctx=ctx)
    return out, result, ctx


@pytest.mark.integration
def test_every_method_runs_and_is_measured(smoke):
    out, result, ctx = smoke
    rows = {r["method"]: r for r in result["methods"]}
    assert list(rows) == list(METHODS)
    for name, r in rows.items():
        missing = [k for k in REQUIRED if k not in r]
        assert not missing, (name, missing)
        assert r["fid"] > 0 and r["test_loss"] > 0 and r["latency_ms"] > 0 and r["fid_sampling"].startswith("fitted")
    for name in ("baim", "kd", "fedavg", "fd", "sl"):
        assert rows[name]["bytes_up"] > 0 and rows[name]["bytes_down"] > 0, name
    assert rows["central"]["bytes_up"] > 0 and rows["central"]["bytes_down"] == 0  # served from the cloud
    assert rows["central"]["round_trips"] == rows["sl"]["round_trips"] == 1
    assert rows["local"]["bytes_up"] == rows["local"]["bytes_down"] == 0
    for name in ("baim", "local", "fedavg", "fd", "sl"):
        assert rows[name]["edge_flops"] > 0, name
    for name in ("baim", "central", "kd", "sl"):
        assert rows[name]["cloud_flops"] > 0, name
    # each edge's model is also scored on the edge's validation part (what tunings choose on)
    for name in ("kd", "fedavg", "fd", "broadcast", "cloud_only", "central"):
        assert all(r["val_loss"] > 0 for r in rows[name]["per_edge"]), name
    # central serves one model per task: each edge's row scores it on that edge's own part
    assert len({r["val_loss"] for r in rows["central"]["per_edge"]}) == len(rows["central"]["per_edge"])
    assert rows["kd"]["settings"]["kd_weight"] == 0.5 and "0.5*(MSE" in rows["kd"]["settings"]["distill_loss"]
    # the controls reuse baim's uploads: the same bytes up; cloud_only uses no edge upload at all
    upload = sum(m["bytes"] for m in _measured(out) if m["phase"] == "upload" and m["direction"] == "up")
    assert rows["broadcast"]["bytes_up"] == rows["ensemble_distill"]["bytes_up"] == upload > 0
    assert rows["cloud_only"]["bytes_up"] == 0 < rows["cloud_only"]["bytes_down"]
    assert rows["broadcast"]["settings"]["chosen_upload"]  # one chosen upload per task with edges
    # broadcast_budget: each edge's download within its own budget (1.25x its upload, smoke's default)
    up = {int(e): b["up"] for e, b in rows["broadcast_budget"]["bytes_per_edge"].items()}
    down = {int(e): b["down"] for e, b in rows["broadcast_budget"]["bytes_per_edge"].items()}
    assert set(down) == set(up) and all(down[e] <= 1.25 * up[e] for e in up), (up, down)
    sent = rows["broadcast_budget"]["settings"]["sent_upload"]
    assert all(sent[str(e)] in ctx.edges_of(ctx.task_of(e)) for e in ctx.edges)
    # broadcast_keep: the same uploads chosen; the cloud (smoke's delivery_choice) sends each
    # edge the lower validation loss of that and its own upload, which it then downloads
    keep = rows["broadcast_keep"]
    assert keep["settings"]["sent_upload"] == sent
    kept = keep["settings"]["kept"]
    assert set(kept) == {str(e) for e in ctx.edges}
    for e, k in kept.items():
        loss = k["val_loss"]
        assert k["kept"] == ("upload" if loss["upload"] < loss["sent"] else "sent")
        if k["kept"] == "upload":
            assert keep["bytes_per_edge"][e]["down"] <= 1.01 * keep["bytes_per_edge"][e]["up"] + 4096
    for name in ("fedavg", "fd"):
        rounds = rows[name]["rounds"]
        assert [r["round"] for r in rounds] == [1, 2]
        assert all(r["nll_bpd"] > 0 for r in rounds)
        assert rounds[0]["bytes_cum"] < rounds[1]["bytes_cum"] == rows[name]["bytes_up"] + rows[name]["bytes_down"]
    saved = json.loads((out / "compare.json").read_text())
    assert [m["method"] for m in saved["methods"]] == list(METHODS)
    assert "fedavg_bytes_to_reach_baim_nll_bpd" in saved["findings"]
    assert set(saved["scaling"]["methods"]) == set(SCALED)
    for f in ("kpi_radar.png", "bytes_vs_quality.png", "scaling.png"):
        assert (out / "figures" / f).stat().st_size > 1000
    assert "| baim |" in (out / "compare.md").read_text()


@pytest.mark.integration
def test_the_broadcasts_share_identical_work_and_are_each_charged_in_full(smoke):
    """An edge sent the same upload by ``broadcast`` and ``broadcast_budget`` gets the same
    fine-tune and personalisation, run once: the same numbers in both rows. Each row is still
    charged its whole cost: ``broadcast_budget`` run alone, in a fresh context, books the same
    FLOPs (integers fixed by architectures and shapes) as in the shared run."""
    from baim.compare.methods.controls import run_broadcast

    out, result, ctx = smoke
    rows = {r["method"]: r for r in result["methods"]}
    sent = rows["broadcast_budget"]["settings"]["sent_upload"]
    chosen = rows["broadcast"]["settings"]["chosen_upload"]
    same = [e for e in ctx.edges if sent[str(e)] == chosen[ctx.layout.task_names[ctx.task_of(e)]]]
    assert same  # the smoke layout has edges whose budget admits their task's best upload
    by_edge = {m: {r["edge"]: r for r in rows[m]["per_edge"]} for m in ("broadcast", "broadcast_budget")}
    for e in same:
        assert by_edge["broadcast"][e] == by_edge["broadcast_budget"][e], e
    assert any(key[0] == "personalise" for key in ctx.cache["broadcast_work"])
    alone_ctx = make_context(out, ctx.cfg, ctx.settings)
    alone = run_broadcast(alone_ctx, out / "baim", within_budget=True).to_dict()
    for k in ("edge_flops", "cloud_flops", "bytes_up", "bytes_down"):
        assert alone[k] == rows["broadcast_budget"][k], k


def test_an_edges_evaluation_of_the_same_weights_is_computed_once(tmp_path, monkeypatch):
    """Seeded numbers of the same weights on the same edge: kept, not computed again; other
    weights, another edge or another prior are scored anew."""
    cfg = RunConfig(
        preset="smoke", overrides={"num_edges": 3, "samples_per_edge": 96, "cloud_samples": 96, "test_per_task": 32}
    )
    ctx = make_context(tmp_path, cfg, Settings(rounds=1, local_epochs=1, sl_epochs=1, central_epochs=1))
    calls = []
    real = ctx._evaluate_edge
    monkeypatch.setattr(ctx, "_evaluate_edge", lambda e, m, p: calls.append(e) or real(e, m, p))
    from baim.compare.common import build

    model = build(ctx.tier_of(0), ctx.ds, 0)
    first = ctx.evaluate_edge(0, model)
    again = ctx.evaluate_edge(0, copy.deepcopy(model))  # equal weights, another object
    assert again == first and calls == [0]
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    assert ctx.evaluate_edge(0, model)["val_loss"] != first["val_loss"] and calls == [0, 0]
    ctx.evaluate_edge(0, model, prior_images=ctx.local_images(0))
    assert calls == [0, 0, 0]


@pytest.mark.integration
def test_raw_data_leaves_edges_only_for_central_and_kd(smoke):
    _, result, ctx = smoke
    rows = {r["method"]: r for r in result["methods"]}
    for name in ("baim", "local", "fedavg", "fd", "sl"):
        assert rows[name]["raw_data_bytes"] == 0, name
    slices = sum(ctx.local_images(e).nbytes for e in ctx.edges)
    assert rows["central"]["raw_data_bytes"] == rows["kd"]["raw_data_bytes"] == slices


@pytest.mark.integration
def test_byte_counts_recomputed_from_the_messages(smoke):
    out, result, ctx = smoke
    rows = {r["method"]: r for r in result["methods"]}
    for name in ("fedavg", "sl"):
        wire = ctx.cache["wires"][name]
        sums = {"up": 0, "down": 0}
        for direction, _, phase, msg in wire.kept:
            if phase not in ("evaluation", "inference"):
                sums[direction] += len(encode(msg))
        assert sums == {"up": rows[name]["bytes_up"], "down": rows[name]["bytes_down"]}, name
    # baim's come from the workflow's own ledger, the one behind summary["bytes"]
    summary = json.loads((out / "baim" / "summary.json").read_text())
    measured = json.loads((out / "baim" / "compare_measure.json").read_text())["messages"]
    assert (
        sum(m["bytes"] for m in measured if m["phase"] == "upload" and m["direction"] == "up")
        == (summary["bytes"]["upload"])
    )
    assert rows["baim"]["bytes_down"] >= summary["bytes"]["download"]


@pytest.mark.integration
def test_scaling_formulas_reproduce_the_measured_point(smoke):
    _, result, ctx = smoke
    n0 = len(ctx.edges)
    rows = [r for r in result["methods"] if r["method"] in SCALED]  # the methods the table models
    assert {r["method"] for r in rows} == set(SCALED)
    for row in rows:
        per_task = [len(ctx.edges_of(t)) for t in range(len(ctx.layout.tasks))]
        p = scaling.predict(row, n0, len(ctx.layout.tasks), n0, per_task)["values"]
        assert p["in"] == pytest.approx(row["bytes_up"], rel=1e-3), row["method"]
        # baim's download: within each edge's budget, ρ bytes down per byte up (or, lossless, the
        # compact models' sizes: the model bytes, not the requests)
        rel = 0.01 if row["method"] == "baim" else 1e-3
        assert p["out"] == pytest.approx(row["bytes_down"], rel=rel), row["method"]


def test_fedavg_average_is_sample_weighted():
    from baim.compare.methods.federated import _average

    a, b = StagedVAE(tier_spec("small")), StagedVAE(tier_spec("small"))
    sa, sb = a.state_dict(), b.state_dict()
    avg = _average([sa, sb], [1, 3])
    k = "posterior_head.weight"
    assert torch.allclose(avg[k], 0.25 * sa[k] + 0.75 * sb[k])


@pytest.mark.integration
def test_scale_check_of_a_run_against_itself(smoke):
    """The check's plumbing: extrapolating a run to its own size reproduces what it measured."""
    out, _, _ = smoke
    chk = scaling.check(out / "baim", out / "baim")["checks"]
    assert chk["upload_bytes"]["relative_error"] == 0
    assert chk["cloud_storage_bytes"]["relative_error"] == 0
    assert chk["cloud_wall_s"]["relative_error"] == 0
    assert abs(chk["download_bytes"]["relative_error"]) < 0.5


def test_method_row_derives_every_common_column_the_same_way():
    from baim.compare.common import QUALITY_KEYS
    from baim.compare.row import Compute, method_row

    wire, meter = Wire(), Meter()
    with meter.counting(), meter.edge():
        torch.rand(8, 8) @ torch.rand(8, 8)
    wire.up(0, Message("up", {}, {"x": torch.zeros(4)}), raw_data=4)
    wire.down(1, Message("down"))
    wire.up(1, Message("generate"), "inference")  # measurement traffic: not in the bytes
    per_edge = [{"edge": e, "task": "a", **{k: float(e + 1) for k in QUALITY_KEYS}} for e in (0, 1)]
    row = method_row(
        "m",
        "a method",
        {"epochs": 1},
        messages=wire.ledger.messages,
        raw_data_bytes=wire.raw_data_bytes,
        compute=meter,
        storage=(10, 20),
        latency_ms=[1.0, 2.0],
        round_trips=0,
        wall_s=1.234,
        per_edge=per_edge,
        rounds=[{"round": 1}],
    ).to_dict()
    b = ledger_totals(wire.ledger.messages)
    assert not [k for k in REQUIRED if k not in row and k != "fid"]  # fid: the runner's choice of FID
    assert (row["bytes_up"], row["bytes_down"], row["messages"]) == (b["up"], b["down"], 2)
    assert row["edge_flops"] == 2 * 8**3 and row["cloud_flops"] == 0 and "meter" in row
    assert row["latency_ms"] == 1.5 and row["wall_s"] == 1.23 and row["raw_data_bytes"] == 4
    assert row["test_loss"] == 1.5 and row["fid_sampling"] == "fitted" and row["rounds"] == [{"round": 1}]
    assert (row["edge_storage_bytes"], row["cloud_storage_bytes"]) == (10, 20)
    given = method_row(
        "m",
        "",
        {},
        messages=[],
        raw_data_bytes=0,
        compute=Compute(1.0, 2.0, 3, 4),
        storage=(0, 0),
        latency_ms=1.0,
        round_trips=1,
        wall_s=0,
        per_edge=per_edge,
        fid_sampling="fitted (in the cloud)",
    ).to_dict()
    assert given["bytes_per_edge"] == {} and given["cloud_flops"] == 4 and "meter" not in given
    assert given["fid_sampling"] == "fitted (in the cloud)"


def test_broadcast_within_budget_sends_the_best_upload_that_fits():
    from baim.compare.methods.controls import best_fitting

    loss = {0: 0.03, 1: 0.02, 2: 0.01}  # edge 2 (largest) is best, edge 1 next
    size = {0: 100, 1: 200, 2: 800}
    assert best_fitting(0, loss, size, None) == 2  # no budget: plain broadcast
    assert best_fitting(0, loss, size, 250) == 1  # the best that fits 250 bytes
    assert best_fitting(0, loss, size, 125) == 0  # only its own fits
    assert best_fitting(0, loss, size, 50) == 0  # nothing fits: it keeps its own


def test_a_distillation_target_is_computed_once_before_training_and_used():
    """``train_vae``'s teacher target is a function of the images alone: computed once (not at
    every step of every epoch), and it is what the student is pulled towards."""
    import torch

    from baim.compare.common import build, train_vae
    from baim.config import Recipe
    from baim.data import load_dataset

    ds = load_dataset("fashion-mnist")
    images = ds.train.load(list(range(64)))
    calls = []

    def dark(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return torch.zeros_like(x)

    recipe = Recipe(epochs=3, batch_size=16, lr=0.01)
    plain, pulled = build("small", ds, 0), build("small", ds, 0)
    train_vae(plain, images, recipe, 3)
    train_vae(pulled, images, recipe, 3, target=dark, recon_weight=0.2)
    assert calls == [64]  # once, for all 64 images; 12 steps did not call it again
    x = torch.from_numpy(images).float() / 255
    with torch.no_grad():
        assert pulled.decode(pulled.encode(x)[0]).mean() < plain.decode(plain.encode(x)[0]).mean()


def test_keep_better_returns_the_lower_validation_loss_and_a_copy_of_the_upload():
    from types import SimpleNamespace

    from baim.compare.methods.controls import keep_better

    torch.manual_seed(0)
    val = torch.rand(16, 1, 32, 32).numpy()
    good, bad = StagedVAE(tier_spec("small")).eval(), StagedVAE(tier_spec("small")).eval()
    with torch.no_grad():  # a decoder that outputs a constant far from every image
        for p in bad.parameters():
            p.mul_(0).add_(3.0)
    ctx = SimpleNamespace(val_images=lambda e: val, seed=0)
    model, rec = keep_better(ctx, 0, bad, good, 0.00025)
    assert rec["kept"] == "upload" and rec["val_loss"]["upload"] < rec["val_loss"]["sent"]
    assert model is not good and all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), good.state_dict().values())
    )
    model, rec = keep_better(ctx, 0, good, bad, 0.00025)
    assert rec["kept"] == "sent" and model is good
    none = SimpleNamespace(val_images=lambda e: val[:0], seed=0)
    assert keep_better(none, 0, bad, good, 0.00025) == (bad, {"kept": "sent", "val_loss": {}})


def test_a_round_scores_a_model_several_edges_hold_once_with_the_same_numbers(tmp_path, monkeypatch):
    import baim.compare.common as common

    cfg = RunConfig(
        preset="smoke", overrides={"num_edges": 4, "samples_per_edge": 96, "cloud_samples": 96, "test_per_task": 32}
    )
    ctx = make_context(tmp_path, cfg, Settings(rounds=1, local_epochs=1, sl_epochs=1, central_epochs=1))
    task = next(t for t in range(len(ctx.layout.tasks)) if len(ctx.edges_of(t)) > 1)
    a, b = ctx.edges_of(task)[:2]
    model = StagedVAE(tier_spec(ctx.tier_of(a))).eval()
    alone = {e: ctx.cheap_quality(e, model) for e in (a, b)}
    calls = []
    real = common.nll_bpd
    monkeypatch.setattr(common, "nll_bpd", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    shared: dict = {}
    together = {e: ctx.cheap_quality(e, model, shared) for e in (a, b)}
    assert together == alone and len(calls) == 1
    assert together[a]["val_loss"] != together[b]["val_loss"]  # each edge's own validation part


def test_a_round_scores_only_the_models_that_changed(tmp_path, monkeypatch):
    """An edge whose model did not train this round (it or its task stopped early) keeps last
    round's numbers instead of being scored again; an edge that trained is scored anew."""
    from baim.compare.methods import federated

    cfg = RunConfig(
        preset="smoke", overrides={"num_edges": 3, "samples_per_edge": 96, "cloud_samples": 96, "test_per_task": 32}
    )
    ctx = make_context(tmp_path, cfg, Settings(rounds=1, local_epochs=1, sl_epochs=1, central_epochs=1))
    models = {e: StagedVAE(tier_spec(ctx.tier_of(e))).eval() for e in ctx.edges}
    scored = []
    real = ctx.cheap_quality
    monkeypatch.setattr(
        ctx, "cheap_quality", lambda e, m, shared=None, val_loss=None: scored.append(e) or real(e, m, shared, val_loss)
    )
    curve = federated._Curve(ctx, Wire(), every=1)
    curve.after_round(1, lambda: models)  # nothing is known yet: all scored
    first = curve.rows[-1]
    assert sorted(scored) == sorted(ctx.edges)
    kept, moved = ctx.edges[0], ctx.edges[1]
    before, moved_before = dict(curve.scores[kept]), dict(curve.scores[moved])
    with torch.no_grad():
        for p in models[moved].parameters():
            p.add_(0.05)
    scored.clear()
    curve.kept_changed({moved}, {})
    curve.after_round(2, lambda: models)
    second = curve.rows[-1]
    assert scored == [moved]
    assert curve.scores[kept] == before == real(kept, models[kept])  # what scoring it again would give
    assert curve.scores[moved]["nll_bpd"] != moved_before["nll_bpd"] and second["nll_bpd"] != first["nll_bpd"]


def _run_with_validation(ctx, monkeypatch, method, pattern):
    """``method`` run with each edge's k-th validation score taken from ``pattern``."""
    from baim.compare.methods import federated

    calls: dict = {}

    def fake_val(e, m):
        calls[e] = calls.get(e, -1) + 1
        return pattern[min(calls[e], len(pattern) - 1)]

    monkeypatch.setattr(ctx, "val_loss", fake_val)
    return federated.run_fedavg(ctx) if method == "fedavg" else federated.run_fd(ctx)


@pytest.mark.integration
@pytest.mark.parametrize("method", ["fedavg", "fd"])
def test_with_early_stopping_a_round_describes_the_models_validation_keeps(tmp_path, monkeypatch, method):
    """Converging, each round's point is the model each edge would keep if the method ended
    there (its best round on validation so far): the curve's last point is the final models'
    score, an edge is scored only in rounds that improved it, and the validation loss its early
    stopping took is reused, not computed again."""

    cfg = RunConfig(
        preset="smoke", overrides={"num_edges": 3, "samples_per_edge": 96, "cloud_samples": 96, "test_per_task": 32}
    )
    ctx = make_context(tmp_path, cfg, Settings(rounds=6, local_epochs=1, sl_epochs=1, central_epochs=1, patience=2))
    scored: list[tuple[int, bool]] = []
    real = ctx.cheap_quality

    def counted(e, m, shared=None, val_loss=None):
        scored.append((e, val_loss is not None))
        return real(e, m, shared, val_loss)

    monkeypatch.setattr(ctx, "cheap_quality", counted)
    # each edge's k-th validation score: rounds 1, 3 and 4 improve, 2, 5 and 6 do not (patience 2 stops
    # it after round 6 and restores round 4)
    row = _run_with_validation(ctx, monkeypatch, method, [0.5, 0.9, 0.4, 0.3, 0.35, 0.36])
    rounds = row.extra["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5, 6]
    assert len(scored) == 3 * len(ctx.edges)  # rounds 1, 3 and 4 only
    assert all(given for _, given in scored)  # with the number the stopper took
    assert [r["val_loss"] for r in rounds] == pytest.approx([0.5, 0.5, 0.4, 0.3, 0.3, 0.3])
    final = [r["nll_bpd"] for r in row.per_edge]
    assert rounds[-1]["nll_bpd"] == pytest.approx(sum(final) / len(final), rel=1e-6)


@pytest.mark.integration
@pytest.mark.parametrize("method", ["fedavg", "fd"])
def test_a_curve_scored_every_few_rounds_scores_what_validation_keeps(tmp_path, monkeypatch, method):
    """Scored every second round, a scored round whose model is not the best so far scores the
    best round's weights (a copy), not the current model: so the last point, carried from the
    last scored round, is the final (restored) models' score. Unscored rounds carry bytes only,
    and scoring happens only where a kept model changed since it was last scored."""

    cfg = RunConfig(
        preset="smoke", overrides={"num_edges": 3, "samples_per_edge": 96, "cloud_samples": 96, "test_per_task": 32}
    )
    settings = Settings(rounds=8, local_epochs=1, sl_epochs=1, central_epochs=1, patience=2, curve_every=2)
    ctx = make_context(tmp_path, cfg, settings)
    scored: list[int] = []
    real = ctx.cheap_quality
    monkeypatch.setattr(
        ctx, "cheap_quality", lambda e, m, shared=None, val_loss=None: scored.append(e) or real(e, m, shared, val_loss)
    )
    # rounds 1 and 3 improve, 4 and 5 do not: patience 2 stops after round 5 and restores round 3,
    # which round 4's point (scored) must already describe
    row = _run_with_validation(ctx, monkeypatch, method, [0.5, 0.9, 0.4, 0.45, 0.46])
    rounds = row.extra["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    assert [r["round"] for r in rounds if "nll_bpd" in r] == [1, 2, 4, 5]  # the first, every 2nd, the last
    assert all(a["bytes_cum"] <= b["bytes_cum"] for a, b in zip(rounds, rounds[1:])) and "nll_bpd" not in rounds[2]
    assert len(scored) == 2 * len(ctx.edges)  # rounds 1 and 4: the kept models changed only at 1 and 3
    final = [r["nll_bpd"] for r in row.per_edge]
    assert rounds[3]["nll_bpd"] == pytest.approx(sum(final) / len(final), rel=1e-6)
    assert rounds[4]["nll_bpd"] == rounds[3]["nll_bpd"]
