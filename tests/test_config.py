import pytest

from medclf import MedclfError, TrainConfig


def test_defaults_are_valid_and_roundtrip_through_dict():
    config = TrainConfig(data="x.csv", text_columns="title")
    assert config.text_columns == ["title"]
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("epochs", 0, "epochs must be a positive integer"),
        ("batch_size", -1, "batch_size must be a positive integer"),
        ("lr", 0.0, "lr must be a positive number"),
        ("lr", 3.0, "lr must be below 1.0"),
        ("max_length", 4, "max_length must be at least 8"),
        ("precision", "fp8", "precision must be one of auto, fp32, bf16, fp16"),
        ("class_weights", "inverse", "class_weights must be one of none, balanced"),
        ("test_size", 1.5, "test_size must be a fraction"),
        ("seed", -3, "seed must be a non-negative integer"),
        ("max_steps", 0, "max_steps must be a positive integer"),
        ("patience", 0, "patience must be a positive integer"),
        ("attention_dropout", 1.0, "attention_dropout must be in"),
        ("method", "svm", "method must be one of finetune, embeddings"),
    ],
)
def test_bad_options_are_refused_with_the_allowed_values(option, value, fragment):
    with pytest.raises(MedclfError, match=fragment):
        TrainConfig(**{option: value})


def test_unknown_keys_in_a_saved_config_are_named():
    with pytest.raises(MedclfError, match="Unknown training option.*learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-4})
