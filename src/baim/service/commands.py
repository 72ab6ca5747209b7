"""The service's sub-commands of ``baim``: ``serve cloud|edge|token|cert``, ``pull``, ``generate``.

Kept beside the services so that ``baim.cli`` only registers them; each handler is a thin shell
over :mod:`baim.service.serve`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def _serve_cloud(args: argparse.Namespace) -> None:
    from .serve import serve_cloud

    _tls_pair(args)
    serve_cloud(args.run, args.host, args.port, args.tls_cert, args.tls_key)


def _serve_edge(args: argparse.Namespace) -> None:
    from .serve import serve_edge

    _tls_pair(args)
    if args.toolbox_mb <= 0:
        from ..errors import ConfigError

        raise ConfigError(f"--toolbox-mb {args.toolbox_mb}: the memory budget must be positive")
    serve_edge(
        args.run,
        args.edge,
        args.cloud,
        args.token_file,
        args.host,
        args.port,
        args.toolbox_mb,
        args.ca_file,
        args.registry_key,
        args.tls_cert,
        args.tls_key,
        args.refresh_s,
        args.toolbox_disk_mb,
        args.trust_on_first_use,
        args.user_tokens,
        args.rate,
    )


def _serve_token(args: argparse.Namespace) -> None:
    from ..errors import ConfigError
    from .serve import open_registry

    registry = open_registry(args.run, publish=False)
    if args.list:
        print(json.dumps([t.to_dict() for t in registry.tokens()], indent=2))
    elif args.revoke:
        if not registry.revoke_token(args.revoke):
            raise ConfigError(f"no token issued to {args.revoke!r}; `baim serve token --run RUN --list` shows them")
        print(json.dumps({"revoked": args.revoke}))
    elif args.name:
        expires = None if args.expires_days is None else args.expires_days * 86400.0
        print(registry.issue_token(args.name, expires))
    else:
        raise ConfigError("give --name NAME (issue), --list or --revoke NAME")


def _serve_publish(args: argparse.Namespace) -> None:
    from .serve import open_registry

    registry = open_registry(args.run, publish=False)
    entries = [registry.publish(m) for m in args.model] if args.model else registry.publish_run(args.run)
    print(json.dumps([{"task": e.task, "version": e.version, "sha256": e.sha256} for e in entries], indent=2))


def _serve_cert(args: argparse.Namespace) -> None:
    from ..federation.deploy import issue_server_cert

    made = issue_server_cert(args.credentials, args.name, args.host or ["127.0.0.1", "localhost"])
    print(json.dumps(made, indent=2))


def _pull(args: argparse.Namespace) -> None:
    from .serve import pull

    got = pull(
        args.cloud, args.token_file, args.task, args.out, args.ca_file, args.registry_key, args.trust_on_first_use
    )
    print(json.dumps(got))


def _generate(args: argparse.Namespace) -> None:
    from .serve import generate_grid

    print(json.dumps(generate_grid(args.model, args.n, args.seed, args.out, args.procedure == "standard")))


def _tls_pair(args: argparse.Namespace) -> None:
    if bool(args.tls_cert) != bool(args.tls_key):
        from ..errors import ConfigError

        raise ConfigError("--tls-cert and --tls-key go together (both files, PEM)")


def add_service_commands(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    sp = sub.add_parser("serve", formatter_class=fmt, help="the GenAI service: cloud registry and edge services")
    ssub = sp.add_subparsers(dest="serve_command", required=True)

    def tls(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate (PEM)")
        p.add_argument("--tls-key", default=None, help="the certificate's private key (PEM)")

    p = ssub.add_parser(
        "cloud", formatter_class=fmt, help="serve a finished run's compact models (signed) to edges and users"
    )
    p.add_argument("--run", required=True, help="a finished run directory (its models are published on start)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for other machines)")
    p.add_argument("--port", type=int, default=8700)
    tls(p)
    p.set_defaults(func=_serve_cloud)

    p = ssub.add_parser("token", formatter_class=fmt, help="issue a bearer token for a client (printed once)")
    p.add_argument("--run", required=True)
    p.add_argument("--name", default=None, help="issue a token to this client (a new token replaces its old one)")
    p.add_argument("--expires-days", type=float, default=None, help="the issued token expires after this many days")
    p.add_argument("--list", action="store_true", help="list the clients with a token (names and dates, no tokens)")
    p.add_argument("--revoke", default=None, metavar="NAME", help="revoke this client's token")
    p.set_defaults(func=_serve_token)

    p = ssub.add_parser(
        "publish",
        formatter_class=fmt,
        help="publish new versions into a run's registry (a running `serve cloud` serves them at once)",
    )
    p.add_argument("--run", required=True)
    p.add_argument(
        "--model",
        action="append",
        help="a compact model folder to publish (repeatable); default: the run's cloud/compact/* "
        "(unchanged models are not new versions)",
    )
    p.set_defaults(func=_serve_publish)

    p = ssub.add_parser("edge", formatter_class=fmt, help="serve generation requests from an edge's toolbox")
    p.add_argument("--run", required=True, help="run directory holding edges/edge-E/")
    p.add_argument("--edge", type=int, required=True)
    p.add_argument("--cloud", default=None, help="registry URL (e.g. http://127.0.0.1:8700); without it, hits only")
    p.add_argument("--token-file", default=None, help="file holding this edge's registry token")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8701)
    p.add_argument("--toolbox-mb", type=float, default=256.0, help="memory budget of loaded models (MiB)")
    p.add_argument(
        "--toolbox-disk-mb", type=float, default=1024.0, help="disk budget of fetched models (MiB; LRU removed first)"
    )
    p.add_argument(
        "--user-tokens",
        default=None,
        help="file of user tokens (one a line, read again when it changes): only their holders may generate, "
        "reconstruct or list tasks; default: anyone may",
    )
    p.add_argument("--rate", type=float, default=20.0, help="requests per second per client (bursts of twice that)")
    p.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help="without --registry-key, trust and pin the key the registry presents on the first miss (an impostor "
        "reached first would be pinned)",
    )
    p.add_argument("--ca-file", default=None, help="CA certificate to trust for an HTTPS registry")
    p.add_argument(
        "--refresh-s",
        type=float,
        default=0.0,
        help="ask the registry for newer versions of fetched tasks every this many seconds (0: only on "
        "POST /v1/toolbox/refresh)",
    )
    p.add_argument(
        "--registry-key",
        default=None,
        help="file with the registry's public key (hex; RUN/registry/registry.pub on the cloud); default: the "
        "run's own registry if present, else the key pinned in the toolbox, else misses are refused",
    )
    tls(p)
    p.set_defaults(func=_serve_edge)

    p = ssub.add_parser(
        "cert", formatter_class=fmt, help="a TLS certificate for a service from `baim deploy credentials`' CA"
    )
    p.add_argument("--credentials", required=True, help="folder written by `baim deploy credentials` (ca.crt, ca.key)")
    p.add_argument("--name", required=True, help="file stem: writes NAME.pem and NAME.key")
    p.add_argument("--host", action="append", help="host name or IP (repeatable; default 127.0.0.1 and localhost)")
    p.set_defaults(func=_serve_cert)

    p = sub.add_parser("pull", formatter_class=fmt, help="download and verify a task's compact model from a registry")
    p.add_argument("--cloud", required=True, help="registry URL")
    p.add_argument("--token-file", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True, help="folder for the model (manifest.json + weights.safetensors)")
    p.add_argument("--ca-file", default=None, help="CA certificate to trust for an HTTPS registry")
    p.add_argument("--registry-key", default=None, help="file with the registry's public key (hex) to verify against")
    p.add_argument(
        "--trust-on-first-use", action="store_true", help="without --registry-key, trust the key the registry presents"
    )
    p.set_defaults(func=_pull)

    p = sub.add_parser("generate", formatter_class=fmt, help="generate images with a saved compact model")
    p.add_argument("--model", required=True, help="folder of a compact model (e.g. from `baim pull`)")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--procedure", default="fitted", choices=("fitted", "standard"), help="latent prior to sample")
    p.add_argument("--out", required=True, help="a .png grid or a .npy of uint8 images")
    p.set_defaults(func=_generate)
