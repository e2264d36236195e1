"""The error tree: distinct exit codes, documented, and the CLI prints one line for each."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cvmstore import errors
from cvmstore.errors import CvmstoreError, all_error_classes

DOCS = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def test_every_class_has_its_own_exit_code() -> None:
    codes = [cls.exit_code for cls in all_error_classes()]
    assert len(codes) == len(set(codes))
    assert all(code not in (0, 2) and 0 < code < 126 for code in codes)


def test_every_public_error_is_in_the_tree() -> None:
    exported = {getattr(errors, name) for name in errors.__all__ if name.endswith("Error")}
    assert exported == set(all_error_classes())


def test_docs_list_every_exit_code() -> None:
    table = dict(re.findall(r"^\| `(\w+)` \| (\d+) \|", DOCS.read_text(), re.MULTILINE))
    assert {name: int(code) for name, code in table.items()} == {
        cls.__name__: cls.exit_code for cls in all_error_classes()
    }


def test_structured_fields_are_in_the_message() -> None:
    err = errors.IntegrityError("tag mismatch", location="block 17")
    assert err.location == "block 17"
    assert str(err) == "tag mismatch [block 17]"
    assert str(errors.FormatError("bad", offset=16)) == "bad (at offset 0x10)"
    assert str(errors.PolicyError("too old", check="tcb")) == "tcb: too old"
    assert isinstance(errors.RollbackError("x"), errors.IntegrityError)


@pytest.mark.parametrize("cls", all_error_classes())
def test_cli_prints_one_line_and_the_exit_code(
    cls: type[CvmstoreError], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cvmstore.cli import main as cli_main

    def boom(args: object) -> int:
        raise cls("something specific")

    parser = cli_main.build_parser()
    monkeypatch.setattr(cli_main, "build_parser", lambda: parser)
    parser.set_defaults(handler=boom)
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for sub in action.choices.values():  # type: ignore[union-attr]
            sub.set_defaults(handler=boom)
    assert cli_main.main(["demo"]) == cls.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "something specific" in err
    assert "Traceback" not in err
