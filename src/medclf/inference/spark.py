"""Batch prediction on Apache Spark: a pandas UDF that loads the classifier once per executor process.

    from medclf.inference.spark import add_predictions, predict_udf
    scored = add_predictions(df, "runs/notes", text_column="text")   # + label, score, prob_<label> columns
    udf = predict_udf("runs/notes")                                   # or the UDF itself: a struct column
    df.withColumn("pred", udf("text"))

Spark hands the UDF Arrow batches of rows; each Python worker keeps one TextClassifier per run (loaded
on its first batch, reused for the next ones while the worker lives), and runs it with medclf's own
length-sorted, dynamically padded batches. Texts never leave the executor that holds them and are
never logged. pyspark is an optional extra (`pip install medclf[spark]`) and needs Java 17+.

The run reaches the executors one of two ways: at the same path on every node (a shared file system), or
shipped (`ship=True`; `medclf predict --engine spark` ships it whenever the master is not local): the run is
zipped on the driver and handed to Spark's own `SparkContext.addArchive`, as `spark-submit --archives` would;
each executor fetches and unpacks it once into its work folder, and the UDF loads it from there
(`SparkFiles.get`). (Spark serves a directory itself, `addFile(recursive=True)`, only from a Hadoop file
system, never from the driver's local disk under a cluster master, hence the archive.)
"""

from __future__ import annotations

import atexit
import hashlib
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medclf.config import LoadOptions
from medclf.errors import MedclfError

if TYPE_CHECKING:
    from medclf.inference.classifier import TextClassifier

_LOADED: dict[tuple[str, LoadOptions], TextClassifier] = {}
"""TextClassifiers loaded in this (executor) process, by (run dir, backend, batch size)."""


def _require_pyspark() -> Any:
    try:
        import pyspark
    except ImportError:
        raise MedclfError("Spark prediction needs pyspark (and Java 17+); install it with `pip install 'medclf[spark]'`.") \
            from None
    return pyspark


def _classifier(run_dir: str, options: LoadOptions) -> TextClassifier:
    key = (run_dir, options)
    if key not in _LOADED:
        from medclf.inference.classifier import TextClassifier

        if options.threads is not None:  # several Python workers share the machine's cores
            import torch

            torch.set_num_threads(options.threads)
        _LOADED[key] = TextClassifier.load(run_dir, options.replace(device="cpu"))
    return _LOADED[key]


def _run_labels(run_dir: str) -> tuple[list[str], bool, bool]:
    """The run's labels, whether it is multi-label, whether it has a deferral rule."""
    from medclf.run.artifacts import is_run_dir
    from medclf.run.runspec import RunSpec

    if not is_run_dir(run_dir):
        raise MedclfError(f"{run_dir} is not a medclf run directory; pass the --output of `medclf train`.")
    spec = RunSpec.read(run_dir)
    return [str(lab) for lab in spec.labels], spec.multi_label, spec.deferral is not None


def prob_column(label: str) -> str:
    """The output column of a label's probability (characters Spark column names dislike become '_')."""
    return "prob_" + re.sub(r"[^0-9A-Za-z_]", "_", label)


def predict_udf(run_dir: str | Path, options: LoadOptions | None = None, *, shipped_as: str | None = None) -> Any:
    """A pandas UDF from a text column to a struct: label and score (multi-label: labels, an array), and
    prob_<label> for every label. The run directory must be readable at the same path on every executor, or
    have been shipped to the session the UDF runs in: shipped_as is the name `ship_run` returned.
    options: as TextClassifier.load takes them (options.threads: inference threads per Python worker; default: the
    library's own choice); the device is always the CPU."""
    options = options or LoadOptions()
    _require_pyspark()
    import pandas as pd
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, BooleanType, DoubleType, StringType, StructField, StructType

    run = str(Path(run_dir).resolve())
    labels, multi, defers = _run_labels(run)
    head = ([StructField("labels", ArrayType(StringType()))] if multi
            else [StructField("label", StringType()), StructField("score", DoubleType())])
    if defers:  # a run trained with --target-precision: whether each text goes to a person
        head.append(StructField("deferred", BooleanType()))
    schema = StructType(head + [StructField(prob_column(lab), DoubleType()) for lab in labels])

    def predict(texts: pd.Series) -> pd.DataFrame:
        clf = _classifier(run if shipped_as is None else _shipped_copy(shipped_as), options)
        batch = ["" if t is None else str(t) for t in texts]
        probs = clf.predict_proba(batch)
        out = pd.DataFrame({prob_column(lab): probs[:, i].astype(float) for i, lab in enumerate(clf.labels)})
        if clf.multi_label:
            out.insert(0, "labels", clf.decide(probs))
        else:
            top = probs.argmax(axis=1)
            if defers:
                out.insert(0, "deferred", [r.deferred for r in clf.route(probs)])
            out.insert(0, "score", probs[range(len(batch)), top].astype(float))
            out.insert(0, "label", [clf.labels[i] for i in top])
        return out

    # pyspark reads the type hints to pick the UDF kind (Series -> DataFrame: a scalar UDF returning a struct);
    # with `from __future__ import annotations` they are strings, so hand it the real types
    predict.__annotations__ = {"texts": pd.Series, "return": pd.DataFrame}
    return pandas_udf(schema)(predict)  # type: ignore[call-overload]  # pyspark's stubs lack the type-hinted form: a StructType alone


