"""img2dataset's error messages to reasons, and the summary table."""

import pytest

from tasks.download.report import classify_error, summarise_slices


@pytest.mark.parametrize("message,reason", [
    ("HTTP Error 404: Not Found", "http_404"),
    ("HTTP Error 503: Service Unavailable", "http_503"),
    ("timed out", "timeout"),
    ("<urlopen error timed out>", "timeout"),
    ("IncompleteRead(1741 bytes read, 1741 more expected)", "truncated"),
    ("Image decoding error", "not_an_image"),
    ("<urlopen error [Errno 111] Connection refused>", "connection_refused"),
    ("Use of image disallowed by X-Robots-Tag directive", "opted_out"),
    ("image too small", "too_small"),
    ("something new", "other"),
    (None, "unknown"),
])
def test_classify_error(message, reason):
    assert classify_error(message) == reason


def test_summary_adds_slices_up():
    results = [
        {"status_counts": {"success": 5, "failed_to_download": 2}, "reason_counts": {"failed_to_download": {"http_404": 2}}},
        {"status_counts": {"success": 3, "failed_to_resize": 1, "failed_to_download": 1},
         "reason_counts": {"failed_to_download": {"timeout": 1}, "failed_to_resize": {"not_an_image": 1}}},
    ]
    summary = summarise_slices(results)
    assert summary["n_rows"] == 12
    assert summary["status_counts"] == {"success": 8, "failed_to_download": 3, "failed_to_resize": 1}
    assert summary["reason_counts"] == {"failed_to_download": {"http_404": 2, "timeout": 1},
                                        "failed_to_resize": {"not_an_image": 1}}
    rows = {(r["status"], r["reason"]): r["count"] for r in summary["table"]}
    assert rows[("failed_to_download", "(all)")] == 3 and rows[("failed_to_download", "http_404")] == 2
