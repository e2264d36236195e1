"""`cvmstore kbs`: run a Key Broker Service, make admin tokens, administer a running KBS.

`serve` runs `cvmstore.kbs.server.serve` with a configuration file and command-line
overrides. `token create` registers an admin token directly in the KBS's database (a second
administrator, or a lost first token). `admin` wraps the admin API
(`cvmstore.kbs.admin.AdminClient`): resources, policies, reference measurements, volumes and
the token key guests pin. The admin token comes from a file or the environment, never from
an argument (command lines end up in shell history and `ps` output), and is never printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvmstore.cli.common import (
    KBS_URL_ENV,
    add_measure_options,
    measure_igvm,
    read_input,
    tls_verify_option,
)
from cvmstore.cli.usage import UsageError
from cvmstore.errors import FormatError

if TYPE_CHECKING:
    from cvmstore.kbs.admin import AdminClient
    from cvmstore.kbs.config import KbsConfig

# The KBS itself (server, HTTP client, database drivers) is imported by the actions that use
# it, so that every other cvmstore command starts without loading it.

__all__ = ["ADMIN_TOKEN_FILE", "DEFAULT_URL", "TOKEN_ENV", "TOKEN_FILE_ENV", "URL_ENV", "register"]

URL_ENV = KBS_URL_ENV  # the variable the guest commands read too
TOKEN_FILE_ENV = "CVMSTORE_KBS_TOKEN_FILE"
TOKEN_ENV = "CVMSTORE_KBS_TOKEN"
DEFAULT_URL = "http://127.0.0.1:8080"
MEASUREMENT_BYTES = 48  # a SEV-SNP launch digest is a SHA-384
ADMIN_TOKEN_FILE = "admin.token"  # cvmstore.kbs.server.ADMIN_TOKEN_FILE (a test keeps them equal)

Handler = Callable[[argparse.Namespace], int]

_SERVE_EPILOG = f"""\
defaults (no configuration file, or an empty one, gives exactly these):
  listen         127.0.0.1:8080: loopback only; set tls_certificate and tls_key (or put a
                 TLS proxy in front) before listening on a network
  data_dir       ./kbs-data, made with mode 0700
  database       SQLite in DATA_DIR/kbs.db; or sqlite:///ABS/PATH.db, or
                 postgresql://USER@HOST/DB to share one database between KBS processes
  TLS            off; tls_certificate and tls_key (PEM files) together serve HTTPS
  workers        1 process

the first admin token: at the first start (no admin token in the database) one is made and
written to DATA_DIR/{ADMIN_TOKEN_FILE} (mode 0600), never to the log. Use it with
`cvmstore kbs admin --token-file DATA_DIR/{ADMIN_TOKEN_FILE} ...`; make more with
`cvmstore kbs token create`.

the master key (32 bytes; every secret in the database is sealed under it), from the first of:
  master_key_file                in the configuration file
  $CVMSTORE_KBS_MASTER_KEY_FILE  a file of 32 raw bytes or 64 hex digits
  $CVMSTORE_KBS_MASTER_KEY       64 hex digits
  DATA_DIR/master.key            made (mode 0600) at the first start when none of the above
Keep a copy apart from the database: without it the database serves nothing. Every KBS
process sharing one database needs the same key.

options given here override the file. Relative paths in the file are relative to the file's
directory; on the command line, to the current directory.

configuration example (TOML; docs/kbs.md lists every key):
  listen = "0.0.0.0:8443"
  data_dir = "/var/lib/cvmstore-kbs"
  database = "postgresql://kbs@db.internal/kbs"
  master_key_file = "/etc/cvmstore-kbs/master.key"
  tls_certificate = "/etc/cvmstore-kbs/tls.crt"
  tls_key = "/etc/cvmstore-kbs/tls.key"
  workers = 4
  log_level = "info"

exit status: 0 stopped by SIGTERM or SIGINT, after a graceful shutdown; 1 the server could
not start (e.g. the port is in use: the log says why); 2 usage error; 3 FormatError (a bad
configuration, database URL or master key); 6 WrongKeyError (the master key does not unseal
this database).