def ship_run(spark: Any, run_dir: str | Path) -> str:
    """Ship a run directory to every executor of `spark`: zipped into a temporary folder of the driver (removed when
    this process exits; the driver serves it from there) and added with SparkContext.addArchive, so each executor
    fetches and unpacks it once into its own work folder. Returns the name it is shipped as (the run folder's name
    and a digest of its path, so two runs of one name do not collide), for predict_udf(shipped_as=...)."""
    run = Path(run_dir).resolve()
    _run_labels(str(run))  # a run directory, or the user error that says so
    name = f"{run.name}-{hashlib.sha256(str(run).encode()).hexdigest()[:12]}.zip"
    folder = Path(tempfile.mkdtemp(prefix="medclf-ship-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    try:
        with zipfile.ZipFile(folder / name, "w", zipfile.ZIP_STORED) as archive:  # weights hardly compress
            for path in sorted(run.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(run).as_posix())
    except OSError as err:
        raise MedclfError(f"Could not pack the run to ship it to the executors in {folder} ({err.strerror}); "
                          "free space there or point TMPDIR at a writable folder.") from None
    spark.sparkContext.addArchive(str(folder / name))
    return name


def _shipped_copy(name: str) -> str:
    """On an executor: the folder Spark unpacked the run shipped under this name into."""
    from pyspark import SparkFiles

    return SparkFiles.get(name)


def add_predictions(df: Any, run_dir: str | Path, *, text_column: str = "text", options: LoadOptions | None = None,
                    ship: bool = False) -> Any:
    """`df` with the prediction columns of predict_udf appended (label, score, prob_<label>...); an input
    column with one of those names (a true `label`, say) is kept as input_<name>. ship=True ships the run to the
    executors first (`ship_run`), for a cluster whose nodes do not see the driver's file system."""
    from pyspark.sql import functions as F

    if text_column not in df.columns:
        raise MedclfError(f"Text column '{text_column}' is not in the DataFrame; its columns are: {', '.join(df.columns)}.")
    udf = predict_udf(run_dir, options, shipped_as=ship_run(df.sparkSession, run_dir) if ship else None)
    added = udf.returnType.fieldNames()
    for name in set(added) & set(df.columns):  # an input column named like an output one (a true `label`) is kept
        df = df.withColumnRenamed(name, f"input_{name}")
    if text_column in added:
        text_column = f"input_{text_column}"
    return df.withColumn("__medclf", udf(F.col(text_column))).select("*", "__medclf.*").drop("__medclf")


SPARK_FORMATS = {".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json", ".parquet": "parquet",
                 ".pq": "parquet"}


def predict_spark_file(
    run_dir: str, *, input: str, output: str, text_columns: list[str] | None = None, keep_text: bool = False,
    master: str = "local[*]", options: LoadOptions | None = None,
) -> int:
    """`medclf predict --engine spark`: read `input` with Spark, add the predictions, and write `output` as a
    Spark output folder (part files) of the format its extension names; the folder is written under a
    temporary name and renamed, so a failed job leaves nothing under the final name. Returns the rows.
    On a cluster (a master that is not local[...]) the run is shipped to the executors (`ship_run`); input and
    output are paths every node and the driver see alike (the executors read and write the part files)."""
    import os

    _require_pyspark()
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    fmt_in = SPARK_FORMATS.get(Path(input).suffix.lower())
    fmt_out = SPARK_FORMATS.get(Path(output).suffix.lower())
    if fmt_in is None or fmt_out is None:
        raise MedclfError("--engine spark reads and writes .csv, .jsonl or .parquet; check --input and --output.")
    if not Path(input).exists():
        raise MedclfError(f"File not found: {input}; check the path.")
    final = Path(output)
    if final.exists():
        raise MedclfError(f"{output} already exists; choose another --output or remove it.")
    spark = SparkSession.builder.master(master).appName("medclf-predict").getOrCreate()
    if fmt_in == "csv":  # quoted fields may hold commas and newlines, as in the files medclf reads itself
        df = spark.read.option("header", True).option("multiLine", True).option("escape", '"').csv(input)
    else:
        df = getattr(spark.read, fmt_in)(input)
    columns = text_columns or (["text"] if "text" in df.columns else None)
    if not columns or any(c not in df.columns for c in columns):
        raise MedclfError(f"Pass --text-column: the text column(s) are not in {input} (its columns: {', '.join(df.columns)}).")
    # one partition per core at least: a small file is read as one partition, which one Python worker would
    # classify alone; each worker then gets the cores divided among the workers (local masters)
    parallelism = spark.sparkContext.defaultParallelism
    if df.rdd.getNumPartitions() < parallelism:
        df = df.repartition(parallelism)
    local = master.startswith("local")  # Spark on this machine: no shipping, the cores shared among its workers
    threads = max(1, (os.cpu_count() or 1) // parallelism) if local else None
    df = df.withColumn("__text", F.concat_ws("\n", *[F.col(c) for c in columns]) if len(columns) > 1 else F.col(columns[0]))
    options = (options or LoadOptions()).replace(threads=threads)
    scored = add_predictions(df, run_dir, text_column="__text", options=options,
                             ship=not local).drop("__text")
    if not keep_text:
        scored = scored.drop(*columns)
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = scored.write.mode("overwrite")
    if fmt_out == "csv":
        writer = writer.option("header", True)
    getattr(writer, fmt_out)(str(tmp))
    written = spark.read.option("header", True) if fmt_out == "csv" else spark.read
    count = getattr(written, fmt_out)(str(tmp)).count()  # counts the written rows; no second prediction pass
    tmp.rename(final)
    return count
