"""What the package installs and needs: data files equal to examples/, the CLI verbs printing
them, and runtime code importing no web framework (they are extras, not dependencies)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mailguard import cli
from mailguard.cli import DATA_FILES, data_file, main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {
    "mailguard.toml": ROOT / "examples" / "mailguard.toml",
    "fail2ban/filter.d/mailguard.conf": ROOT / "examples/fail2ban/filter.d/mailguard.conf",
    "fail2ban/filter.d/mailguard-dos.conf": ROOT / "examples/fail2ban/filter.d/mailguard-dos.conf",
    "fail2ban/jail.d/mailguard.local": ROOT / "examples/fail2ban/jail.d/mailguard.local",
}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_every_data_file_has_its_example() -> None:
    assert sorted(EXAMPLES) == sorted(DATA_FILES)


@pytest.mark.parametrize("name", DATA_FILES)
def test_installed_copy_equals_the_example(name: str) -> None:
    copy = ROOT / "mailguard" / "data" / name
    assert copy.read_bytes() == EXAMPLES[name].read_bytes(), (
        f"mailguard/data/{name} drifted from {EXAMPLES[name].relative_to(ROOT)}: "
        f"cp {EXAMPLES[name].relative_to(ROOT)} mailguard/data/{name}"
    )
    assert data_file(name) == EXAMPLES[name].read_text("utf-8")


def test_unknown_data_file_is_refused() -> None:
    with pytest.raises(ValueError):
        data_file("../cli.py")


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["example-config"], "mailguard.toml"),
        (["fail2ban-filter"], "fail2ban/filter.d/mailguard.conf"),
        (["fail2ban-filter", "--dos"], "fail2ban/filter.d/mailguard-dos.conf"),
        (["fail2ban-filter", "--jail"], "fail2ban/jail.d/mailguard.local"),
    ],
)
def test_cli_prints_the_file(
    argv: list[str], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    assert out == EXAMPLES[name].read_text("utf-8")


def test_fail2ban_filter_takes_one_of_dos_and_jail(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["fail2ban-filter", "--dos", "--jail"], capsys)
    assert code == cli.EXIT_USAGE and out == ""
    assert "not allowed with" in err and err.count("\n") == 1


def test_printed_config_checks_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["example-config"], capsys)
    path = tmp_path / "mailguard.toml"
    path.write_text(out, encoding="utf-8")
    code, out, _ = run(["check-config", "--no-env", str(path)], capsys)
    assert code == 0 and ": OK: " in out


def test_demo_without_starlette_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(sys.modules, "mailguard.demo", raising=False)
    for name in [n for n in sys.modules if n.split(".")[0] == "starlette"] + ["starlette"]:
        monkeypatch.setitem(sys.modules, name, None)  # importing any of it raises ImportError
    code, out, err = run(["demo", "--plain"], capsys)
    assert code == cli.EXIT_USAGE and out == ""
    assert "pip install 'mailguard[demo]'" in err


# Web frameworks, typing_extensions and the extras are not dependencies: no runtime module
# may import them.  The modules of an extra (the demo: starlette, rich; the Redis store:
# redis; metrics: prometheus-client) are left out.
BLOCKED = (
    "starlette",
    "werkzeug",
    "flask",
    "fastapi",
    "django",
    "typing_extensions",
    "uvicorn",
    "redis",
    "prometheus_client",
    "rich",
)
OPTIONAL = {"mailguard.demo", "mailguard.stores.redis", "mailguard.metrics", "mailguard.__main__"}


def test_runtime_modules_import_no_framework() -> None:
    modules = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "mailguard").rglob("*.py")
    )
    modules = [m for m in modules if m not in OPTIONAL]
    script = textwrap.dedent(
        f"""
        import importlib, sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None  # importing it raises ImportError
        for module in {modules!r}:
            importlib.import_module(module)
        from mailguard import MemoryStore
        from mailguard.asgi import DosFilter
        from mailguard.wsgi import InvalidLoginFilter

        async def app(scope, receive, send):
            pass

        DosFilter(app, max_requests_per_sec=5, store=MemoryStore())
        InvalidLoginFilter(lambda environ, start: [], store=MemoryStore())
        leaked = sorted(n for n in {BLOCKED!r} if sys.modules.get(n) is not None)
        assert not leaked, leaked
        print("ok", len({modules!r}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")


def test_dependencies_are_what_runtime_code_imports() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    names = sorted(dep.split(">")[0].split(";")[0].strip() for dep in project["dependencies"])
    assert names == ["cachetools", "netaddr", "tomli"]
    extras = project["optional-dependencies"]
    assert any(dep.startswith("starlette") for dep in extras["demo"])
    assert any(dep.startswith("uvicorn") for dep in extras["serve"])
    for name in ("starlette", "werkzeug", "flask", "fastapi", "django"):
        assert any(dep.startswith(f"{name}>=") for dep in extras["test"]), name
