"""What every stage shares (nanomorph.stages._common): one-line errors, message logging, and MLflow run status
FAILED for a failed stage and KILLED for an interrupted one."""

import logging
import os
import signal

import mlflow

from nanomorph.errors import NanomorphError
from nanomorph.stages._common import stage_main, tracked


def _statuses(project) -> dict[str, str]:
    _, uri = project
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name("nanomorph")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    return {run.info.run_name: run.info.status for run in runs}


def test_a_failing_stage_is_one_line_and_its_run_ends_failed(project, capsys):
    def body(cfg, _args):
        with tracked(cfg, "demo", ("segment",)):
            raise NanomorphError("data/x.png: not a recognised image format")

    assert stage_main("demo", body, argv=[]) == 2
    ours = [line for line in capsys.readouterr().err.splitlines() if "Traceback" in line or "nanomorph" in line]
    assert ours == ["nanomorph demo: error: data/x.png: not a recognised image format"]  # (MLflow logs its own)
    statuses = _statuses(project)
    assert statuses["demo"] == "FAILED"
    assert "RUNNING" not in statuses.values()  # the pipeline's parent run is closed too


def test_a_stage_that_crashes_ends_its_run_failed_and_keeps_the_traceback(project):
    """A bug (not a NanomorphError) is no user mistake: it propagates with its traceback, and the MLflow run
    still ends FAILED rather than staying RUNNING."""
    def body(cfg, _args):
        with tracked(cfg, "demo", ("segment",)):
            raise ZeroDivisionError("a bug")

    try:
        stage_main("demo", body, argv=[])
    except ZeroDivisionError:
        pass
    else:
        raise AssertionError("a bug must not be turned into a one-line user error")
    statuses = _statuses(project)
    assert statuses["demo"] == "FAILED" and "RUNNING" not in statuses.values()


def test_a_stage_stopped_by_sigterm_ends_its_run_killed_and_says_so(project, capsys):
    def body(cfg, _args):
        with tracked(cfg, "demo", ("segment",)):
            os.kill(os.getpid(), signal.SIGTERM)  # what dvc or a scheduler sends to stop a stage
            raise AssertionError("the signal should have stopped the stage")

    previous = signal.getsignal(signal.SIGTERM)
    assert stage_main("demo", body, argv=[]) == 130
    assert signal.getsignal(signal.SIGTERM) == previous  # the stage's handler is undone
    err = [line for line in capsys.readouterr().err.splitlines() if "Traceback" in line or "nanomorph" in line]
    assert len(err) == 1 and err[0].startswith("nanomorph demo: interrupted (stopped by signal SIGTERM)")
    statuses = _statuses(project)
    assert statuses["demo"] == "KILLED"
    assert set(statuses.values()) == {"KILLED"}  # the pipeline's parent run too: nothing left RUNNING


def test_nanomorph_messages_reach_stderr_and_other_libraries_stay_quiet(project, capsys):
    def body(cfg, _args):
        logging.getLogger("nanomorph.ssl.train").info("resuming from step 3 of 10 (last.pt)")
        logging.getLogger("some.library").info("chatter")

    assert stage_main("demo", body, argv=[]) == 0
    err = capsys.readouterr().err
    assert "resuming from step 3 of 10 (last.pt)" in err and "chatter" not in err
