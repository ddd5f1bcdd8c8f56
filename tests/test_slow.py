"""The few tests that need the real encoder or the real data: `pytest -m slow` (not in the default run)."""

from pathlib import Path

import pytest

from medclf import TextClassifier, TrainConfig, train

pytestmark = pytest.mark.slow

ABSTRACTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "medical-abstracts" / "medical_tc_test.csv"


def test_demo_with_the_packaged_encoder(tmp_path):
    result = train(TrainConfig(output=str(tmp_path / "demo")), progress=False)
    assert result.test_metrics["macro_f1"] >= 0.85
    clf = TextClassifier.load(result.run_dir)
    assert clf.predict("Crushing chest pain radiating to the left arm; troponin elevated.") == "cardiology"


@pytest.mark.skipif(not ABSTRACTS.exists(), reason=f"real data not present at {ABSTRACTS}")
def test_medical_abstracts_short_run_beats_chance(tmp_path):
    config = TrainConfig(
        data=str(ABSTRACTS), text_columns=["medical_abstract"], label_column="condition_label",
        output=str(tmp_path / "abs"), max_length=128, max_steps=60,
    )
    result = train(config, progress=False)
    assert result.metrics["data"]["n_test"] == 578
    assert result.test_metrics["macro_f1"] > 0.35  # 5 classes: chance is about 0.2