examples:
  cvmstore kbs serve
  cvmstore kbs serve --config /etc/cvmstore-kbs/kbs.toml
  cvmstore kbs serve --listen 0.0.0.0:8080 --data-dir /srv/kbs --workers 4
"""

_TOKEN_EPILOG = f"""\
The database is found as `kbs serve` finds it (--config, --data-dir, --database), and the KBS
may be running or not. The token is written to FILE only (mode 0600), never printed; its
SHA-256 is all the database keeps.

exit status: 0 token registered and written; 2 usage error (FILE exists and no --force, no
KBS data directory, FILE cannot be written); 3 FormatError (a bad configuration or database
URL).

examples:
  cvmstore kbs token create --data-dir /srv/kbs --label alice --output alice.token
  cvmstore kbs admin --token-file alice.token list-resources
  {TOKEN_FILE_ENV}=alice.token cvmstore kbs admin volume list
"""


def _admin_exit(igvm: str = "") -> str:
    """The exit statuses of an admin action (`igvm`: the IGVM file's, for add-reference)."""
    return (
        "exit status: 0 done; 2 usage error (bad arguments, no admin token, an unreadable "
        f"local file);{igvm} 40 KbsError (the KBS refused the request: its reason is shown, "
        "e.g. a policy it cannot parse); 41 KbsUnreachableError (nothing answers at the URL); "
        "42 KbsProtocolError (an answer that is not the admin API's); 43 KbsAuthError (the "
        "admin token is not valid); 44 ResourceNotFoundError (no such resource, volume or "
        "measurement)."
    )


_ADMIN_EXIT = textwrap.fill(_admin_exit(), 88)


def _paragraphs(*texts: str) -> str:
    return "\n\n".join(textwrap.fill(text, 88, break_on_hyphens=False) for text in texts)


_ADMIN_EPILOG = _paragraphs(
    f"the KBS: --url, else ${URL_ENV}, else {DEFAULT_URL} (the default of `kbs serve`). For "
    "https the KBS's certificate is checked against the system's CAs, or against --ca FILE.",
    "the admin token, never an argument (command lines end up in shell history and `ps`): "
    f"--token-file FILE, else ${TOKEN_FILE_ENV}, else ${TOKEN_ENV} (the token itself). The "
    f"KBS wrote its first token to DATA_DIR/{ADMIN_TOKEN_FILE} (by default "
    f"./kbs-data/{ADMIN_TOKEN_FILE}); `cvmstore kbs token create` makes more.",
    "output: short text, or JSON with --json. --url, --token-file, --ca and --json may also "
    "follow the action. A FILE argument may be - for stdin.",
    _admin_exit(),
) + (
    "\n\nexamples:\n"
    f"  export {TOKEN_FILE_ENV}=kbs-data/{ADMIN_TOKEN_FILE}\n"
    "  cvmstore kbs admin set-policy policy.toml\n"
    "  cvmstore kbs admin add-reference --igvm coconut-qemu.igvm --check-kvm\n"
    "  cvmstore kbs admin set-resource default/key/disk disk.key\n"
    "  cvmstore kbs admin volume create vm1 --policy vm1-policy.toml\n"
    "  cvmstore kbs admin --url https://kbs.example:8443 --ca ca.pem --json volume show vm1\n"
)

_PATH_TEXT = (
    "PATH is REPOSITORY/TYPE/TAG (Trustee's resource path: a guest reads it at "
    "/kbs/v0/resource/PATH), each part 1-128 of [A-Za-z0-9._-], not starting with . - _."
)
_POLICY_TEXT = (
    "A policy is TOML or JSON: the SEV-SNP attestation policy of docs/attestation-policy.md "
    "(measurements, TCB minimums, debug, ...) plus `tees` and `bindings`. A policy without "
    "`measurements` accepts the reference measurements registered with add-reference; with "
    "none registered either, it accepts no SNP guest at all."
)


def register(commands: Any) -> None:  # noqa: ANN401 (argparse's subparsers type is private)
    """Add `kbs serve`, `kbs token create` and `kbs admin ...` to the command line."""
    kbs = commands.add_parser(
        "kbs",
        help="run a Key Broker Service (KBS) and administer it",
        description=textwrap.fill(
            "A Key Broker Service: it releases secrets (disk keys, a volume's root secret "
            "and its rollback ledger) only to confidential VMs whose SEV-SNP attestation "
            "satisfies a policy, over Trustee's KBS protocol 0.4.0.",
            88,
        ),
        epilog="Each action's --help gives its defaults, exit statuses and examples, e.g. "
        "`cvmstore kbs serve --help`, `cvmstore kbs admin --help`.",
    )
    actions = kbs.add_subparsers(dest="kbs_command", metavar="ACTION", required=True)

    def leaf(
        parent: Any,  # noqa: ANN401 (argparse's subparsers type is private)
        name: str,
        handler: Handler,
        summary: str,
        description: str,
        epilog: str,
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(
            name,
            help=summary,
            description=textwrap.fill(description, 88),
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(handler=handler, command_parser=_Leaf(kbs, parser))
        return parser

    serve = leaf(
        actions,
        "serve",
        _serve,
        "run the KBS until SIGTERM or SIGINT",
        "Run a Key Broker Service: Trustee's KBS protocol for guests (/kbs/v0), the admin API "
        "(/admin/v0), /healthz and Prometheus /metrics, served by uvicorn until SIGTERM or "
        "SIGINT; then requests in flight finish and the database is closed. The log is JSON "
        "lines on stderr and never holds a secret.",
        _SERVE_EPILOG,
    )
    serve.add_argument("--config", metavar="FILE", help="the configuration file (TOML)")
    _database_options(serve)
    serve.add_argument(
        "--listen", metavar="HOST:PORT", help="where to listen (default: 127.0.0.1:8080)"
    )
    serve.add_argument(
        "--workers",
        metavar="N",
        type=int,
        help="serve with N processes, 1-256 (default: 1); they share the database",
    )

    token = actions.add_parser(
        "token",
        help="admin tokens: create",
        description="Admin tokens of a KBS: `create` registers another one.",
    )
    token_actions = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = leaf(
        token_actions,
        "create",
        _token_create,
        "register a new admin token and write it to a file (mode 0600)",
        "Register a new admin token in the KBS's database and write it to FILE, readable by "
        "the owner only: for another administrator, or when the first token (DATA_DIR/"
        f"{ADMIN_TOKEN_FILE}) is lost.",
        _TOKEN_EPILOG,
    )
    create.add_argument("--config", metavar="FILE", help="the KBS's configuration file (TOML)")
    _database_options(create)
    create.add_argument(
        "--label",
        metavar="TEXT",
        default="admin",
        help="a name kept with the token (default: %(default)s)",
    )
    create.add_argument(
        "--output", metavar="FILE", required=True, help="where to write the token (mode 0600)"
    )
    create.add_argument("--force", action="store_true", help="replace an existing FILE")

    admin = actions.add_parser(
        "admin",
        help="administer a running KBS through its admin API",
        description=textwrap.fill(
            "Administer a running KBS through its admin API (/admin/v0): resources, the "
            "attestation policy, resource policies, reference measurements, volumes with "
            "their rollback ledger, and the token key guests pin.",
            88,
        ),
        epilog=_ADMIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_options(admin, again=False)
    admin_actions = admin.add_subparsers(dest="admin_command", metavar="ACTION", required=True)

    def admin_leaf(
        parent: Any,  # noqa: ANN401 (argparse's subparsers type is private)
        name: str,
        handler: Handler,
        summary: str,
        description: str,
        examples: Sequence[str],
        *,
        exit_text: str = _ADMIN_EXIT,
    ) -> argparse.ArgumentParser:
        lines = "\n".join(f"  cvmstore kbs admin {example}" for example in examples)
        parser = leaf(
            parent, name, handler, summary, description, f"{exit_text}\n\nexamples:\n{lines}\n"
        )
        _connection_options(parser, again=True)
        return parser

    p = admin_leaf(
        admin_actions,
        "set-resource",
        _set_resource,
        "create or replace a resource (a secret guests may read)",
        "Create or replace the resource at PATH with the bytes of FILE (- for stdin), sealed "
        "under the KBS's master key. A guest reads it after attesting, when its evidence "
        "satisfies the resource's policy (set-resource-policy), else the attestation "
        f"policy. {_PATH_TEXT}",
        ["set-resource default/key/disk disk.key", "set-resource default/key/disk - < disk.key"],
    )
    p.add_argument("path", metavar="PATH", help="REPOSITORY/TYPE/TAG")
    p.add_argument("file", metavar="FILE")

    p = admin_leaf(
        admin_actions,
        "delete-resource",
        _delete_resource,
        "delete a resource and its policy",
        "Delete the resource at PATH, and its resource policy. A volume's root secret goes "
        f"only with its volume. {_PATH_TEXT}",
        ["delete-resource default/key/disk"],
    )
    p.add_argument("path", metavar="PATH", help="REPOSITORY/TYPE/TAG")

    admin_leaf(
        admin_actions,
        "list-resources",
        _list_resources,
        "list every resource path",
        "List the path of every resource, one a line (volumes' root secrets included). The "
        "secrets themselves never leave the KBS through the admin API.",
        ["list-resources", "list-resources --json"],
    )

    p = admin_leaf(
        admin_actions,
        "set-policy",
        _set_policy,
        "replace the attestation policy",
        "Replace the attestation policy: the evidence /attest accepts, and the policy of "
        f"every resource without its own. {_POLICY_TEXT} A policy the KBS cannot parse is "
        "refused with its reason (exit 40) and the old one stays.",
        ["set-policy policy.toml", "set-policy policy.json --json"],
    )
    p.add_argument("file", metavar="FILE", help="the policy (TOML or JSON), or - for stdin")

    admin_leaf(
        admin_actions,
        "show-policy",
        _show_policy,
        "show the attestation policy and the reference measurements",
        "Show the attestation policy (every key, defaults included) and the registered "
        "reference measurements.",
        ["show-policy", "show-policy --json"],
    )

    p = admin_leaf(
        admin_actions,
        "set-resource-policy",
        _set_resource_policy,
        "set which evidence may read one resource",
        "Set the policy of the resource at PATH: which attested evidence may read it, in "
        f"place of the attestation policy. {_POLICY_TEXT} For a volume's root secret "
        f"(cvmstore/volume/NAME) this replaces the volume's policy. {_PATH_TEXT}",
        ["set-resource-policy default/key/disk disk-policy.toml"],
    )
    p.add_argument("path", metavar="PATH", help="REPOSITORY/TYPE/TAG")
    p.add_argument("file", metavar="FILE", help="the policy (TOML or JSON), or - for stdin")

    p = admin_leaf(
        admin_actions,
        "add-reference",
        _add_reference,
        "register an allowed launch measurement (hex, or an IGVM file's)",
        "Register an allowed SEV-SNP launch measurement (a reference value): MEASUREMENT as "
        "96 hex digits, or with --igvm the launch digest of an IGVM file, computed exactly as "
        "`cvmstore igvm measure` computes it with the same options. A policy without its own "
        "`measurements` accepts the registered ones; with none registered, it accepts no SNP "
        "guest.",
        [
            "add-reference --igvm coconut-qemu.igvm --check-kvm",
            "add-reference --igvm guest.igvm --style igvmmeasure --native-zero",
            'add-reference "$(cvmstore igvm measure guest.igvm)"',
        ],
        exit_text="the measurement options are those of `cvmstore igvm measure`; its --help "
        "explains\nthe two styles, the --check-kvm rules and the ID block.\n\n"
        + textwrap.fill(
            _admin_exit(
                " 3 FormatError (--igvm: a malformed IGVM file, no SEV-SNP platform, a "
                "--check-kvm rule broken, or the ID block expects another digest); "
                "4 NotAnImageError; 5 UnsupportedVersionError;"
            ),
            88,
        ),
    )
    p.add_argument(
        "measurement",
        metavar="MEASUREMENT",
        nargs="?",
        help="the launch digest, 96 hex digits (or give --igvm)",
    )
    p.add_argument("--igvm", metavar="FILE", help="register the launch digest of this IGVM file")
    add_measure_options(p, see="`cvmstore igvm measure --help`")

    p = admin_leaf(
        admin_actions,
        "delete-reference",
        _delete_reference,
        "withdraw a reference measurement",
        "Withdraw a registered reference measurement: guests launched with it no longer "
        "satisfy a policy that relies on the registered references.",
        ["delete-reference 29e88dbc2110a9c6...40af2ddf (all 96 digits)"],
    )
    p.add_argument("measurement", metavar="MEASUREMENT", help="96 hex digits")

    volume = admin_actions.add_parser(
        "volume",
        help="volumes: create, show, list",
        description=textwrap.fill(
            "Volumes: a secure store's root secret (the resource cvmstore/volume/NAME) with "
            "its policy and its rollback ledger, which attested guests read and advance.",
            88,
        ),
    )
    volume_actions = volume.add_subparsers(dest="volume_command", metavar="ACTION", required=True)
    p = admin_leaf(
        volume_actions,
        "create",
        _volume_create,
        "make a volume: root secret, policy, ledger at version 0",
        "Make a volume: a random 256-bit root secret (the resource cvmstore/volume/NAME, "
        "never shown), a ledger entry at version 0, and the policy a guest's evidence must "
        "satisfy to read the secret or the ledger. NAME is 1-64 of [A-Za-z0-9._-], not "
        "starting with "
        f". - _. {_POLICY_TEXT}",
        ["volume create vm1 --policy vm1-policy.toml"],
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--policy", metavar="FILE", required=True, help="the volume's policy, or - for stdin"
    )

    p = admin_leaf(
        volume_actions,
        "show",
        _volume_show,
        "show a volume's ledger entry, policy and audit log",
        "Show a volume: its ledger entry (version, anchored generation and root), its policy "
        "and its audit log, newest first. The root secret is never shown.",
        ["volume show vm1", "volume show vm1 --json"],
    )
    p.add_argument("name", metavar="NAME")

    admin_leaf(
        volume_actions,
        "list",
        _volume_list,
        "list every volume",
        "List every volume's name, one a line.",
        ["volume list"],
    )

    admin_leaf(
        admin_actions,
        "token-key",
        _token_key,
        "print the KBS's signing key (JWK) and the thumbprint guests pin",
        "Print the public key the KBS signs attestation tokens and ledger answers with (a "
        "JWK, ES256) and its RFC 7638 thumbprint. A guest pins the thumbprint, so that no "
        "proxy between it and the KBS can forge or replay an answer. Every KBS process "
        "sharing one database has the same key.",
        ["token-key", "token-key --json"],
    )


class _Leaf:
    """The intermixed re-parse of `cli.main` for a `kbs` action (see `NestedParser`).

    `kbs` nests up to three levels (`kbs admin volume create`), with options at each level,
    so the whole `kbs` parser parses the arguments again; anything it does not know is
    refused by the action's own parser, naming it (exit 2).
    """

    def __init__(self, group: argparse.ArgumentParser, action: argparse.ArgumentParser) -> None:
        self.group = group
        self.action = action

    def parse_intermixed_args(
        self, args: Sequence[str], namespace: argparse.Namespace
    ) -> argparse.Namespace:
        """Parse `kbs`'s arguments; refuse what is left over."""
        parsed, extras = self.group.parse_known_args(list(args), namespace)
        if extras:
            self.action.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def _database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the KBS's data directory (default: ./kbs-data, or the configuration's data_dir)",
    )
    parser.add_argument(
        "--database",
        metavar="URL",
        help="sqlite:///ABS/PATH.db or postgresql://... (default: SQLite in DATA_DIR/kbs.db)",
    )


def _connection_options(parser: argparse.ArgumentParser, *, again: bool) -> None:
    """--url, --token-file, --ca, --json; `again` on an action: they may follow it too."""
    group = (
        parser.add_argument_group("connection and output (also accepted before the action)")
        if again
        else parser
    )
    unset = argparse.SUPPRESS if again else None  # an action's copy keeps admin's value
    group.add_argument(
        "--url", default=unset, help=f"the KBS (default: ${URL_ENV}, else {DEFAULT_URL})"
    )
    group.add_argument(
        "--token-file",
        metavar="FILE",
        default=unset,
        help=f"the admin token (default: ${TOKEN_FILE_ENV}, else ${TOKEN_ENV})",
    )
    group.add_argument(
        "--ca",
        metavar="FILE",
        default=unset,
        help="for https: trust the CA certificates in FILE (PEM) instead of the system's",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if again else False,
        help="print JSON",
    )


# ---------------------------------------------------------------- serve, token create


def _configuration(args: argparse.Namespace, **overrides: object) -> KbsConfig:
    """The configuration file's settings (or the defaults), with the command line's on top."""
    from cvmstore.kbs.config import load_config

    config = load_config(args.config)
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return dataclasses.replace(config, **given)  # type: ignore[arg-type]  # KbsConfig checks
    except FormatError as exc:  # the file was valid: the command line's value is not
        raise UsageError(str(exc)) from None


def _serve(args: argparse.Namespace) -> int:
    from cvmstore.kbs import server

    config = _configuration(
        args,
        listen=args.listen,
        data_dir=None if args.data_dir is None else Path(args.data_dir),
        database=args.database,
        workers=args.workers,
    )
    try:
        server.serve(config)  # until SIGTERM or SIGINT, then a graceful shutdown
    except SystemExit as exc:  # uvicorn's way of saying it could not start
        if exc.code in (None, 0):
            raise
        print(
            f"cvmstore: error: the KBS did not start (uvicorn exit status {exc.code}); its "
            "log above says why",
            file=sys.stderr,
        )
        return 1
    return 0


def _token_create(args: argparse.Namespace) -> int:
    from cvmstore.kbs import server
    from cvmstore.kbs.storage import open_repository

    config = _configuration(
        args,
        data_dir=None if args.data_dir is None else Path(args.data_dir),
        database=args.database,
    )
    output = Path(args.output)
    if (output.exists() or output.is_symlink()) and not args.force:
        raise UsageError(f"{output} already exists (use --force to replace it)")
    if output.is_dir():
        raise UsageError(f"{output} is a directory")
    if not output.parent.is_dir():
        raise UsageError(f"cannot create {output}: there is no directory {output.parent}")
    if not config.database and not config.data_dir.is_dir():
        raise UsageError(
            f"no KBS data directory {config.data_dir}: give the KBS's --data-dir, --database "
            "or --config (`cvmstore kbs serve` makes the directory at its first start)"
        )
    repository = open_repository(config.database_url)
    try:
        repository.migrate()
        token = server.new_admin_token(repository, args.label)
    finally:
        repository.close()
    try:
        server.write_secret_file(output, token)
    except OSError as exc:
        raise UsageError(
            f"cannot write {output}: {exc.strerror} (the token was registered but is lost: "
            "make another)"
        ) from None
    print(f"registered admin token {args.label!r}; written to {output} (mode 0600)")
    return 0


# ---------------------------------------------------------------- admin: local input


def _client(args: argparse.Namespace) -> AdminClient:
    import httpx

    from cvmstore.kbs.admin import AdminClient

    url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UsageError(f"KBS URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"KBS URL {url!r}: expected http://HOST:PORT or https://HOST:PORT")
    verify = tls_verify_option(args.ca)
    return AdminClient(url, _admin_token(args.token_file), verify=verify)


def _admin_token(token_file: str | None) -> str:
    """--token-file, else $CVMSTORE_KBS_TOKEN_FILE, else $CVMSTORE_KBS_TOKEN; never echoed."""
    path = token_file or os.environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read token file {path}: {exc.strerror}") from None
        return _token_text(raw, f"token file {path}")
    text = os.environ.get(TOKEN_ENV)
    if text:
        return _token_text(text.encode("utf-8", "replace"), f"${TOKEN_ENV}")
    raise UsageError(
        f"no admin token given: use --token-file FILE, or set ${TOKEN_FILE_ENV} or ${TOKEN_ENV} "
        f"(the KBS wrote its first token to DATA_DIR/{ADMIN_TOKEN_FILE}; "
        "`cvmstore kbs token create` makes more)"
    )


def _token_text(raw: bytes, where: str) -> str:
    token = raw.strip()
    if not token or any(not 0x21 <= byte <= 0x7E for byte in token):
        raise UsageError(f"{where} does not hold an admin token (one word of printable ASCII)")
    return token.decode("ascii")


def _resource_path(path: str) -> str:
    """PATH checked as the KBS checks it, so that it is also safe in the request's URL."""
    from cvmstore.kbs.problems import Problem
    from cvmstore.kbs.service import resource_path

    parts = path.split("/")
    if len(parts) != 3:
        raise UsageError(f"resource path {path!r}: expected REPOSITORY/TYPE/TAG")
    try:
        return resource_path(*parts)
    except Problem as exc:
        raise UsageError(
            f"resource path {path!r}: {exc.detail} (each part is 1-128 of [A-Za-z0-9._-], "
            "not starting with . - _)"
        ) from None


def _volume_name(name: str) -> str:
    # A volume's name is the tag of its root secret's path: checked the same way, which
    # also keeps it safe in the request's URL (the KBS applies its 64-character limit).
    from cvmstore.kbs.problems import Problem
    from cvmstore.kbs.service import resource_path

    try:
        resource_path("cvmstore", "volume", name)
    except Problem:
        raise UsageError(
            f"volume name {name[:80]!r}: expected 1-64 of [A-Za-z0-9._-], not starting with . - _"
        ) from None
    return name


def _measurement(text: str) -> str:
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        digest = b""
    if len(digest) != MEASUREMENT_BYTES:
        raise UsageError(
            f"measurement {text[:100]!r}: expected 96 hex digits (a SHA-384 launch digest)"
        )
    return digest.hex()


def _policy(name: str) -> bytes:
    document = read_input(name, "policy file")
    if not document.strip():
        raise UsageError(f"policy file {name} is empty")
    return document


def _emit(args: argparse.Namespace, document: object, text: str) -> int:
    print(json.dumps(document, indent=2) if args.json else text)
    return 0


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- admin: actions


def _set_resource(args: argparse.Namespace) -> int:
    path = _resource_path(args.path)
    value = read_input(args.file, "resource file")
    if not value:
        raise UsageError(f"{args.file} is empty: a resource cannot be empty")
    with _client(args) as client:
        client.set_resource(path, value)
    return _emit(args, {"resource": path, "size": len(value)}, f"set {path} ({len(value)} bytes)")


def _delete_resource(args: argparse.Namespace) -> int:
    path = _resource_path(args.path)
    with _client(args) as client:
        client.delete_resource(path)
    return _emit(args, {"resource": path, "deleted": True}, f"deleted {path}")


def _list_resources(args: argparse.Namespace) -> int:
    with _client(args) as client:
        paths = client.list_resources()
    return _emit(args, {"resources": paths}, "\n".join(paths) if paths else "(no resources)")


def _set_policy(args: argparse.Namespace) -> int:
    document = _policy(args.file)
    with _client(args) as client:
        answer = client.set_policy(document)
    references = answer.get("references", [])
    return _emit(
        args,
        answer,
        f"attestation policy set ({len(references)} reference measurements registered)",
    )


def _show_policy(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = client.policy()
    if args.json:
        return _emit(args, answer, "")
    origin = (
        "the built-in default; set one with set-policy"
        if answer.get("default")
        else "set with set-policy"
    )
    lines = [f"attestation policy ({origin}):"]
    policy = answer.get("attestation-policy", {})
    width = max([len(key) for key in policy] + [1])
    lines += [f"  {key:<{width}}  {json.dumps(value)}" for key, value in sorted(policy.items())]
    references = answer.get("references", [])
    lines.append(f"reference measurements: {len(references) or 'none'}")
    lines += [f"  {value}" for value in references]
    return _emit(args, answer, "\n".join(lines))


def _set_resource_policy(args: argparse.Namespace) -> int:
    path = _resource_path(args.path)
    document = _policy(args.file)
    with _client(args) as client:
        answer = client.set_resource_policy(path, document)
    return _emit(args, answer, f"policy of {path} set")


def _add_reference(args: argparse.Namespace) -> int:
    measure_options = (
        args.style != "igvm" or args.native_zero or args.check_kvm or args.ignore_idblock
    )
    if args.igvm is None and measure_options:
        raise UsageError("--style, --native-zero, --check-kvm and --ignore-idblock go with --igvm")
    if (args.igvm is None) == (args.measurement is None):
        raise UsageError("give either MEASUREMENT (96 hex digits) or --igvm FILE")
    source: dict[str, object] | None = None
    if args.igvm is not None:
        measurement = measure_igvm(args.igvm, args).hex
        source = {
            "file": args.igvm,
            "style": args.style,
            "native_zero": args.native_zero,
            "check_kvm": args.check_kvm,
            "ignore_idblock": args.ignore_idblock,
        }
    else:
        measurement = _measurement(args.measurement)
    with _client(args) as client:
        added = client.add_reference(measurement)
    state = "added" if added else "already registered"
    return _emit(
        args,
        {"measurement": measurement, "added": added, "igvm": source},
        f"reference measurement {measurement} {state}",
    )


def _delete_reference(args: argparse.Namespace) -> int:
    measurement = _measurement(args.measurement)
    with _client(args) as client:
        client.delete_reference(measurement)
    return _emit(
        args,
        {"measurement": measurement, "deleted": True},
        f"reference measurement {measurement} withdrawn",
    )


def _volume_create(args: argparse.Namespace) -> int:
    name = _volume_name(args.name)
    raw = _policy(args.policy)
    try:
        document = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"policy file {args.policy} is not UTF-8 text") from None
    with _client(args) as client:
        answer = client.create_volume(name, document)
    return _emit(
        args,
        answer,
        f"volume {name} created: root secret at {answer.get('resource')}, ledger version "
        f"{answer.get('version')}",
    )


def _volume_show(args: argparse.Namespace) -> int:
    name = _volume_name(args.name)
    with _client(args) as client:
        answer = client.volume(name)
    if args.json:
        return _emit(args, answer, "")
    if answer.get("generation") is None:
        ledger = f"version {answer.get('version')}, no commit anchored yet"
    else:
        ledger = (
            f"version {answer.get('version')}, generation {answer.get('generation')}, root "
            f"{answer.get('root')}, store id {answer.get('store-id')}"
        )
    audit = answer.get("audit", [])
    lines = [
        f"volume {answer.get('name')}",
        f"  root secret  {answer.get('resource')} (never shown)",
        f"  created      {_when(answer.get('created', 0))}",
        f"  ledger       {ledger}",
        f"  policy       {_policy_summary(answer.get('policy', {}))}",
        f"  audit        {len(audit)} entries, newest first" if audit else "  audit        none",
    ]
    for entry in audit:
        before = "none" if entry["from-generation"] is None else entry["from-generation"]
        lines.append(
            f"    {_when(entry['at'])}  {entry['outcome']:<8}  version {entry['from-version']} "
            f"-> {entry['to-version']}, generation {before} -> "
            f"{entry['to-generation']}, evidence {str(entry['evidence-sha384'])[:16]}"
        )
    return _emit(args, answer, "\n".join(lines))


def _policy_summary(policy: dict[str, Any]) -> str:
    """The keys of a policy that differ from the default policy's, on one line."""
    from cvmstore.kbs.policy import DEFAULT_POLICY

    default = json.loads(DEFAULT_POLICY.document())
    changed = [
        f"{key} {json.dumps(value)}"
        for key, value in sorted(policy.items())
        if key not in default or default[key] != value
    ]
    if not changed:
        return "the default policy (--json shows every key)"
    return "; ".join(changed) + " (other keys at their defaults; --json shows every key)"


def _volume_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        names = client.volumes()
    return _emit(args, {"volumes": names}, "\n".join(names) if names else "(no volumes)")


def _token_key(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = client.token_key()
    text = (
        f"thumbprint  {answer.get('thumbprint')}\n"
        f"jwk         {json.dumps(answer.get('jwk'), sort_keys=True)}"
    )
    return _emit(args, answer, text)
