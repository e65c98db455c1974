"""The suite-wide guard in ``tests/conftest.py`` sees a read beside the checkout, and only such reads."""

from __future__ import annotations

from tests import conftest


def test_a_path_beside_the_checkout_is_outside() -> None:
    beside = conftest.ROOT.parent / "shared" / "testdata" / "tdx-quote-v4.dat"
    assert conftest._outside_checkout(str(beside)) == str(beside)
    assert conftest._outside_checkout(str(conftest.ROOT.parent / (conftest.ROOT.name + "-other") / "f")) is not None


def test_paths_inside_the_checkout_or_elsewhere_are_not() -> None:
    assert conftest._outside_checkout(str(conftest.ROOT / "tests" / "data" / "tdx-quote-v4.dat")) is None
    assert conftest._outside_checkout(str(conftest.ROOT)) is None
    assert conftest._outside_checkout(3) is None


def test_the_audit_hook_records_an_open_beside_the_checkout() -> None:
    before = len(conftest._outside)
    target = conftest.ROOT.parent / "cocoon-guard-probe-does-not-exist"
    try:
        open(target, "rb").close()  # the open itself is what is audited
    except OSError:
        pass
    assert len(conftest._outside) == before + 1
    assert conftest._outside.pop()[0] == str(target)
