"""The report sections of the issue-9 analyses, from records alone (bench.analysis.report)."""
from __future__ import annotations

import base64

from bench.analysis.report import sections
from bench.report.plots import image_grid
from bench.results import CellRecord, Metric

import numpy as np


def _record(model: str, seed: int, metrics: dict[str, float], curves: dict | None = None) -> CellRecord:
    ms = [Metric(k, v, params={"stderr": 0.01}) for k, v in metrics.items()]
    return CellRecord("s", "r", model, "naive_bayes", seed, "ok", {}, {}, ms, curves=curves or {})


def test_sections_summarise_seeds_and_draw_the_figures():
    png = base64.b64encode(image_grid(np.zeros((4, 1, 8, 8), dtype=np.uint8))).decode()
    curve = {"classifier": ["nb_gaussian", "logistic"] * 2, "n_train": [10, 10, 100, 100],
             "accuracy": [0.6, 0.5, 0.7, 0.8], "seed": [0] * 4}
    recs = [
        _record("nb", 0, {"bayes_accuracy_exact": 0.8, "closer_share_pixel": 0.4, "ood_auroc_fashion_mnist_nll": 0.9,
                          "ood_auroc_noise_ratio": 1.0, "crossing_n_default_logistic": 31.6},
                {"classifier_curve": curve, "closest_pairs": {"pairs": [], "png": png}}),
        _record("nb", 1, {"bayes_accuracy_exact": 0.9, "closer_share_pixel": 0.6, "ood_auroc_fashion_mnist_nll": 0.7,
                          "ood_auroc_noise_ratio": 1.0, "crossing_n_default_logistic": 31.6}),
    ]
    classify, memo, ood = sections(recs)
    assert classify.tables[0].loc[0, "bayes_accuracy_exact"] == "0.850 ± 0.071"
    assert len(classify.figures) == 1 and classify.figures[0][1].startswith(b"\x89PNG")
    assert memo.tables[0].loc[0, "closer_share_pixel"] == "0.500 ± 0.141"
    assert len(memo.figures) == 1
    table = ood.tables[0].set_index("model")
    assert table.loc["nb vs fashion_mnist", "nll"] == "0.800 ± 0.141"
    assert table.loc["nb vs noise", "ratio"] == "1.000 ± 0.000"


def test_one_seed_shows_its_standard_error_and_nothing_means_no_section():
    (memo,) = sections([_record("vae", 0, {"near_copy_share_domain": 0.02})])
    assert memo.tables[0].loc[0, "near_copy_share_domain"] == "0.020 ± 0.010 (se)"
    assert sections([_record("vae", 0, {"fid_domain": 3.0})]) == []


def test_closest_pairs_grid_puts_each_training_image_under_its_sample():
    import io

    from PIL import Image

    from bench.analysis.plots import closest_pairs_grid

    samples = np.zeros((3, 1, 4, 4), dtype=np.uint8)
    train = np.full((5, 1, 4, 4), 200, dtype=np.uint8)
    png = closest_pairs_grid(samples, train, [(0, 4, 0.1), (2, 1, 0.2), (1, 0, 0.3)], per_row=2)
    im = np.asarray(Image.open(io.BytesIO(png)))
    scale = im.shape[1] // (2 * 5 + 1)  # image_grid adds a 1-pixel border, then scales up
    cell = lambda row, col: im[(1 + row) * scale, (1 + col) * scale]  # noqa: E731 - top-left pixel of a tile
    assert cell(0, 0) == 0 and cell(5, 0) == 200  # first pair: sample above, training image below
    assert cell(0, 5) == 0 and cell(5, 5) == 200  # second pair, second column
    assert cell(13, 0) == 0 and cell(18, 0) == 200  # third pair: next block, after the 4-row gap
    assert cell(13, 5) == 255  # an empty slot stays white
