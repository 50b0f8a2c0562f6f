"""Issue 12, item 7: the bad-input table (``bad_input_cases.py``), every case through the ``byzlab`` command
line: exit 2, one line naming the field or file, no traceback, Ray never started, nothing written."""

import pytest

from bad_input_cases import RUN_DIR_CASES, SWEEP_DIR_CASES, Sandbox, cases, make_run_dir, make_sweep_dir, run_case

ISSUE_CASES = {  # the cases issue 12 lists by name; each must stay in the table
    "override: unclosed list", "override: python tag", "YAML tag", "invalid UTF-8", "config is a directory",
    "images: label_flip target 99", "images: backdoor row 99", "run.json garbage", "run.json without status",
    "config.yaml missing", "config.yaml YAML tag", "latest.pt truncated", "latest.pt a pickled module",
    "latest.pt another model's shape", "finished: metrics.parquet garbage", "clients.lr: +inf", "server.lr: +inf",
    "clients.prox_mu: +inf", "declared f above the clients", "run.rounds: beyond 64 bits", "latest.pt NaN parameters",
    "data: unknown key", "sweep.json garbage",
}
TABLE = cases()


def test_the_table_holds_the_cases_of_the_issue_and_many_more():
    assert ISSUE_CASES <= {case.name for case in TABLE}
    assert len(TABLE) >= 182  # the issue tried 182 bad inputs
    assert {"images", "28x28", "tabular", "words", "characters"} <= {c.name.split(":")[0] for c in TABLE}


@pytest.mark.parametrize("case", TABLE, ids=lambda case: f"{case.group}: {case.name}")
def test_bad_input_is_one_clear_line_and_writes_nothing(case, tmp_path):
    outcome = run_case(case, tmp_path)
    assert outcome.traceback is None, outcome.traceback
    assert outcome.clear(case.expect), (outcome.exit_code, outcome.lines, outcome.stdout, case.expect)
    assert outcome.wrote == [], f"wrote {outcome.wrote}"


@pytest.mark.parametrize("status, state", [("interrupted", "resumed"), ("finished", "finished")])
def test_the_undamaged_run_directory_of_the_table_resumes(status, state, tmp_path):
    """The damaged cases damage one file of a directory that is fine otherwise."""
    from byzlab.orchestrator.run.experiment import prepare_resume

    sandbox = Sandbox(tmp_path)
    make_run_dir(sandbox, status)
    prepared = prepare_resume(sandbox.run)
    assert prepared.state == state and prepared.cfg.run.output_dir == str(sandbox.out)
    assert len(RUN_DIR_CASES) >= 30


def test_the_undamaged_sweep_directory_of_the_table_reads(tmp_path):
    """The damaged sweep cases damage one file of a sweep directory that ``byzlab resume`` reads otherwise."""
    from byzlab.sweeps.runner import read_state
    from byzlab.sweeps.spec import load_saved_sweep

    sandbox = Sandbox(tmp_path)
    make_sweep_dir(sandbox)
    assert read_state(sandbox.sweep)["status"] == "interrupted"
    assert len(load_saved_sweep(sandbox.sweep).trials) == 2
    assert len(SWEEP_DIR_CASES) >= 10
