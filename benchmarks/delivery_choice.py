"""Who should make the last choice of the model an edge serves: the cloud before
personalisation (``delivery_choice = "cloud"``), or the edge after it (``"edge"``)? And should
the delivery's own trainings converge when the cloud's do (``--converge``)?

    python benchmarks/delivery_choice.py --study DIR [--budget converged] [--seeds 0,1,2] [--converge] [--choice edge]
    python benchmarks/delivery_choice.py --run RUN [--run ...]

``--converge``: every edge's candidates are built again with the cut's fine-tune and the
distillation converging on the task's common validation images (cap and patience of the run's
cloud recipe; :class:`~baim.cloud.delivery.Deliveries` ``common_val``) instead of their 2 and 6
fixed epochs, under ``--choice`` (default ``edge``), then sent, personalised and scored as below.

The variant and the run as made (under ``"cloud"``) on the same finished runs, so every difference is the variant's:
same uploads, same BAIM, same candidates, same seeds. Under ``"edge"`` the cloud sends the best
candidate other than the upload, the edge personalises it and keeps it only if it then beats
its upload on its validation images. Per edge, on a scratch copy of the edge's folder, with the
real code: :meth:`Deliveries.deliver <baim.cloud.delivery.Deliveries.deliver>` (``choice="edge"``,
the run's budget and seed), then the edge node's own handlers (deploy, personalise with
:meth:`keep_better <baim.edge.node.EdgeNode.keep_better>`, evaluate: the run's test set, FID
sets, extractor, count and seed). Where the cloud's rule had sent a candidate other than the
upload, the variant sends the same one: the benchmark checks that its personalisation
reproduces the run's personalised model (else the comparison would mix in noise) and takes it
from there.

Per edge: what each rule served, its task-level ``nll_bpd`` / ``mse`` / ``fid`` (fitted prior) and
the same likelihood and MSE on the edge's own test set (its class mix); bytes each rule sent.
With ``--study``: the variant's baim cell per seed, paired (same seed, same edges, hierarchical
bootstrap as ``baim study``) with the cloud rule's baim cell and with every other method's cell
of the study; written to ``DIR/delivery_choice-CHOICE[-converge].json``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baim.cloud.delivery import Deliveries, budget_bytes
from baim.cloud.pipeline import common_data
from baim.edge.node import EdgeNode
from baim.learners import StagedVAE, weights_bytes
from baim.models import BAIM
from baim.models.evaluation import own_test_metrics
from baim.runview import Run
from baim.study.paired import paired_differences
from baim.transport import Message
from baim.workflow import deploy_message

PER_EDGE = ("nll_bpd", "mse", "fid", "kid")
OWN = ("own_nll_bpd", "own_mse")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6) for k in sa)


def measure_run(root: Path, choice: str = "edge", converge: bool = False) -> dict[str, Any]:
    """The run as made and the variant (``choice``, ``converge``) on one finished run: a row per edge."""
    run = Run.open(root)
    layout = run.layout
    edge_layout = replace(layout, preset=layout.preset | {"delivery_choice": choice})
    ds = run.dataset()
    summary = run.summary()
    seed = int(summary["seed"])
    extractor, fid_count = summary["fid_extractor"], int(summary["fid_count"])
    records = json.loads(run.files.state("deployment").read_text())["result"]["deliveries"]
    images, tasks = common_data(layout, ds)
    val_images, val_tasks = common_data(layout, ds, val=True)
    n = len(layout.tasks)
    deliveries = Deliveries(
        run.baim(),
        {t: images[tasks == t] for t in range(n)},
        layout.settings.cloud,
        seed,
        {t: val_images[val_tasks == t] for t in range(n)} if converge else None,
    )
    reuse = choice == "edge" and not converge  # the variant alone sends what the run sent, but for uploads
    beta = layout.settings.edge.kld_weight
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for e in summary["edges"]:
            edge, task = int(e["edge"]), layout.edges[int(e["edge"])].task
            record = records[str(edge)]
            folder = Path(scratch) / str(edge)  # a scratch copy of the edge
            shutil.copytree(run.files.edge(edge, "initial"), folder / "initial")
            shutil.copy(run.files.edge(edge) / "identity.pem", folder / "identity.pem")
            node = EdgeNode(edge, edge_layout, ds, folder, seed)
            upload = run.edge_model(edge, "initial")
            assert isinstance(upload, StagedVAE)
            budget = budget_bytes(layout.settings.download_budget, len(weights_bytes(upload)))
            if reuse and record["candidate"] != "upload":  # the variant sends the same model
                sent, sent_bytes, candidate = run.edge_model(edge, "deployed"), record["bytes"], record["candidate"]
            else:
                val = ds.train.load(layout.edges[edge].val)
                d = deliveries.deliver(edge, task, upload, budget, val, choice=choice)
                for c, note in d.candidates.items() if not converge else ():  # the run's candidates again
                    theirs = record["candidates"].get(c, {}).get("val_loss")
                    if theirs is not None and note.get("val_loss") is not None:
                        assert abs(note["val_loss"] - theirs) <= 1e-4 * abs(theirs), (edge, c, note, theirs)
                sent, sent_bytes, candidate = d.model, d.bytes, d.candidate
            assert isinstance(sent, BAIM)
            assert node.handle(deploy_message(sent)).kind == "ack"
            reply = node.handle(Message("train.personalize"))
            assert reply.kind == "metrics", reply.meta
            kept = reply.meta.get("kept", {"kept": "personalised"})
            if reuse and record["candidate"] != "upload" and kept["kept"] == "personalised":
                theirs = run.edge_model(edge, "personalized")
                assert _same_weights(node.load_model("personalized"), theirs), f"edge {edge}: not reproduced"
            ev = node.handle(
                Message("evaluate", {"model": "personalized", "fid_count": fid_count, "extractor": extractor})
            )
            assert ev.kind == "metrics", ev.meta
            cloud_model = run.edge_model(edge, "personalized")
            own = ds.test.load(layout.edges[edge].test)
            cloud_rule = e["models"]["personalized"] | own_test_metrics(cloud_model, own, kld_weight=beta, seed=seed)
            rows.append(
                {
                    "edge": edge,
                    "task": e["task"],
                    "tier": e["tier"],
                    "cloud": {"sent": record["candidate"], "bytes": record["bytes"]}
                    | {k: cloud_rule[k if k in OWN else _key(k)] for k in PER_EDGE + OWN},
                    "variant": {"sent": candidate, "bytes": sent_bytes, "kept": kept}
                    | {k: ev.meta[k if k in OWN else _key(k)] for k in PER_EDGE + OWN},
                }
            )
    return {"run": str(root), "seed": seed, "edges": rows}


def _key(k: str) -> str:
    """The evaluation's name of a study metric."""
    return {"fid": "fid_fitted", "kid": "kid_fitted"}.get(k, k)


