"""The ``mailguard`` command (also ``python -m mailguard``).

Admin verbs work on a shared store (Redis), which is where blocks live when
several processes serve the same users::

    mailguard blocks --redis redis://127.0.0.1:6379/0 [--prefix mailguard:] [--json]
    mailguard unblock 203.0.113.7 --redis URL            # every kind of block on it
    mailguard unblock 3B7F0E2A --kind device --redis URL # one ActiveSync device
    mailguard unblock --all [--kind login] --redis URL
    mailguard block 203.0.113.7 --for 1h --reason "phishing run" --redis URL
    mailguard block Appl-F17X/jdoe --kind device --for 1d --redis URL
    mailguard stats --redis URL
    mailguard blocks --config mailguard.toml             # store taken from [store]

and the configuration verbs need no store::

    mailguard check-config mailguard.toml
    mailguard import-zimbra zmprov-gacf.txt > mailguard.toml   # "-" reads stdin
    mailguard demo [ARGS...]
    mailguard completion bash|zsh          # e.g. source <(mailguard completion bash)

and two print files installed with the package::

    mailguard example-config > mailguard.toml                  # every setting, explained
    mailguard fail2ban-filter > /etc/fail2ban/filter.d/mailguard.conf
    mailguard fail2ban-filter --dos > /etc/fail2ban/filter.d/mailguard-dos.conf
    mailguard fail2ban-filter --jail > /etc/fail2ban/jail.d/mailguard.local

Blocks lifted here take effect in every process sharing the store without a
restart (within the RedisStore's ``block_cache_ttl``, 2 s by default).  A
device is named by its id as the phone sends it (``Appl-F17X`` lifts every
account's jail of that device) or by a full key (``applf17x/jdoe``); an
address also lifts every network block holding it (an IPv6 address: its /64,
/56 and /48), and a network (``2001:db8:1::/48``) is named as itself.
The in-memory store lives inside the app's process and cannot be reached from
here: mount the admin app of :mod:`mailguard.admin` in the app instead.

Every block and lift leaves an audit line (logger ``mailguard.audit``, see
:mod:`mailguard.audit`), written to standard error unless logging is set up.

Exit codes: 0 done; 1 nothing to do (no block on that address or device,
``unblock --all`` with nothing to lift); 2 usage or configuration error; 3 the
store could not be reached or failed (``check-config`` tries it too).
Expected failures print one line on standard error, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from typing import Any, TextIO

from . import __version__
from .admin import block_record, keys_to_lift
from .audit import ALL, AUDIT_LOGGER, audit, block_key, who
from .config import ConfigError, load, redact
from .events import quote
from .options import declared, duration
from .policies import KINDS
from .presets import preset_options
from .stores.base import Store, StoreError
from .stores.memory import MemoryStore
from .zimbra import ImportFailed, import_text

__all__ = ["EXIT_NOT_FOUND", "EXIT_OK", "EXIT_STORE", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_STORE = 3

_EPILOG = """\
exit codes:
  0  done
  1  nothing to do: no block on that address or device (or none at all for --all)
  2  usage or configuration error
  3  the store could not be reached or failed

