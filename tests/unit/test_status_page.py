"""The status page: what an operator sees at `GET /` (and `/status.json`), the lag of the
last hour kept in memory, everything escaped, no patient data."""

from __future__ import annotations

from typing import Any

from dicomcast.ops.status_page import SAMPLE_EVERY, WINDOW, StatusPage, plot


def source(**extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "source": "pacs-<east>",
        "cursor": "41",
        "feed_head": "50",
        "lag_seconds": 12.5,
        "studies": {"clean": 600, "dirty": 3, "failed": 1},
        "seen_not_synced": 20,
        "deletions": {"held": 2, "kept": 0},
        "held_by": "worker-1",
        "last_success_at": "2026-12-08T01:00:00Z",
        "feed_error": None,
        "backfill": {"done": 40, "to_sync": 100, "failed": 1, "rate_per_s": 2.5, "eta_s": 24},
        "latest_failures": [
            {"study_uid": "1.2.3.4", "kind": "FhirRejected HTTP 422", "at": "2026-12-08T01:01Z"}
        ],
    }
    values.update(extra)
    return values


def test_the_page_shows_each_source_at_a_glance_escaped() -> None:
    now = [1000.0]
    page = StatusPage(
        lambda: {"sources": [source()]},
        lambda: {"fhir": {"for_s": 8.0, "failure": "FhirUnavailable HTTP 503"}},
        clock=lambda: now[0],
    )
    text = page.html()
    assert "<h2>pacs-&lt;east&gt;</h2>" in text and "<east>" not in text
    for said in (
        "12.5 s (oldest change not yet in FHIR)",
        "600 clean, 3 waiting, 1 failed, 20 seen, 2 deletions held",
        "41 of 50",
        "40 of 100 done, 1 failed, 2.5/s, about 24 s left",
        "FhirRejected HTTP 422: study 1.2.3.4",
        "<b>fhir</b>: paused 8.0 s more (FhirUnavailable HTTP 503)",
        '<meta http-equiv="refresh" content="10">',
        "<svg",
    ):
        assert said in text, said


def test_the_lag_of_the_last_hour_is_sampled_and_older_samples_dropped() -> None:
    now = [0.0]
    lags = iter(float(n) for n in range(1000))
    page = StatusPage(
        lambda: {"sources": [source(lag_seconds=next(lags))]}, dict, clock=lambda: now[0]
    )
    for step in range(400):  # 100 minutes, a sample each SAMPLE_EVERY
        now[0] = step * SAMPLE_EVERY
        data = page.sample()
    history = data["lag_history"]["pacs-<east>"]
    assert len(history) == WINDOW / SAMPLE_EVERY + 1  # an hour's worth, the oldest gone
    assert history[0][0] == now[0] - WINDOW and history[-1] == [now[0], 399.0]
    page.sample()  # asked again at once: no second sample of the same moment
    assert len(page.sample()["lag_history"]["pacs-<east>"]) == len(history)


def test_the_plot_draws_the_hour_to_scale() -> None:
    svg = plot([[0.0, 0.0], [WINDOW / 2, 30.0], [WINDOW, 60.0]], width=600, height=120)
    assert 'points="0.0,116.0 300.0,60.0 600.0,4.0"' in svg and "60 s" in svg
    assert plot([]) == "<p>no samples yet</p>"
