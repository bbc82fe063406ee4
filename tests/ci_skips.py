"""A pytest plugin (loaded by tests/conftest.py): under CI=true a skipped test fails the run unless it was skipped
for want of a GPU. On a fresh machine `make test` installs everything else the tests need (Fashion-MNIST
included), so any other skip means a missing install step that a green CI would hide."""
import os

import pytest

GPU_WORDS = ("cuda", "gpu")  # a skip reason naming one of these is the one allowed on CI, which has no GPU


def _reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI", "").lower() != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    bad = [report for report in skipped if not any(word in _reason(report).lower() for word in GPU_WORDS)]
    if bad:
        lines = "\n".join(f"  {report.nodeid}: {_reason(report)}" for report in bad)
        reporter.write_line(f"CI=true: {len(bad)} test(s) skipped for a reason other than a missing GPU "
                            f"(the setup must install what they need):\n{lines}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