The store of blocks/block/unblock/stats: --redis URL [--prefix P], or --config FILE
(its [store] table, with MAILGUARD_* environment overrides; default file:
$MAILGUARD_CONFIG). The in-memory store lives inside the app's process: use
the admin app (mailguard.admin.AdminApp) there instead.
"""


class UsageError(Exception):
    """A mistake in the command line or the configuration: exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, via UsageError
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mailguard",
        description="Keep mail servers' HTTP front doors standing: list and lift blocks, "
        "check and translate configuration.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mailguard {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    store = _Parser(add_help=False)
    where = store.add_argument_group("store")
    where.add_argument("--redis", metavar="URL", help="the Redis store, redis://host:6379/0")
    where.add_argument("--prefix", metavar="P", help="key prefix of the store (mailguard:)")
    where.add_argument(
        "--config", metavar="FILE", help="take the store from this mailguard.toml's [store]"
    )

    blocks = commands.add_parser(
        "blocks",
        parents=[store],
        help="list live blocks",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    blocks.add_argument(
        "--kind", metavar="KIND", help=f"only blocks of this filter: {', '.join(KINDS)}"
    )
    blocks.add_argument("--json", action="store_true", help="print JSON instead of a table")

    unblock = commands.add_parser(
        "unblock",
        parents=[store],
        help="lift the blocks on an address or device",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    unblock.add_argument(
        "key",
        nargs="?",
        metavar="ADDRESS|DEVICE",
        help=(
            "an address (also lifts a block on any network holding it: its /64, /56, /48),"
            " a network, or a device id"
        ),
    )
    unblock.add_argument(
        "--kind", metavar="KIND", help=f"only blocks of this filter: {', '.join(KINDS)}"
    )
    unblock.add_argument("--all", action="store_true", help="lift every block (of --kind)")

    stats = commands.add_parser(
        "stats",
        parents=[store],
        help="count live blocks per kind, and keys in the store",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stats.add_argument("--json", action="store_true", help="print JSON")

    live = commands.add_parser(
        "config",
        parents=[store],
        help="show or change the live configuration (every process applies it within 2 s)",
        description="The live configuration: an overlay over the file, kept in the store "
        "(mailguard.live). VALUE is read like a MAILGUARD_* override: a TOML value "
        '(150, true, "25m", ["10.0.0.0/8"]) or else plain text (25m). '
        "add/remove change a list key (common.safe_ips, dos.exempt_paths); "
        "with --config FILE they start from the file's value.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    live.add_argument("action", choices=("get", "set", "add", "remove", "unset"))
    live.add_argument("key", nargs="?", metavar="TABLE.KEY", help="e.g. dos.max_requests_per_sec")
    live.add_argument("value", nargs="?", metavar="VALUE", help="e.g. 150, 25m, 192.0.2.0/24")
    live.add_argument("--json", action="store_true", help="get: print JSON")

    check = commands.add_parser("check-config", help="validate a mailguard.toml")
    check.add_argument("file", metavar="FILE")
    check.add_argument(
        "--no-env", action="store_true", help="ignore MAILGUARD_* environment overrides"
    )
    check.add_argument(
        "--no-connect", action="store_true", help="do not try to reach a Redis store"
    )

    zimbra = commands.add_parser(
        "import-zimbra",
        help="print the mailguard.toml equivalent of a zmprov gacf / carbonio dump",
        description="Translate `zmprov gacf`, `carbonio prov getConfig` or `carbonio config "
        "global get` output into a mailguard.toml, printed on standard output.",
    )
    zimbra.add_argument("file", metavar="FILE", help='the dump; "-" reads standard input')
    zimbra.add_argument("-o", "--output", metavar="OUT", help="write to OUT instead")
    zimbra.add_argument("--force", action="store_true", help="overwrite OUT if it exists")

    commands.add_parser(
        "example-config",
        help="print the example mailguard.toml (every setting, with its default)",
        description="Print the example mailguard.toml installed with mailguard "
        "(examples/mailguard.toml in the source) on standard output.",
    )
    fail2ban = commands.add_parser(
        "fail2ban-filter",
        help="print the fail2ban filter (or the DoS filter, or the jail)",
        description="Print the fail2ban filter for mailguard's failed-login and block lines "
        "(for /etc/fail2ban/filter.d/mailguard.conf), installed with mailguard "
        "(examples/fail2ban/ in the source; its README says how to set up logging).",
    )
    which = fail2ban.add_mutually_exclusive_group()
    which.add_argument(
        "--dos",
        action="store_true",
        help="the filter for DoS refusal episodes instead (filter.d/mailguard-dos.conf)",
    )
    which.add_argument(
        "--jail",
        action="store_true",
        help="the jails for both filters instead (jail.d/mailguard.local)",
    )

    commands.add_parser("demo", help="run the demo (arguments go to the demo)", add_help=False)
    serve = commands.add_parser(
        "serve",
        help="run the policy daemon for Dovecot and nginx's mail proxy (extra: serve)",
        description="Answer Dovecot's auth policy (POST /dovecot) and nginx's mail auth_http "
        "(GET /nginx) with the failure rule of [mailauth], on the store of [store]; stop with "
        "SIGTERM or SIGINT.",
    )
    serve.add_argument("--config", metavar="FILE", required=True, help="the mailguard.toml")
    serve.add_argument("--host", metavar="HOST", help="listen here instead of [serve] host")
    serve.add_argument(
        "--port", metavar="PORT", type=int, help="listen here instead of [serve] port"
    )
    _add_admin_verbs(commands, store)
    return parser


def main(argv: Sequence[str] | None = None, *, store: Store | None = None) -> int:
    """Run the command; return its exit code.

    :param argv: the arguments (default ``sys.argv[1:]``).
    :param store: use this store for blocks/unblock/stats instead of one
        named on the command line (tests, or embedding the CLI).
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["demo"]:
        return _demo(args_list[1:])
    try:
        with _audit_to_stderr():
            return _main(args_list, store)
    except KeyboardInterrupt:
        return 130


def _main(args_list: list[str], store: Store | None) -> int:
    try:
        try:
            args = _parser().parse_args(args_list)
        except SystemExit as done:  # --help, --version
            return int(done.code or 0)
        if args.command is None:
            _parser().print_help(sys.stderr)
            return EXIT_USAGE
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "import-zimbra":
            return _import_zimbra(args)
        if args.command == "example-config":
            return _print_data("mailguard.toml")
        if args.command == "fail2ban-filter":
            name = "mailguard-dos.conf" if args.dos else "mailguard.conf"
            return _print_data(
                "fail2ban/jail.d/mailguard.local" if args.jail else f"fail2ban/filter.d/{name}"
            )
        if args.command == "completion":
            return _completion(args.shell, sys.stdout)
        if args.command == "serve":
            return _serve(args)
        if args.command == "config":
            return _live_command(args, store)
        return _store_command(args, store)
    except UsageError as exc:
        _fail(str(exc))
        return EXIT_USAGE
    except ConfigError as exc:
        _fail(f"mailguard: {exc}")
        return EXIT_USAGE


def _serve(args: argparse.Namespace) -> int:
    from . import serve

    if args.port is not None and not 1 <= args.port <= 65535:
        raise UsageError(f"mailguard serve: --port {args.port} is not from 1 to 65535")
    try:
        return serve.main(args.config, host=args.host, port=args.port)
    except serve.MissingExtra as exc:
        raise UsageError(f"mailguard: {exc}") from None


def _fail(message: str) -> None:
    print(message.replace("\n", " "), file=sys.stderr)


# ------------------------------------------------------------ configuration


def _check_config(args: argparse.Namespace) -> int:
    config = load(args.file, env={} if args.no_env else None)
    serves = _serve_tables(config, args.file)
    if serves:  # what mailguard serve refuses to start with, check-config refuses too
        from .mailauth import ServeSettings, secret_problem

        problem = secret_problem(config.serve.build(ServeSettings))
        if problem is not None:
            raise ConfigError(config.source, "[serve] secret", problem)
    print(f"{args.file}: OK: {config.describe()}")
    if not config.enabled and not serves:
        _fail(f"mailguard: warning: {args.file} enables no filter")
    _print_in_force(config, sys.stdout)
    if serves:
        _print_serve_in_force(config, sys.stdout)
    return _try_store(config, connect=not args.no_connect, out=sys.stdout)


def _import_zimbra(args: argparse.Namespace) -> int:
    source = args.file
    try:
        if source == "-":
            text = sys.stdin.read()
            source = "standard input"
        else:
            with open(source, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
    except OSError as exc:
        raise UsageError(f"mailguard: {source}: cannot read: {exc.strerror or exc}") from None
    try:
        output = import_text(text, os.path.basename(source))
    except ImportFailed as exc:
        raise UsageError(f"mailguard: {source}: {exc}") from None
    if args.output is None:
        sys.stdout.write(output)
        return EXIT_OK
    if os.path.exists(args.output) and not args.force:
        raise UsageError(f"mailguard: {args.output} exists; add --force to overwrite it")
    try:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(output)
    except OSError as exc:
        raise UsageError(f"mailguard: {args.output}: cannot write: {exc.strerror or exc}") from None
    print(f"wrote {args.output}; check it with: mailguard check-config {args.output}")
    return EXIT_OK


#: Files installed with the package (copies of examples/, kept equal by
#: tests/test_package_data.py), under mailguard/data/.
DATA_FILES = (
    "mailguard.toml",
    "fail2ban/filter.d/mailguard.conf",
    "fail2ban/filter.d/mailguard-dos.conf",
    "fail2ban/jail.d/mailguard.local",
)


def data_file(name: str) -> str:
    """The text of one of :data:`DATA_FILES`, as installed with the package."""
    if name not in DATA_FILES:
        raise ValueError(f"no such data file: {name!r}")
    return resources.files("mailguard").joinpath("data", *name.split("/")).read_text("utf-8")


def _print_data(name: str) -> int:
    try:
        text = data_file(name)
    except OSError as exc:
        raise UsageError(
            f"mailguard: {name} is not installed with this mailguard ({exc})"
        ) from None
    sys.stdout.write(text)
    return EXIT_OK


def _demo(argv: list[str]) -> int:
    try:
        demo = importlib.import_module("mailguard.demo")
    except ModuleNotFoundError as exc:
        if exc.name == "starlette" or (exc.name or "").startswith("starlette."):
            # the demo's webmail is a Starlette app; mailguard itself needs no Starlette
            _fail("mailguard: the demo needs Starlette: pip install 'mailguard[demo]'")
            return EXIT_USAGE
        if exc.name != "mailguard.demo":
            raise
        _fail("mailguard: the demo is not available in this installation (no mailguard.demo)")
        return EXIT_USAGE
    result = demo.main(argv)
    return int(result or 0)


# ------------------------------------------------------------------- stores


def _store_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (StoreError, OSError)
    try:
        from redis.exceptions import RedisError
    except ImportError:
        return errors
    return (*errors, RedisError)


def _open_store(args: argparse.Namespace) -> tuple[Store, str]:
    """The store the arguments name, and a description of it for messages."""
    if args.redis and args.config:
        raise UsageError("mailguard: give --redis or --config, not both")
    if args.redis:
        url, prefix = args.redis, args.prefix or "mailguard:"
        return _redis(url, prefix), f"{redact(url)} prefix {prefix!r}"
    path = args.config or os.environ.get("MAILGUARD_CONFIG")
    if path is None and not any(k.upper().startswith("MAILGUARD_STORE__") for k in os.environ):
        raise UsageError("mailguard: no store: give --redis URL or --config FILE (see --help)")
    config = load(path)
    settings = config.store
    if settings.type != "redis":
        raise UsageError(
            f"mailguard: {config.source} uses the in-memory store, which lives inside the"
            " app's process; mount mailguard.admin.AdminApp in the app to list and lift its"
            ' blocks, or use type = "redis"'
        )
    if args.prefix:
        options = dict(settings.options, prefix=args.prefix)
        settings = type(settings)(settings.type, options, settings.origins)
    return settings.build(), f"{redact(settings.url or '')} prefix {settings.prefix!r}"


def _redis(url: str, prefix: str) -> Store:
    try:
        from .stores.redis import RedisStore
    except ImportError as exc:
        if exc.name == "redis":
            raise UsageError(
                "mailguard: --redis needs the redis extra: pip install 'mailguard[redis]'"
            ) from None
        raise UsageError(f"mailguard: the Redis store is not available ({exc})") from None
    try:
        store: Store = RedisStore(url, prefix=prefix)
    except ValueError as exc:
        raise UsageError(f"mailguard: --redis {redact(url)}: {exc}") from None
    return store


def _store_command(args: argparse.Namespace, injected: Store | None) -> int:
    if args.command == "unblock" and (args.all == (args.key is not None)):
        raise UsageError("mailguard unblock: give an ADDRESS or DEVICE, or --all (see --help)")
    manual = _block_args(args) if args.command == "block" else None
    if injected is not None:
        store, where = injected, repr(injected)
    else:
        store, where = _open_store(args)
    try:
        if args.command == "blocks":
            return _blocks(store, args.kind, args.json, sys.stdout)
        if args.command == "unblock":
            return _unblock(store, args, sys.stdout)
        if manual is not None:
            return _block(store, manual, sys.stdout)
        return _stats(store, args.json, sys.stdout)
    except _store_errors() as exc:
        _fail(f"mailguard: store {where}: {exc}")
        return EXIT_STORE
    finally:
        if injected is None:
            with contextlib.suppress(Exception):  # a broken connection must not hide the answer
                store.close()


def _live_command(args: argparse.Namespace, injected: Store | None) -> int:
    """``mailguard config get|set|add|remove|unset`` (see mailguard.live)."""
    from .config import env_value
    from .live import LiveConfig

    action, key = args.action, args.key
    if action != "get" and key is None:
        raise UsageError(f"mailguard config {action}: give TABLE.KEY (see --help)")
    if action in ("set", "add", "remove") and args.value is None:
        raise UsageError(f"mailguard config {action}: give TABLE.KEY VALUE (see --help)")
    if action in ("get", "unset") and args.value is not None:
        raise UsageError(f"mailguard config {action}: takes no VALUE (see --help)")
    baseline = None
    if injected is not None:
        store, where = injected, repr(injected)
    else:
        if args.redis and args.config:
            raise UsageError("mailguard: give --redis or --config, not both")
        if not args.redis:
            path = args.config or os.environ.get("MAILGUARD_CONFIG")
            if path is not None:
                baseline = load(path)
                if baseline.store.type == "memory":
                    raise UsageError(
                        f"mailguard: {baseline.source} uses the in-memory store: its live"
                        " configuration lives inside the app's process; use POST /config of"
                        " the admin app (AdminApp(..., live=app.live)), or edit the file and"
                        " send SIGHUP to the app's process"
                    )
        store, where = _open_store(args)
    try:
        live = LiveConfig(store, baseline, watch=False)
        if action == "get":
            return _live_get(live, key, args.json, sys.stdout)
        value = None if args.value is None else env_value(args.value)
        version = live.change(action, key, value)
    except _store_errors() as exc:
        _fail(f"mailguard: store {where}: {exc}")
        return EXIT_STORE
    finally:
        if injected is None:
            with contextlib.suppress(Exception):
                store.close()
    shown = json.dumps(value)
    done = {"set": f"set to {shown}", "add": f"+= {shown}", "remove": f"-= {shown}",
            "unset": "unset (back to the file)"}[action]  # fmt: skip
    print(f"mailguard config: {key} {done}: live configuration v{version}"
          " (every process on the store applies it within 2 s)")  # fmt: skip
    return EXIT_OK


def _live_get(live: Any, key: str | None, as_json: bool, out: TextIO) -> int:
    from .config import ConfigError as _Error
    from .live import check_name, fixed_reason

    overlay = live.store.read_overlay()
    live.overlay = overlay
    problem = None
    try:
        live.config = live.merged(overlay.values, overlay.version)
    except _Error as exc:
        problem = str(exc)
    if key is not None:
        if fixed_reason(key) is None:
            check_name(key)
        rows = live.entries(only=key)
    else:
        rows = live.entries()
    if as_json:
        out.write(json.dumps({"version": overlay.version, "entries": rows}, indent=1) + "\n")
        return EXIT_OK
    if live.baseline is None:
        print("# baseline unknown (no --config FILE): the file's and the environment's values"
              " are not shown; overlay and defaults only", file=out)  # fmt: skip
    print(f"# live configuration v{overlay.version}", file=out)
    if problem is not None:
        print(f"# WARNING: the overlay does not apply over this baseline: {problem}", file=out)
    for row in rows:
        # (who made a change comes from $USER or a caller: never a line of its own)
        detail = f" {_one_line(str(row['detail']))}" if row["detail"] else ""
        fixed = " (not live: restart to change)" if fixed_reason(row["key"]) else ""
        print(f"{row['key']} = {json.dumps(row['value'])}  # {row['source']}{detail}{fixed}",
              file=out)  # fmt: skip
    return EXIT_OK


def _shown(key: str) -> str:
    """A key for a terminal: request-supplied text (device ids) is quoted if unusual."""
    if key and all(ch.isalnum() or ch in ".:/-_@+" for ch in key) and key.isascii():
        return key
    return quote(key)


def _left(seconds: float) -> str:
    whole = int(seconds + 0.999)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _blocks(store: Store, kind: str | None, as_json: bool, out: TextIO) -> int:
    now = store.now()
    found = store.blocks(kind)
    if as_json:
        json.dump([block_record(b, now) for b in found], out, indent=2)
        out.write("\n")
        return EXIT_OK
    if not found:
        print("no live blocks" + (f" of kind {kind}" if kind else ""), file=out)
        return EXIT_OK
    rows = [("KIND", "KEY", "REASON", "SINCE", "LEFT")]
    rows += [
        (b.kind, _shown(b.key), _shown(b.reason), _when(b.since), _left(b.left(now))) for b in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[4]]), file=out)
    return EXIT_OK


def _unblock(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    kind = args.kind
    if args.all:
        lifted = store.unblock_all(kind)
        audit("unblock", key=ALL, kind=kind, lifted=lifted, by=who())
        if not lifted:
            _fail("mailguard: no block to lift" + (f" of kind {kind}" if kind else ""))
            return EXIT_NOT_FOUND
        print(f"lifted {lifted} block(s)" + (f" of kind {kind}" if kind else ""), file=out)
        return EXIT_OK
    keys = keys_to_lift(store.blocks(kind), args.key)
    listed = [b for b in store.blocks(kind) if b.key in keys]
    lifted = sum(store.unblock(k, kind) for k in keys)
    audit("unblock", key=args.key, kind=kind, lifted=lifted, by=who())
    if not lifted:
        what = f"{kind} block" if kind else "block"
        _fail(f"mailguard: no {what} on {_shown(args.key)}")
        return EXIT_NOT_FOUND
    for block in listed:
        print(
            f"lifted {block.kind} block on {_shown(block.key)} ({_shown(block.reason)})", file=out
        )
    if len(listed) < lifted:
        print(f"lifted {lifted} block(s) on {_shown(keys[0])}", file=out)
    return EXIT_OK


def _key_count(store: Store) -> int | None:
    """Keys held by the store: its size for memory, a SCAN count under the prefix for Redis."""
    if isinstance(store, MemoryStore):
        return len(store)
    count_keys = getattr(store, "count_keys", None)
    if not callable(count_keys):
        return None
    return int(count_keys())  # RedisStore: SCAN under its prefix on every master


def _stats(store: Store, as_json: bool, out: TextIO) -> int:
    per_kind = Counter(b.kind for b in store.blocks())
    keys = _key_count(store)
    if as_json:
        report = {"blocks": dict(sorted(per_kind.items())), "total": sum(per_kind.values())}
        report["keys"] = keys
        json.dump(report, out, indent=2)
        out.write("\n")
        return EXIT_OK
    print(f"live blocks: {sum(per_kind.values())}", file=out)
    for kind in sorted(set(KINDS) | set(per_kind)):
        print(f"  {kind:<8}{per_kind.get(kind, 0)}", file=out)
    if keys is not None:
        print(f"keys in store: {keys}", file=out)
    return EXIT_OK


# -------------------------------------------------- check-config: in force


def _toml(value: Any) -> str:
    """A value as it would be written in mailguard.toml."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) else str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        pairs = (
            f"{k if re.fullmatch(r'[A-Za-z0-9_-]+', str(k)) else json.dumps(str(k))} = {_toml(v)}"
            for k, v in value.items()
        )
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, (list, tuple, frozenset, set)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _print_in_force(config: Any, out: TextIO) -> None:
    """Every option of every enabled filter, with where its value comes from."""
    for settings in config.filters:
        if not settings.enabled:
            print(f"[{settings.name}]  # off", file=out)
            continue
        print(f"[{settings.name}]", file=out)
        preset = settings.options.get("preset")
        shape = preset_options(preset) if isinstance(preset, str) else {}
        implied = {
            "namespace": settings.name,
            "on_store_error": settings.policy_type.default_on_store_error,
        }
        for name, option in declared(settings.policy_type).items():
            if name in ("store", "on_event") or option.is_callable:
                continue
            if name in settings.options:
                value, origin = settings.options[name], settings.origins.get(name)
                source = f"{origin[0]}: {origin[1]}" if origin else "set"
            elif option.default is None and name in shape and not callable(shape[name]):
                value, source = shape[name], f"preset {preset}"
            elif option.default is None and name in implied:
                value, source = implied[name], "default"
            else:
                value, source = option.default, "default"
            if value is None:
                print(f"# {name} unset  ({source})", file=out)
            else:
                print(f"{name} = {_toml(value)}  # {source}", file=out)


def _serve_tables(config: Any, path: str) -> bool:
    """Whether the file (or the environment) configures ``mailguard serve``:
    a ``[serve]`` or ``[mailauth]`` table, even an empty one, or a value for one."""
    if config.serve.options or any(
        label.startswith("mailauth.") for _, label in config.mailauth.origins.values()
    ):
        return True
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib

    try:
        with open(path, "rb") as handle:
            tables = tomllib.load(handle)
    except (OSError, ValueError):  # read and checked by load() already
        return False
    return "serve" in tables or "mailauth" in tables


_HIDDEN = frozenset({"secret", "admin_token"})


def _print_serve_in_force(config: Any, out: TextIO) -> None:
    """``[serve]`` and ``[mailauth]`` (over ``[login]`` over ``[common]``) as
    ``mailguard serve`` would run them, each value with where it comes from;
    secrets are never printed."""
    from .mailauth import LOGIN_KEYS, MailAuthSettings, ServeSettings
    from .policies.login import InvalidLoginPolicy

    rule = declared(InvalidLoginPolicy)
    allow = config.serve.options.get("allow", declared(ServeSettings)["allow"].default)
    tables = (
        (config.serve, dict(declared(ServeSettings)), {"admin_allow": allow}),
        (
            config.mailauth,
            {**{k: rule[k] for k in LOGIN_KEYS}, **declared(MailAuthSettings)},
            {"on_store_error": InvalidLoginPolicy.default_on_store_error},
        ),
    )
    for table, options, implied in tables:
        print(f"[{table.name}]", file=out)
        for name, option in options.items():
            if option.is_callable:
                continue
            if name in table.options:
                value, origin = table.options[name], table.origins.get(name)
                source = f"{origin[0]}: {origin[1]}" if origin else "set"
            elif option.default is None and name in implied:
                value, source = implied[name], "default"
            else:
                value, source = option.default, "default"
            if value is None:
                print(f"# {name} unset  ({source})", file=out)
            elif name in _HIDDEN:
                print(f"# {name} set, not shown  ({source})", file=out)
            else:
                print(f"{name} = {_toml(value)}  # {source}", file=out)
    namespace = config.mailauth.options.get("namespace", "login")
    print(f"# counted in namespace {_toml(namespace)}, as [login]'s filter", file=out)


def _try_store(config: Any, *, connect: bool, out: TextIO) -> int:
    """Reach the configured store once (Redis); exit 3 when it does not answer."""
    settings = config.store
    if settings.type != "redis":
        print("store: in-process memory, nothing to connect to", file=out)
        return EXIT_OK
    where = f"{redact(settings.url or '')} prefix {settings.prefix!r}"
    if not connect:
        print(f"store: {where} (not tried: --no-connect)", file=out)
        return EXIT_OK
    try:
        store = settings.build()
    except ImportError as exc:
        raise UsageError(f"mailguard: the Redis store is not available ({exc})") from None
    try:
        store.get_block("dos", "mailguard-check-config")
    except _store_errors() as exc:
        _fail(f"mailguard: store {where}: {exc}")
        return EXIT_STORE
    finally:
        with contextlib.suppress(Exception):
            store.close()
    print(f"store: {where}: answered", file=out)
    return EXIT_OK


# ------------------------------------------------------ block, completion


_BLOCK_KINDS = ("login", "device")


def _add_admin_verbs(commands: Any, store: argparse.ArgumentParser) -> None:
    """The ``block`` and ``completion`` verbs."""
    block = commands.add_parser(
        "block",
        parents=[store],
        help="block an address, an IPv6 /64 or a device by hand",
        description="Block KEY by hand for --for; the filters refuse it as their own block "
        "(a login block refuses login attempts, or every request with block_scope = 'all').",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    block.add_argument(
        "key",
        metavar="ADDRESS|NETWORK|DEVICE",
        help="an address (IPv6: its /64), an IPv6 /64, or DEVICE[/ACCOUNT] with --kind device",
    )
    block.add_argument(
        "--kind",
        metavar="KIND",
        default="login",
        help="the filter whose block it is: login (default) or device (dos has no blocks)",
    )
    block.add_argument(
        "--for", dest="seconds", metavar="DURATION", required=True, help="e.g. 900, 30m, 1h, 2d"
    )
    block.add_argument("--reason", default="manual", help='why (default "manual")')
    block.add_argument(
        "--ipv6-prefix",
        type=int,
        metavar="BITS",
        help="IPv6 clients are counted per network of BITS (default: the config's, or 64)",
    )
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script: source <(mailguard completion bash), or in "
        "~/.zshrc: source <(mailguard completion zsh).",
    )
    completion.add_argument("shell", choices=("bash", "zsh"))


class _Manual:
    """A checked ``mailguard block`` request."""

    def __init__(self, key: str, kind: str, seconds: float, reason: str) -> None:
        self.key, self.kind, self.seconds, self.reason = key, kind, seconds, reason


def _block_args(args: argparse.Namespace) -> _Manual:
    kind = args.kind
    if kind == "dos":
        raise UsageError(
            "mailguard block: DosFilter keeps no blocks (it refuses per second); block the"
            " address with --kind login, and block_scope = 'all' refuses all its requests"
        )
    if kind not in _BLOCK_KINDS:
        raise UsageError(f"mailguard block: --kind: must be login or device, got {kind!r}")
    try:
        seconds = duration("--for", args.seconds)
    except ValueError as exc:
        raise UsageError(f"mailguard block: {exc}") from None
    reason = args.reason.strip()
    if not reason or len(reason) > 200 or not reason.isprintable():
        raise UsageError("mailguard block: --reason: 1 to 200 printable characters")
    prefix = args.ipv6_prefix
    if prefix is None:
        prefix = _configured_prefix(args, kind)
    try:
        key = block_key(args.key, kind, ipv6_prefix=prefix)
    except ValueError as exc:
        raise UsageError(f"mailguard block: {exc}") from None
    return _Manual(key, kind, seconds, reason)


def _configured_prefix(args: argparse.Namespace, kind: str) -> int:
    """The ipv6_prefix of the filter ``kind`` in --config (or $MAILGUARD_CONFIG), else 64."""
    path = getattr(args, "config", None) or (
        None if getattr(args, "redis", None) else os.environ.get("MAILGUARD_CONFIG")
    )
    if not path:
        return 64
    settings = load(path).filter(kind)
    prefix = settings.options.get("ipv6_prefix", 64) if settings is not None else 64
    return prefix if isinstance(prefix, int) else 64


def _block(store: Store, manual: _Manual, out: TextIO) -> int:
    made = store.block(manual.kind, manual.key, manual.seconds, manual.reason)
    audit(
        "block",
        key=manual.key,
        kind=manual.kind,
        seconds=manual.seconds,
        reason=manual.reason,
        by=who(),
    )
    print(
        f"blocked {manual.kind} {_shown(manual.key)} for {_left(manual.seconds)}"
        f" (until {_when(made.until)}): {_shown(manual.reason)}",
        file=out,
    )
    return EXIT_OK


def _verbs() -> dict[str, list[str]]:
    """Each verb's options, read from the parser (the completion scripts' word lists)."""
    parser = _parser()
    verbs: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words = {o for a in sub._actions for o in a.option_strings if o.startswith("--")}
                for a in sub._actions:  # a positional with fixed choices: completion's shell
                    if not a.option_strings and a.choices is not None:
                        words.update(str(c) for c in a.choices)
                verbs[name] = sorted(words - {"--help"})
    return verbs


def _completion(shell: str, out: TextIO) -> int:
    verbs = _verbs()
    cases = "\n".join(
        f'        {name}) words="{" ".join(opts)}" ;;' for name, opts in verbs.items()
    )
    head = f"# mailguard {__version__} {shell} completion: source <(mailguard completion {shell})"
    script = (
        head
        + f"""
_mailguard() {{
    local cur words
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{" ".join(verbs)} --help --version" -- "$cur"))
        return 0
    fi
    case "${{COMP_WORDS[COMP_CWORD-1]}}" in
        --kind) COMPREPLY=($(compgen -W "{" ".join(KINDS)}" -- "$cur")); return 0 ;;
    esac
    case "${{COMP_WORDS[1]}}" in
{cases}
        *) words="" ;;
    esac
    COMPREPLY=($(compgen -W "$words --help" -- "$cur"))
}}
"""
    )
    if shell == "zsh":
        script += "autoload -U +X bashcompinit && bashcompinit\n"
    script += "complete -o default -F _mailguard mailguard\n"
    out.write(script)
    return EXIT_OK


@contextlib.contextmanager
def _audit_to_stderr() -> Iterator[None]:
    """Audit lines go to standard error unless logging already sends them somewhere."""
    logger = logging.getLogger(AUDIT_LOGGER)
    node: logging.Logger | None = logger
    while node is not None:
        if any(not isinstance(h, logging.NullHandler) for h in node.handlers):
            yield
            return
        node = node.parent if node.propagate else None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _one_line(text: str) -> str:
    """``text`` with every control character shown escaped (``\\n``, ``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
