"""The office's pure helpers (no Ray started): CPU per phase, and the files it hands the driver."""

from __future__ import annotations

import time

from runtime.driver.job import _write_files
from runtime.driver.office import PhaseCPU, _files


def _burn(cpu_s: float) -> None:
    end = time.process_time() + cpu_s
    while time.process_time() < end:
        pass


def test_a_phase_that_comes_back_adds_to_its_total():
    cpu = PhaseCPU()
    _burn(0.05)
    cpu.mark("round metrics")
    _burn(0.05)
    cpu.mark("checklist")
    _burn(0.05)
    cpu.mark("round metrics")

    assert cpu.marks["round metrics"] >= 0.1 and 0.05 <= cpu.marks["checklist"] < cpu.marks["round metrics"]
    assert list(cpu.marks) == ["round metrics", "checklist"]


def test_a_phase_records_its_wall_clock_beside_its_cpu_and_skip_drops_both():
    cpu = PhaseCPU()
    time.sleep(0.2)  # waiting on another process: time passes, this one's CPU does not
    cpu.mark("validation (in the office)")
    _burn(0.05)
    time.sleep(0.3)
    cpu.skip()  # drops the burn and the sleep: a wide margin, so a pause of the host between the two calls below is no failure
    cpu.mark("after a skip")

    assert cpu.wall["validation (in the office)"] >= 0.2 > 0.1 > cpu.marks["validation (in the office)"]
    assert cpu.wall["after a skip"] < 0.2 and cpu.marks["after a skip"] < 0.04


def test_the_offices_files_land_in_the_artifacts_folder_as_written(tmp_path):
    made = tmp_path / "office"
    (made / "postmortem").mkdir(parents=True)
    (made / "postmortem" / "postmortem.md").write_text("# Post-mortem")
    (made / "summary.json").write_text("{}")
    (made / "timeline.png").write_bytes(b"\x89PNG")
    out = tmp_path / "artifacts"
    (out / "postmortem").mkdir(parents=True)
    (out / "postmortem" / "postmortem.md").write_text("an older run's report")

    _write_files(str(out), _files(made))

    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "postmortem/postmortem.md", "summary.json", "timeline.png"]  # no temporary file left behind
    assert (out / "postmortem" / "postmortem.md").read_text() == "# Post-mortem"
    assert (out / "timeline.png").read_bytes() == b"\x89PNG"


def test_an_office_process_builds_its_actor_without_heavy_imports():
    """A new office process imports this module at its default priority, before ``__init__`` lowers it:
    nothing heavier than Ray may load there (pyarrow, MLflow, scikit-learn come after the isolation)."""
    import subprocess
    import sys

    code = ("import sys, ray; before = set(sys.modules); import runtime.driver.office; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert not {"pyarrow", "mlflow", "sklearn", "pandas", "matplotlib"} & set(eval(out)), out
