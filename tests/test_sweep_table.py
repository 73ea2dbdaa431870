"""analysis.sweep_table: the audio-vs-symbolic table's statistics on known answers; its Markdown page."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from analysis import sweep_table as st
from analysis.report import sweep_page


def record(medium, scores, *, label="style", task="classification", metric="accuracy", seeds=None,
           baseline=0.25, shuffled=(0.24, 0.26, 0.25), embedder=None, config=None):
    return {"medium": medium, "embedder": embedder or ("aud" if medium == st.AUDIO else "sym"), "label": label,
            "task": task, "metric": metric, "seeds": list(seeds if seeds is not None else range(len(scores))),
            "test_scores": list(scores), "baseline": baseline, "shuffled_scores": list(shuffled),
            "best_config": config or {"model": "mlp", "hidden_dim": 128, "dropout": 0.1, "learning_rate": 1e-3,
                                      "weight_decay": 1e-5, "batch_size": 32},
            "best_val": 0.8}


def test_seed_interval_matches_the_t_formula():
    out = st.seed_interval([0.6, 0.7, 0.8])
    half = sps.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)   # sd of (0.6, 0.7, 0.8) is 0.1
    assert out["mean"] == pytest.approx(0.7) and out["sd"] == pytest.approx(0.1)
    assert (out["ci_lo"], out["ci_hi"]) == pytest.approx((0.7 - half, 0.7 + half))
    one = st.seed_interval([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["ci_lo"]) and one["n"] == 1


def test_seed_interval_is_shift_equivariant_and_rejects_bad_input():
    a, b = st.seed_interval([0.1, 0.3, 0.2, 0.5]), st.seed_interval([1.1, 1.3, 1.2, 1.5])
    assert b["ci_lo"] - a["ci_lo"] == pytest.approx(1.0) and b["ci_hi"] - a["ci_hi"] == pytest.approx(1.0)
    for bad in ([], [0.1, math.nan]):
        with pytest.raises(ValueError):
            st.seed_interval(bad)


def test_wilson_interval_known_answer():
    assert st.wilson_interval(0.5, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)   # 50 of 100
    lo, hi = st.wilson_interval(1.0, 45)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.9213, abs=1e-4)          # never above 1
    for bad in [(1.2, 10), (0.5, 0)]:
        with pytest.raises(ValueError):
            st.wilson_interval(*bad)


def test_control_flags():
    assert st.control_flags([0.8, 0.82, 0.81], 0.3, [0.3, 0.31, 0.29], "classification") == []
    # at chance: flagged against both controls
    assert st.control_flags([0.3, 0.25, 0.28], 0.3, [0.3, 0.31, 0.29], "classification") == [
        "not above shuffled-label control", "not above majority baseline"]
    # regression has no majority baseline flag; R^2 = 0.02 +- noise is not above a shuffled 0.0
    assert st.control_flags([0.02, -0.05, 0.08], 0.0, [0.0, -0.01, 0.01], "regression") == [
        "not above shuffled-label control"]
    # one seed: compare means; the control's spread over seeds does not widen the bar, its mean is the bar
    assert st.control_flags([0.5], 0.2, 0.3, "classification") == []
    assert st.control_flags([1.0, 1.0], 0.33, [0.05, 0.7], "classification") == []
    # a steady edge of 0.04 over a 0.33 baseline on 45 test items is within test-sampling error
    steady = [0.37, 0.368, 0.372]
    assert st.control_flags(steady, 0.333, [0.32, 0.33], "classification") == []
    assert st.control_flags(steady, 0.333, [0.32, 0.33], "classification", n_test=45) == [
        "within test-sampling error of the baseline"]
    assert st.control_flags(steady, 0.333, [0.32, 0.33], "classification", n_test=100_000) == []
    with pytest.raises(ValueError, match="task"):
        st.control_flags([0.5], 0.2, 0.3, "ranking")


def test_compare_media_pairs_by_seed_not_by_position():
    audio = record(st.AUDIO, [0.70, 0.80, 0.90], seeds=[0, 1, 2])
    # the same per-seed values listed in another order: the difference per seed is exactly 0.1
    symbolic = record(st.SYMBOLIC, [0.80, 0.60, 0.70], seeds=[2, 0, 1])
    out = st.compare_media(audio, symbolic)
    assert out["difference"] == pytest.approx(0.1) and out["n_seeds"] == 3
    assert out["ci_lo"] == pytest.approx(0.1) and out["ci_hi"] == pytest.approx(0.1)  # zero spread
    swapped = st.compare_media(symbolic, audio)
    assert swapped["difference"] == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="share none"):
        st.compare_media(audio, record(st.SYMBOLIC, [0.5], seeds=[9]))


def test_build_table_known_answer_and_verdicts():
    rng = np.random.default_rng(0)
    a = 0.8 + rng.normal(0, 0.01, 5)
    s = 0.6 + rng.normal(0, 0.01, 5)
    rows = [record(st.AUDIO, a), record(st.SYMBOLIC, s),
            record(st.AUDIO, [0.1, 0.3, 0.2, 0.25, 0.15], label="bpm", task="regression", metric="r2",
                   baseline=-0.01, shuffled=[-0.05, 0.0, -0.02, 0.01, -0.03]),
            record(st.SYMBOLIC, [0.0, -0.02, 0.03, 0.01, -0.01], label="bpm", task="regression", metric="r2",
                   baseline=-0.01, shuffled=[-0.05, 0.0, -0.02, 0.01, -0.03])]
    table = st.build_table(rows)
    assert list(table.columns) == list(st.COLUMNS) and len(table) == 2
    style = table.set_index("label").loc["style"]
    assert style["difference"] == pytest.approx(a.mean() - s.mean())
    # without per-item predictions the seed-paired numbers are shown, but they name no winner (issue 16,
    # item 3: they leave test-sampling error out); the old verdict read "audio higher across seeds"
    assert style["difference_ci_lo"] > 0 and style["difference_method"] == "seeds only"
    assert style["verdict"].startswith("no item-level test") and math.isnan(style["p_holm"])
    assert style["audio_flags"] == "" and style["n_seeds"] == 5
    assert style["p_value"] == pytest.approx(2 / 32)  # exact sign-flip with 5 seeds, all differences positive
    bpm = table.set_index("label").loc["bpm"]
    assert bpm["task"] == "regression" and bpm["symbolic_flags"] == "not above shuffled-label control"
    assert bpm["verdict"].startswith("symbolic: not above shuffled-label control")
    # swapping the media negates the difference and mirrors its interval
    swapped = [dict(r, medium=st.SYMBOLIC if r["medium"] == st.AUDIO else st.AUDIO) for r in rows[:2]]
    mirror = st.build_table(swapped).iloc[0]
    assert mirror["difference"] == pytest.approx(-style["difference"])
    assert mirror["difference_ci_lo"] == pytest.approx(-style["difference_ci_hi"])
    assert mirror["verdict"] == style["verdict"]


def test_build_table_one_medium_one_seed_and_bad_records():
    only = st.build_table([record(st.AUDIO, [0.9, 0.92])]).iloc[0]
    assert only["symbolic_embedder"] == "" and math.isnan(only["difference"])
    assert "only one medium" in only["verdict"]
    single = st.build_table([record(st.AUDIO, [0.9], shuffled=[0.2]), record(st.SYMBOLIC, [0.7], shuffled=[0.2])])
    assert single.iloc[0]["difference"] == pytest.approx(0.2) and "one seed" in single.iloc[0]["verdict"]
    assert single.iloc[0]["difference_method"] == "one seed"
    with pytest.raises(ValueError, match="missing keys"):
        st.build_table([{"medium": st.AUDIO}])
    with pytest.raises(ValueError, match="several tasks"):
        st.build_table([record(st.AUDIO, [0.5, 0.6]),
                        record(st.SYMBOLIC, [0.5, 0.6], task="regression", metric="r2")])
    with pytest.raises(ValueError, match="2 seeds but 3"):
        st.build_table([record(st.AUDIO, [0.5, 0.6, 0.7], seeds=[0, 1])])


def test_markdown_and_key_metrics():
    table = st.build_table([record(st.AUDIO, [0.8, 0.82, 0.81]), record(st.SYMBOLIC, [0.3, 0.2, 0.25])])
    text = sweep_page.table_markdown(table)
    assert "| style (aud / sym) | test accuracy |" in text and "**0.810**" in text
    assert "⚠ not above shuffled-label control; not above majority baseline" in text
    assert "sampling [" not in text                     # no n_test in these records
    assert "mlp h=128 drop=0.10 lr=1.00e-03 wd=1.00e-05 bs=32" in text and sweep_page.NOTE in text
    assert st.config_text({"model": "linear", "hidden_dim": 64, "dropout": 0.2}) == "linear drop=0.20"
    with_n = st.build_table([dict(record(st.AUDIO, [0.8, 0.82, 0.81]), n_test=45)]).iloc[0]
    assert (with_n["audio_sampling_lo"], with_n["audio_sampling_hi"]) == pytest.approx(st.wilson_interval(0.81, 45))
    assert f"sampling [{with_n['audio_sampling_lo']:.3f}, " in sweep_page.table_markdown(st.build_table(
        [dict(record(st.AUDIO, [0.8, 0.82, 0.81]), n_test=45)]))
    metrics = st.key_metrics(table)
    assert metrics["style.aud_vs_sym.audio_mean"] == pytest.approx(0.81)
    assert metrics["style.aud_vs_sym.difference"] == pytest.approx(0.81 - 0.25)


# --------------------------------------------------------------------------------------------- item level
def item_record(medium, correct, *, label="style", ids=None, seeds=(0, 1, 2), classes=("a", "b", "c"), **kw):
    """A record with per-item predictions: correct[s][i] says whether seed s got item i right."""
    correct = np.asarray(correct, dtype=bool)
    n = correct.shape[1]
    ids = [f"r{i}" for i in range(n)] if ids is None else list(ids)
    targets = [classes[int(i[1:]) % len(classes)] for i in ids]
    wrong = {c: classes[(k + 1) % len(classes)] for k, c in enumerate(classes)}
    preds = [[t if ok else wrong[t] for t, ok in zip(targets, row)] for row in correct]
    rec = record(medium, correct.mean(axis=1), label=label, seeds=list(seeds), **kw)
    rec.update({"test_ids_sha256": st.test_ids_sha256(ids), "test_ids": ids, "test_targets": targets,
                "test_predictions": preds, "n_test": n})
    return rec


def test_test_ids_hash_is_order_free_and_documented():
    import hashlib

    assert st.test_ids_sha256(["b", "a", 3]) == hashlib.sha256(b"3\na\nb").hexdigest()
    assert st.test_ids_sha256(["a", "b"]) == st.test_ids_sha256(["b", "a"]) != st.test_ids_sha256(["a", "c"])


def test_records_on_different_test_items_are_refused():
    rng = np.random.default_rng(0)
    a = item_record(st.AUDIO, rng.random((3, 40)) < 0.8)
    s = item_record(st.SYMBOLIC, rng.random((3, 40)) < 0.5, ids=[f"r{i}" for i in range(1, 41)])
    with pytest.raises(st.TestSetMismatch, match="same test items"):
        st.build_table([a, s])
    legacy = record(st.SYMBOLIC, [0.5, 0.5, 0.5])      # no hash at all: cannot be verified against a's
    with pytest.raises(st.TestSetMismatch):
        st.compare_media(a, legacy)
    assert st.compare_media(record(st.AUDIO, [0.6, 0.7]), record(st.SYMBOLIC, [0.5, 0.6]))["test_set"] == "not verified"


def test_item_level_verdict_and_holm_across_labels():
    rng = np.random.default_rng(1)
    n = 120
    item_easy = rng.random(n) < 0.5
    clear_a = (rng.random((3, n)) < np.where(item_easy, 0.95, 0.75))
    clear_s = (rng.random((3, n)) < np.where(item_easy, 0.6, 0.3))
    same_a, same_s = rng.random((3, n)) < 0.6, rng.random((3, n)) < 0.6
    rows = [item_record(st.AUDIO, clear_a), item_record(st.SYMBOLIC, clear_s),
            item_record(st.AUDIO, same_a, label="era"), item_record(st.SYMBOLIC, same_s, label="era")]
    table = st.build_table(rows).set_index("label")
    style, era = table.loc["style"], table.loc["era"]
    assert style["difference_method"] == "items x seeds" and style["n_items"] == n and style["n_seeds"] == 3
    assert style["difference"] == pytest.approx(clear_a.mean() - clear_s.mean())
    assert style["difference_ci_lo"] > 0 and style["verdict"].startswith("audio higher (item-level paired test")
    assert era["verdict"].startswith("no clear difference")
    # Holm over the two rows, by hand: m = 2
    p = sorted([(style["p_value"], "style"), (era["p_value"], "era")])
    expected = {p[0][1]: min(1, 2 * p[0][0]), p[1][1]: max(min(1, 2 * p[0][0]), p[1][0])}
    assert style["p_holm"] == pytest.approx(expected["style"]) and era["p_holm"] == pytest.approx(expected["era"])
    assert 0 <= style["mcnemar_p"] < 0.01 and style["test_set"] == "verified"
    # each medium's interval stays inside [0, 1] and covers its mean
    for side in ("audio", "symbolic"):
        assert 0 <= style[f"{side}_ci_lo"] <= style[f"{side}_mean"] <= style[f"{side}_ci_hi"] <= 1
    mirrored = st.build_table([dict(rows[1], medium=st.AUDIO), dict(rows[0], medium=st.SYMBOLIC)]).iloc[0]
    assert mirrored["difference"] == pytest.approx(-style["difference"])
    assert mirrored["verdict"].startswith("symbolic higher (item-level paired test")
    page = sweep_page.table_markdown(table.reset_index())
    assert "Holm p = " in page and "x 120 items" in page


def test_verdict_reads_the_holm_adjusted_p():
    row = {"audio_flags": "", "symbolic_flags": "", "difference": 0.05, "difference_method": "items x seeds",
           "p_value": 0.03, "p_holm": 0.09}
    assert st.verdict(row).startswith("no clear difference")
    assert st.verdict(dict(row, p_holm=0.04)).startswith("audio higher")
    assert st.verdict(dict(row, difference=-0.05, p_holm=0.04)).startswith("symbolic higher")


def test_items_are_aligned_by_id_and_seeds_by_value():
    rng = np.random.default_rng(2)
    a_correct, s_correct = rng.random((3, 30)) < 0.7, rng.random((3, 30)) < 0.5
    a = item_record(st.AUDIO, a_correct)
    s = item_record(st.SYMBOLIC, s_correct)
    reference = st.compare_media(a, s)
    order, seed_order = rng.permutation(30), [2, 0, 1]
    shuffled = item_record(st.SYMBOLIC, s_correct[seed_order][:, order], ids=[f"r{i}" for i in order],
                           seeds=[2, 0, 1])
    again = st.compare_media(a, shuffled)
    for key in ("difference", "ci_lo", "ci_hi", "p_value", "mcnemar_p"):
        assert again[key] == pytest.approx(reference[key]), key
    with pytest.raises(ValueError, match="test_predictions must be"):
        st.build_table([dict(a, test_predictions=a["test_predictions"][:2])])


def test_regression_item_level_and_no_interval_past_the_range():
    rng = np.random.default_rng(3)
    ids = [f"r{i}" for i in range(50)]
    y = rng.normal(size=50)

    def rec(medium, noise):
        preds = [list(y + noise * rng.normal(size=50)) for _ in range(2)]
        r2 = [1 - np.sum((np.array(p) - y) ** 2) / np.sum((y - y.mean()) ** 2) for p in preds]
        out = record(medium, r2, label="bpm", task="regression", metric="r2", seeds=[0, 1], baseline=0.0,
                     shuffled=[0.0, 0.01])
        out.update({"test_ids_sha256": st.test_ids_sha256(ids), "test_ids": ids, "test_targets": list(y),
                    "test_predictions": preds})
        return out

    row = st.build_table([rec(st.AUDIO, 0.2), rec(st.SYMBOLIC, 0.9)]).iloc[0]
    assert row["difference_method"] == "items x seeds" and row["difference_ci_lo"] > 0 and row["p_value"] < 0.01
    assert row["audio_ci_hi"] <= 1.0 and row["audio_ci_method"] == "crossed items x seeds t"
    # accuracies near 1 over few seeds: the t interval ran past 1 ([0.36, 1.02] in issue 16); now clipped
    near_one = st.build_table([record(st.AUDIO, [0.99, 1.0, 0.9])]).iloc[0]
    assert near_one["audio_seed_hi"] == 1.0 and near_one["audio_ci_hi"] <= 1.0
    assert st.seed_interval([0.99, 1.0, 0.9])["ci_hi"] > 1.0     # the unclipped interval does run past 1
