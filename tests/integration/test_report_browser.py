"""The HTML report renders in headless Chromium with every embedded image decoded and no script error.

Slow, and needs Debian's `chromium` (apt-get install chromium); CI's default run skips the slow set.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from evaluation import report
from evaluation.glossary import metrics_table
from evaluation.stats import Estimate, not_measurable


@pytest.mark.slow
def test_report_opens_in_headless_chromium_with_all_images(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "this test needs Chromium: apt-get install -y chromium"
    rng = np.random.default_rng(0)
    probs, outcome = rng.uniform(size=300), rng.uniform(size=300) < 0.5
    figures = {
        "reliability": report.reliability_plot({"p": (probs, outcome)}, "r"),
        "roc": report.roc_pr_plot({"p": (probs, outcome)}),
    }
    html_path, md_path = report.write_report(
        tmp_path / "report",
        "browser check",
        ["synthetic data"],
        metrics_table(
            {"test/age/mae": Estimate(3.2, 3.0, 3.4, 100), "test/age/gate13/ece": not_measurable("no minors")}
        ),
        {"table": pd.DataFrame({"a": [1.0, np.nan]})},
        figures,
    )
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
            html_path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = re.search(r'data-images-loaded="(\d+)"', done.stdout)
    total = re.search(r'data-images-total="(\d+)"', done.stdout)
    assert loaded and total and int(total.group(1)) == 2 and loaded.group(1) == total.group(1), done.stdout[:500]
    assert "Uncaught" not in done.stderr
    assert "not measurable: no minors" in md_path.read_text()
