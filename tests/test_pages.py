"""Pages a person opens: the pretraining embedding maps load in headless Chromium without errors."""

import numpy as np
import pandas as pd
import pytest

from analysis.report.embedding_map_page import animation_page, scatter_page
from tests.browser import load_page

pytestmark = pytest.mark.browser


@pytest.fixture
def maps(tmp_path):
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"id": [f"w{i}" for i in range(30)], "composer": ["bach", "palestrina", "folk"] * 10,
                         "bpm": rng.uniform(60, 120, 30).round(1)})
    frames = [(e, rng.standard_normal((30, 2)).astype(np.float32)) for e in range(3)]
    scatter, anim = tmp_path / "scatter.html", tmp_path / "anim.html"
    scatter.write_text(scatter_page(frames[-1][1], meta, "composer", "epoch 2"))
    anim.write_text(animation_page(frames, meta, "composer", "across epochs"))
    return scatter, anim


def test_embedding_pages_render_without_console_errors(maps):
    for page in maps:
        dom, errors = load_page(page)
        assert errors == [], f"{page.name}: {errors}"
        assert 'class="plot-container plotly"' in dom, f"{page.name}: plotly did not render"
        assert "bach" in dom and "palestrina" in dom  # legend entries drawn from the data


def test_a_broken_page_is_caught(tmp_path):
    """The check itself can fail: a page that throws must report an error."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    _, errors = load_page(page)
    assert errors and "undefinedFunction" in errors[0]
