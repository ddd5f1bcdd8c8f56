"""The fitting methods as descriptors: everything the rest of the package says or decides about a method.

`--method` names one of `FIT_METHODS`; its descriptor is the one place that knows how the method's run is described
(the report's options and "kept" lines, the card's method sentence, library name, limits and loading notes, the runs
table's options), what its history holds (epochs, regularisation values tried, nothing), whether validation chooses
anything in it (so whether the few-labels rule can apply), and which function in `medclf.training` fits it. Adding a
method is a function that fits it and one descriptor here (and its name in `config.METHODS`, which validates
--method where the config is built); the report, the card, the runs table and the pipeline then need no change.
"""

from __future__ import annotations

from dataclasses import dataclass

from medclf.config import METHODS, TrainConfig
from medclf.core.figures import RunMetrics
from medclf.errors import MedclfError

PLAIN_ENCODER_HEAD = ("the head is head.safetensors (`weight`, `bias`), applied as head.json says: logits = "
                      "normalize(mean-pool(last hidden state)) @ weight.T + bias.")


@dataclass(frozen=True)
class FitMethod:
    """One fitting method. The base class is fine-tuning's wording; the others override what differs."""

    name: str
    fit: str
    """'module:function' in medclf.training that fits it: (config, source, labels, Prepared, RunLog, progress) ->
    Fitted. A string, so that this layer (below training) names it without importing it."""
    description: str
    """The method in words (`describe` may add the run's options)."""
    history: str | None = "epoch"
    """What metrics.json's history rows are: 'epoch' (train and validation per epoch), 'C' (one per regularisation
    value tried) or None (nothing was trained)."""
    selects: bool = True
    """Validation chooses something (weights, C): the few-labels rule can apply."""
    library_name: str = "transformers"
    """The card's library_name: transformers where the saved model is a plain sequence classifier."""
    limit: str | None = None
    """A limitation the card always lists for this method."""

    def describe(self, config: TrainConfig) -> str:
        """The method in words for this run's options (the card's, and the served page's)."""
        return self.description

    def options(self, config: TrainConfig) -> str:
        """The report's options line."""
        return (f"- Options: epochs {config.epochs}, batch {config.batch_size}, lr {config.lr}, "
                f"max length {config.max_length} ({config.long_text}), head init {config.head_init}, "
                f"frozen embeddings {'yes' if config.freeze_embeddings else 'no'}, attention dropout "
                f"{'model default' if config.attention_dropout is None else config.attention_dropout}, "
                f"epoch averaging {'on' if config.average_epochs else 'off'}, patience {config.patience or 'off'}, "
                f"seed {config.seed}, class weights {config.class_weights}")

    def chosen(self, metrics: RunMetrics) -> str:
        """The report's line on what validation kept."""
        return (f"- Kept by validation macro-F1: {metrics.get('selected') or 'epoch ' + str(metrics['best_epoch'])} "
                f"(validation macro-F1 {metrics['validation']['macro_f1']:.4f})")

    def runs_options(self, config: TrainConfig) -> str:
        """The runs table's options column."""
        return (f"epochs {config.epochs}, lr {config.lr:g}, batch {config.batch_size}, max length {config.max_length} "
                f"({config.long_text}), seed {config.seed}")

    def loading(self, name: str, temperature: float) -> list[str]:
        """The card's lines on loading the model with plain transformers."""
        scaled = ("the saved head already gives calibrated logits" if temperature == 1.0 else
                  f"divide the logits by the temperature {temperature:.4f} (train_config.json) for calibrated "
                  "probabilities")
        return ["Plain transformers (config.json carries id2label; " + scaled + "):", "", "```python",
                "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
                f'model = AutoModelForSequenceClassification.from_pretrained("{name}/model")',
                f'tokenizer = AutoTokenizer.from_pretrained("{name}/model")', "```", ""]


@dataclass(frozen=True)
class _OwnHead(FitMethod):
    """A frozen encoder with medclf's own head (head.safetensors): not a plain transformers classifier."""

    library_name: str = "medclf"

    def runs_options(self, config: TrainConfig) -> str:
        return f"max length {config.max_length} ({config.long_text}), seed {config.seed}"

    def loading(self, name: str, temperature: float) -> list[str]:
        return [f"Plain transformers: `AutoModel.from_pretrained(\"{name}/model\")` is the encoder; {PLAIN_ENCODER_HEAD}",
                ""]


@dataclass(frozen=True)
class Embeddings(_OwnHead):
    def options(self, config: TrainConfig) -> str:
        return (f"- Method: logistic regression on frozen mean-pooled embeddings; max length {config.max_length}, "
                f"seed {config.seed}, class weights {config.class_weights}")

    def chosen(self, metrics: RunMetrics) -> str:
        how = ("cross-validation on the training rows (few labels)" if metrics.get("few_shot") else
               f"validation macro-F1 ({metrics['validation']['macro_f1']:.4f})")
        return f"- Regularisation C={metrics['timing'].get('chosen_C')} chosen by {how}"


@dataclass(frozen=True)
class ZeroShot(_OwnHead):
    def options(self, config: TrainConfig) -> str:
        return (f"- Method: zero-shot: each class is the embedding of its label descriptions "
                f"(`{config.label_descriptions}`); max length {config.max_length}")

    def chosen(self, metrics: RunMetrics) -> str:
        return (f"- No labelled row trains it: the validation part fits the temperature (validation macro-F1 "
                f"{metrics['validation']['macro_f1']:.4f}) and the test part measures it")

    def describe(self, config: TrainConfig) -> str:
        return f"{self.description} (`{config.label_descriptions}`)"


FIT_METHODS: dict[str, FitMethod] = {m.name: m for m in (
    FitMethod("finetune", fit="medclf.training.finetune:finetune",
              description="fine-tuning of the encoder with a classification head"),
    Embeddings("embeddings", fit="medclf.training.frozen:fit_embeddings", history="C",
               description="logistic regression on the frozen encoder's mean-pooled embeddings"),
    ZeroShot("zero-shot", fit="medclf.training.frozen:fit_zero_shot", history=None, selects=False,
             description="zero-shot: each class is the embedding of its label descriptions",
             limit="- Zero-shot: no labelled row trained it; its quality rests on the label descriptions."),
)}
"""--method -> its descriptor; the same names as config.METHODS (tests/test_training.py holds them together)."""


def method_of(name: str) -> FitMethod:
    """The descriptor of a run's method."""
    if name not in FIT_METHODS:
        raise MedclfError(f"Unknown fitting method {name!r}; use one of {', '.join(METHODS)}.")
    return FIT_METHODS[name]
