"""The command line: `map` as a dry run, fatal errors as one line and exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from dicomcast.cli import app
from dicomcast.mapping.mapper import default_mapping_dir
from dicomcast.sandbox.samples import demo_studies, instances

runner = CliRunner()


def test_map_prints_the_transaction_and_reports_bad_files(tmp_path: Path) -> None:
    spec = demo_studies()[2]
    for number, ds in enumerate(instances(spec)):
        ds.save_as(tmp_path / f"{number}.dcm", enforce_file_format=True)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    result = runner.invoke(app, ["map", str(tmp_path), "--patient-id-system", "urn:oid:9"])
    assert result.exit_code == 0, result.output
    bundle = json.loads(result.stdout)
    assert bundle["type"] == "transaction"
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == ["Endpoint", "Patient", "ImagingStudy"]
    study = bundle["entry"][2]["resource"]
    assert study["subject"]["reference"] == bundle["entry"][1]["fullUrl"]
    assert study["numberOfInstances"] == 2
    assert "junk.dcm: not a DICOM file" in result.stderr


def test_broken_mapping_folder_is_fatal_with_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "mappings"
    shutil.copytree(default_mapping_dir(), folder)
    patient = folder / "patient.yaml"
    patient.write_text(patient.read_text().replace("as: da_to_date", "as: da_to_dat"))
    result = runner.invoke(app, ["map", str(tmp_path)], env={"DICOMCAST_MAPPING_DIR": str(folder)})
    assert result.exit_code == 2
    assert "patient.yaml:" in result.stderr and "unknown converter 'da_to_dat'" in result.stderr


def test_run_once_progress_counts_settled_of_settled_and_waiting() -> None:
    from collections import Counter

    from dicomcast.cli.worker import _Progress
    from dicomcast.model import DirtyMark, RoundStats
    from dicomcast.state.store import StateStore

    store = StateStore("sqlite://")
    store.migrate()
    store.ensure_source("s", "orthanc")
    store.mark_dirty("s", [DirtyMark(k) for k in "abc"])
    progress = _Progress(store, ["s"])
    try:
        progress(RoundStats(Counter({"synced": 4, "failed": 1})))
        (task,) = progress.bar.tasks
        assert (task.completed, task.total) == (5, 8)
        assert task.fields["detail"] == "1 failed, 4 synced"
    finally:
        progress.done()


def test_log_lines_during_a_live_progress_bar_print_above_it() -> None:
    """`run --once` on a terminal: the bar and the per-study log lines interleaved, the
    handler writing to the stream it was given, past rich's live display."""
    import io
    import logging

    from rich.console import Console
    from rich.progress import Progress

    from dicomcast.ops.logging import setup_logging

    setup_logging("INFO", "text")
    screen = io.StringIO()
    with Progress(console=Console(file=screen, force_terminal=True, width=80)) as bar:
        bar.add_task("studies", total=10)
        logging.getLogger("dicomcast.worker").warning("a study was parked")
    assert "a study was parked" in screen.getvalue()  # through the live display's console