def _cell(rows: list[dict], side: str) -> dict[str, Any]:
    per_edge = [{"edge": r["edge"], "task": r["task"]} | {k: r[side][k] for k in PER_EDGE + OWN} for r in rows]
    return {"per_edge": per_edge} | {k: float(np.mean([p[k] for p in per_edge])) for k in PER_EDGE + OWN}


def _fmt(d: dict) -> str:
    return f"{d['mean']:+.4g} [{d['ci_low']:+.4g}, {d['ci_high']:+.4g}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", help="a baim study folder: its baim runs at --budget, paired with its other methods")
    ap.add_argument("--budget", default="converged")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--run", action="append", default=[], help="a finished baim run (repeatable)")
    ap.add_argument("--choice", default="edge", choices=("cloud", "edge"), help="the variant's delivery_choice")
    ap.add_argument("--converge", action="store_true", help="the variant's delivery trainings converge")
    args = ap.parse_args()
    if args.choice == "cloud" and not args.converge:
        ap.error("--choice cloud without --converge is the run as made: nothing to compare")
    runs: list[Path] = [Path(r) for r in args.run]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.study:
        runs += [Path(args.study) / f"seed-{s}" / f"budget-{args.budget}" / "baim" for s in seeds]
    if not runs:
        ap.error("give --study DIR or --run RUN")
    results = [measure_run(r, args.choice, args.converge) for r in runs]
    for res in results:
        print(f"\n{res['run']}")
        print(
            f"{'edge':>4} {'task':<10} {'tier':<6} {'cloud sent':<10} {'edge sent':<10} {'kept':<12} "
            f"{'nll cloud':>9} {'nll edge':>9} {'own nll c':>9} {'own nll e':>9} {'FID c':>7} {'FID e':>7}"
        )
        for r in res["edges"]:
            c, x = r["cloud"], r["variant"]
            print(
                f"{r['edge']:>4} {r['task'][:10]:<10} {r['tier']:<6} {c['sent']:<10} {x['sent']:<10} "
                f"{x['kept']['kept']:<12} {c['nll_bpd']:>9.4f} {x['nll_bpd']:>9.4f} {c['own_nll_bpd']:>9.4f} "
                f"{x['own_nll_bpd']:>9.4f} {c['fid']:>7.1f} {x['fid']:>7.1f}"
            )
    by_seed = {res["seed"]: res for res in results}
    variant_cells = {s: _cell(r["edges"], "variant") for s, r in by_seed.items()}
    cloud_cells = {s: _cell(r["edges"], "cloud") for s, r in by_seed.items()}
    out: dict[str, Any] = {
        "variant": {"delivery_choice": args.choice, "converge": args.converge},
        "runs": [r["run"] for r in results],
        "edges": sum(len(r["edges"]) for r in results),
        "kept_upload": sum(r["variant"]["kept"]["kept"] == "upload" for res in results for r in res["edges"]),
        "cloud_sent_upload": sum(r["cloud"]["sent"] == "upload" for res in results for r in res["edges"]),
        "variant_sent_upload": sum(r["variant"]["sent"] == "upload" for res in results for r in res["edges"]),
        "mb_down": {
            side: round(sum(r[side]["bytes"] for res in results for r in res["edges"]) / 1e6, 3)
            for side in ("cloud", "variant")
        },
        "mean": {
            side: {k: float(np.mean([c[k] for c in cells.values()])) for k in PER_EDGE + OWN}
            for side, cells in (("cloud", cloud_cells), ("variant", variant_cells))
        },
        "paired": {"variant - cloud": paired_differences(variant_cells, cloud_cells, PER_EDGE + OWN, ())},
    }
    if args.study:
        study = json.loads((Path(args.study) / "study.json").read_text())
        for m in study["methods"]:
            if m == "baim":
                continue
            theirs = {c["seed"]: c for c in study["cells"] if c["method"] == m and c["budget"] == args.budget}
            theirs = {s: c for s, c in theirs.items() if s in variant_cells}
            if not theirs:
                continue
            for side, cells in (("variant", variant_cells), ("cloud", cloud_cells)):
                out["paired"][f"{side} - {m}"] = paired_differences(cells, theirs, PER_EDGE, ()) | {
                    "seeds": sorted(theirs)
                }
        name = f"delivery_choice-{args.choice}{'-converge' if args.converge else ''}.json"
        (Path(args.study) / name).write_text(json.dumps(out, indent=2) + "\n")
    print(
        f"\nedges {out['edges']}: the run (cloud's rule) sent {out['cloud_sent_upload']} their upload back; "
        f"the variant sent {out['variant_sent_upload']}, and {out['kept_upload']} edges kept their upload after "
        "personalising (only the edge's rule lets them)"
    )
    print(f"MB down: the run {out['mb_down']['cloud']}, the variant {out['mb_down']['variant']}")
    print("\npaired differences (95 % bootstrap over seeds, then edges; negative: the first lower):")
    for name, d in out["paired"].items():
        print(
            f"  {name:<28} nll {_fmt(d['nll_bpd'])}  FID {_fmt(d['fid'])}  MSE {_fmt(d['mse'])}"
            + (f"  own nll {_fmt(d['own_nll_bpd'])}" if "own_nll_bpd" in d else "")
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
