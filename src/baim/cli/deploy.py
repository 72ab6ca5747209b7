"""``baim deploy``: credentials and launch commands for a real Flower deployment."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import Formatter, Subparsers, console, int_in


def _cmd_deploy_credentials(args: argparse.Namespace) -> None:
    from ..federation.deploy import make_credentials
    from ..signing import new_key, public_bytes, save_private_key, write_edge_keys

    made = make_credentials(args.out, args.nodes, args.host or None)
    keys = {}  # each edge's upload-signing identity; the cloud believes only these public halves
    for e in range(args.nodes):
        key = new_key()
        save_private_key(key, Path(args.out) / f"node-{e}.identity.pem")
        keys[e] = public_bytes(key).hex()
    made["edge_keys"] = str(write_edge_keys(Path(args.out) / "edge_keys.json", keys))
    console.print(
        f"wrote CA, SuperLink certificate, {args.nodes} SuperNode key pairs and edge identities "
        f"(node-N.identity.pem, public halves in edge_keys.json) to {args.out}"
    )
    console.print_json(json.dumps(made))


def _cmd_deploy_commands(args: argparse.Namespace) -> None:
    import shlex

    from ..federation.deploy import APP_DIR, superlink_command, supernode_command, write_flower_config

    creds = Path(args.credentials)
    address = f"{args.superlink_host}:{args.port}"
    cfg = write_flower_config(args.flwr_home, address, creds / "ca.crt")

    def q(cmd: list[str]) -> str:  # config values hold single quotes: wrap those in double quotes
        return " ".join(f'"{c}"' if "'" in c else shlex.quote(c) for c in cmd)

    # plain print: commands must not be wrapped, so they can be copied
    print(f"# flwr connection 'baim' written to {cfg}; export FLWR_HOME={args.flwr_home}")
    print(f"# 0. register the edges' upload keys: copy {creds / 'edge_keys.json'} to RUN/cloud/identities.json;")
    print("#    each edge's folder gets its node-N.identity.pem as identity.pem")
    print("# 1. on the cloud machine:")
    print(q(superlink_command(creds, args.listen, args.port)))
    for e in range(args.nodes):
        print(f"# 2.{e} register edge {e}'s key (cloud), then start its SuperNode (on edge {e}'s machine):")
        print(q(["flwr", "supernode", "register", str(creds / f"node-{e}.pub"), "baim"]))
        print(q(supernode_command(creds, creds / f"node-{e}", e, args.run_dir, address)))
    print("# 3. submit the workflow (cloud):")
    print(
        q(
            [
                "flwr",
                "run",
                str(APP_DIR),
                "baim",
                "--run-config",
                f"run-dir='{Path(args.run_dir).resolve()}' edges={args.nodes}",
            ]
        )
    )


def add_deploy(sub: Subparsers, fmt: Formatter) -> None:
    """``baim deploy credentials | commands``: Flower's deployment engine."""
    sp = sub.add_parser("deploy", formatter_class=fmt, help="Flower deployment engine: credentials and commands")
    dsub = sp.add_subparsers(dest="deploy_command", required=True)
    tp = dsub.add_parser("credentials", formatter_class=fmt, help="CA, SuperLink TLS certificate, SuperNode key pairs")
    tp.add_argument("--out", required=True)
    tp.add_argument("--nodes", type=int_in(1), required=True)
    tp.add_argument(
        "--host",
        action="append",
        help="SuperLink host name or IP for its certificate (repeatable; default 127.0.0.1 and localhost)",
    )
    tp.set_defaults(func=_cmd_deploy_credentials)
    tp = dsub.add_parser(
        "commands", formatter_class=fmt, help="write the flwr connection file and print every command to run"
    )
    tp.add_argument("--credentials", required=True)
    tp.add_argument("--nodes", type=int_in(1), required=True)
    tp.add_argument("--run-dir", required=True, help="the run directory (holds layout.json)")
    tp.add_argument("--superlink-host", default="127.0.0.1", help="address SuperNodes and flwr use")
    tp.add_argument("--listen", default="127.0.0.1", help="address the SuperLink listens on")
    tp.add_argument("--port", type=int_in(1, 65535), default=9093)
    tp.add_argument("--flwr-home", default=str(Path.home() / ".flwr"))
    tp.set_defaults(func=_cmd_deploy_commands)
