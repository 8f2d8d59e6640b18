"""A pytest plugin that writes down what nbval saw in each notebook cell, for kdlearn.grading.

kdlearn.grading runs nbval on a copy of a learner's notebook in a separate pytest process and
loads this plugin with ``-p kdlearn.nbval_recorder --kdlearn-record=FILE``. For every cell nbval
runs, one JSON line is appended to FILE as soon as the cell is done, so the lines written before a
run is stopped from outside are still there to read:

    {"cell": 3, "outcome": "failed", "message": "Cell execution caused an exception",
     "stdout": "...", "error": {"ename": "ZeroDivisionError", "evalue": "division by zero"},
     "started_with_kernel": true, "timed_out": false, "kernel_alive_after": true}

``cell`` is nbval's number for the cell: its position among the notebook's code cells, from 0.
``outcome`` is "passed", "failed" or "skipped" as nbval's test for the cell ended, whatever
nbval's own xfail marking after a timeout makes of it in pytest's report.
"""

from __future__ import annotations

import json

import pytest

_STATE_BEFORE = pytest.StashKey[dict]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--kdlearn-record", metavar="FILE",
                     help="append one JSON line per notebook cell to FILE (kdlearn's grader reads it)")


def _is_nbval_cell(item: pytest.Item) -> bool:
    return hasattr(item, "cell_num") and hasattr(item, "test_outputs")


def _kernel_alive(item: pytest.Item) -> bool:
    kernel = getattr(item.parent, "kernel", None)
    return kernel is not None and kernel.is_alive()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    if _is_nbval_cell(item):
        # nbval sets its file's ``timed_out`` flag in the cell that runs past the timeout.
        item.stash[_STATE_BEFORE] = {"timed_out": item.parent.timed_out, "kernel_alive": _kernel_alive(item)}
    yield


def _outputs(item: pytest.Item) -> tuple[str, dict | None]:
    """The cell's standard output, and the error it raised (name and value) if any."""
    stdout, error = "", None
    for output in item.test_outputs or []:
        if output.get("output_type") == "stream" and output.get("name") == "stdout":
            stdout += output.get("text", "")
        elif output.get("output_type") == "error":
            error = {"ename": output.get("ename", ""), "evalue": output.get("evalue", "")}
    return stdout, error


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    yield
    path = item.config.getoption("kdlearn_record")
    # A setup that fails (the kernel did not start) is the cell's result; a passing one is not.
    if not path or not _is_nbval_cell(item) or call.when == "teardown" or (call.when == "setup" and not call.excinfo):
        return
    if call.excinfo is None:
        outcome, message = "passed", ""
    else:
        outcome = "skipped" if call.excinfo.errisinstance(pytest.skip.Exception) else "failed"
        message = str(call.excinfo.value).strip().split("\n")[0]
    before = item.stash.get(_STATE_BEFORE, {"timed_out": False, "kernel_alive": False})
    stdout, error = _outputs(item)
    record = {
        "cell": item.cell_num,
        "outcome": outcome,
        "message": message,
        "stdout": stdout,
        "error": error,
        "started_with_kernel": before["kernel_alive"],
        # Only the first cell past the timeout flips nbval's flag; a later one that nbval had to
        # interrupt ends in a KeyboardInterrupt, which nothing else sends to the kernel.
        "timed_out": (item.parent.timed_out and not before["timed_out"])
                     or (before["timed_out"] and error is not None and error["ename"] == "KeyboardInterrupt"),
        "kernel_alive_after": _kernel_alive(item),
    }
    with open(path, "a", encoding="utf-8") as record_file:
        record_file.write(json.dumps(record) + "\n")
