"""Tests of the batch_predict stage: the Beam pipeline on real files, its CLI, its component.

One pipeline run is shared by the assertions about it (module-scoped fixtures): DirectRunner
start-up and the SavedModel load take seconds.
"""

import csv
import glob
import json
import os

import numpy as np
import pytest

from components.batch_predict import beam_pipeline
from components.batch_predict.__main__ import main as cli_main, parse_args
from components.common import io, labels as labels_lib, model_handler

LABELS = ["circle", "square", "triangle", "cross"]


def _sample_rows(sample_data) -> list[tuple[str, str]]:
    with open(sample_data.csv_path, newline="") as f:
        return [(row[0], row[1]) for row in csv.reader(f) if row]


def _read_output(output_dir: str) -> tuple[list[dict], list[dict], dict]:
    shards = sorted(glob.glob(os.path.join(output_dir, "predictions-*-of-*.jsonl")))
    errors_path = os.path.join(output_dir, "errors.jsonl")
    assert os.path.isfile(errors_path), "errors.jsonl must always be written"
    rows = list(io.read_jsonl(shards))
    errors = list(io.read_jsonl(errors_path))
    stats = io.read_json(os.path.join(output_dir, "stats.json"))
    return rows, errors, stats


@pytest.fixture(scope="module")
def probe_model(tmp_path_factory) -> str:
    """A tiny exported SavedModel whose probabilities depend on each image's colours.

    The shared ``exported_model`` (an untrained MobileNetV3Small) gives every image the
    same uniform probabilities, so it cannot show that a prediction belongs to its URI.
    This one goes through the same export code (``build_archive``): mean colour -> dense
    layer with fixed random weights -> softmax (it picks each of the four classes for
    some sample images).
    """
    import keras

    from components.export.saved_model import build_archive

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    x = keras.layers.Rescaling(1 / 255.0)(x)
    dense = keras.layers.Dense(len(LABELS), activation="softmax", name="probs")
    model = keras.Model(inputs, dense(x))
    kernel = np.random.default_rng(2).normal(0, 8, (3, len(LABELS)))
    dense.set_weights([kernel, -0.5 * kernel.sum(axis=0)])  # Centred on mid-grey.
    export_dir = str(tmp_path_factory.mktemp("probe") / "export")
    build_archive(model, LABELS, 32).write_out(export_dir, verbose=False)
    labels_lib.write_labels(os.path.join(export_dir, "assets.extra", "labels.txt"), LABELS)
    return export_dir


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, str]:
    """URIs of a missing file, a zero-byte file and a non-image file, by expected reason."""
    base = tmp_path_factory.mktemp("bad")
    empty = base / "empty.jpg"
    empty.write_bytes(b"")
    corrupt = base / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image at all\n" * 20)
    return {
        "missing_file": str(base / "missing.jpg"),
        "empty_file": str(empty),
        "undecodable_image": str(corrupt),
    }


@pytest.fixture(scope="module")
def main_run(sample_data, probe_model, bad_files, tmp_path_factory):
    """One run over every sample image plus the bad files, all in one batch (size 64).

    The listing has a header, a blank line, ``uri,label`` rows and (for the first four
    images and the corrupt file) bare ``uri`` rows.
    """
    base = tmp_path_factory.mktemp("main_run")
    rows = _sample_rows(sample_data)
    unlabelled = {uri for uri, _ in rows[:4]}
    lines = ["uri,label", ""]
    lines += [uri if uri in unlabelled else f"{uri},{label}" for uri, label in rows]
    lines += [
        f"{bad_files['missing_file']},circle",
        f"{bad_files['empty_file']},square",
        bad_files["undecodable_image"],
    ]
    listing = base / "listing.csv"
    listing.write_text("\n".join(lines) + "\n")
    out = str(base / "out")
    summary = beam_pipeline.run(probe_model, out, input_uris=str(listing), batch_size=64)
    predictions, errors, stats = _read_output(out)
    return {
        "summary": summary,
        "predictions": predictions,
        "errors": errors,
        "stats": stats,
        "labels": dict(rows),
        "unlabelled": unlabelled,
        "out": out,
    }


def test_one_prediction_per_good_image(main_run, sample_data):
    uris = [row["uri"] for row in main_run["predictions"]]
    assert len(uris) == len(set(uris)) == sample_data.count
    assert set(uris) == set(main_run["labels"])
    summary = main_run["summary"]
    assert summary["rows"] == len(uris)
    assert summary["errors"] == len(main_run["errors"]) == 3
    assert summary["prediction_files"] == sorted(glob.glob(summary["predictions"]))
    assert summary["prediction_files"], "no prediction shard"
    assert all(
        os.path.basename(path).startswith("predictions-") and path.endswith(".jsonl")
        for path in summary["prediction_files"]
    )
    assert summary["errors_path"] == os.path.join(main_run["out"], "errors.jsonl")
    assert main_run["stats"]["rows"] == summary["rows"]


def test_prediction_records(main_run):
    for row in main_run["predictions"]:
        top = row["top_k"]
        assert row["label"] in LABELS
        assert len(top) == 3
        assert len({entry["label"] for entry in top}) == 3
        assert all(entry["label"] in LABELS for entry in top)
        assert row["label"] == top[0]["label"]
        assert row["probability"] == top[0]["probability"]
        probabilities = [entry["probability"] for entry in top]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in probabilities) and sum(probabilities) <= 1 + 1e-5
        if row["uri"] in main_run["unlabelled"]:
            assert "true_label" not in row
        else:
            assert row["true_label"] == main_run["labels"][row["uri"]]


def test_bad_inputs_go_to_errors(main_run, bad_files):
    reasons = {error["uri"]: error["reason"] for error in main_run["errors"]}
    assert reasons == {uri: reason for reason, uri in bad_files.items()}
    for error in main_run["errors"]:
        assert error["stage"] == "batch_predict"
        assert error["detail"]
    assert main_run["summary"]["errors_by_reason"] == {
        "empty_file": 1,
        "missing_file": 1,
        "undecodable_image": 1,
    }


def test_predictions_are_the_saved_models(main_run, probe_model):
    """RunInference ran the real model: each URI gets what the signature gives its bytes."""
    import tensorflow as tf

    from components.common.serving import load_signature

    rows = {row["uri"]: row for row in main_run["predictions"]}
    uris = sorted(rows)
    signature = load_signature(probe_model)
    outputs = signature(image_bytes=tf.constant([io.read_bytes(uri) for uri in uris]))
    expected = outputs["probabilities"].numpy()
    expected_labels = [label.decode() for label in outputs["label"].numpy()]
    assert len(set(expected_labels)) > 1, "the probe model must tell images apart"
    for uri, probabilities, label in zip(uris, expected, expected_labels, strict=True):
        row = rows[uri]
        assert row["label"] == label, uri
        order = np.argsort(-probabilities, kind="stable")[:3]
        assert [entry["label"] for entry in row["top_k"]] == [LABELS[i] for i in order]
        got = [entry["probability"] for entry in row["top_k"]]
        np.testing.assert_allclose(got, probabilities[order], rtol=1e-5, atol=1e-6)


def test_corrupt_image_shares_a_batch_with_good_ones(main_run):
    counters = main_run["summary"]["counters"]
    # The corrupt image was batched with good ones (the batch fell back to one by one)...
    assert counters["fallback_batches"] >= 1
    assert counters["fallback_images"] > counters["fallback_batches"]
    # ... and none of them was lost.
    assert counters["predicted"] == main_run["summary"]["rows"]
    assert counters["errors_undecodable_image"] == 1


def test_handler_falls_back_image_by_image(probe_model, sample_data, bad_files):
    handler = model_handler.SavedModelHandler(probe_model, batch_size=8, num_classes=4)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 8, "max_batch_size": 8}
    model = handler.load_model()
    good = [io.read_bytes(uri) for uri, _ in _sample_rows(sample_data)[:3]]
    corrupt = io.read_bytes(bad_files["undecodable_image"])
    with pytest.raises(model_handler.UndecodableImages, match="Unknown image file format"):
        model.predict([good[0], corrupt])
    direct = model.predict(good)

    results = list(handler.run_inference([good[0], corrupt, good[1], good[2]], model))
    assert [r.example for r in results] == [good[0], corrupt, good[1], good[2]]
    failure = results[1].inference
    assert isinstance(failure, model_handler.InferenceFailure)
    assert failure.reason == "undecodable_image"
    assert "Unknown image file format" in failure.detail
    good_results = [results[0], results[2], results[3]]
    for result, expected in zip(good_results, direct, strict=True):
        np.testing.assert_allclose(result.inference, expected, rtol=1e-5, atol=1e-6)

    with pytest.raises(ValueError, match="labels"):
        model_handler.SavedModelHandler(probe_model, num_classes=5).load_model()


def test_dataset_dir_mode(exported_model, sample_data, tmp_path):
    chosen = _sample_rows(sample_data)[::10]
    dataset = tmp_path / "dataset"
    (dataset / "manifests").mkdir(parents=True)
    (dataset / "manifests" / "test.csv").write_text(
        "".join(f"{uri},{label}\n" for uri, label in chosen)
    )
    out = str(tmp_path / "out")
    summary = beam_pipeline.run(exported_model, out, dataset_dir=str(dataset), top_k=10)
    rows, errors, _ = _read_output(out)
    assert sorted(row["uri"] for row in rows) == sorted(uri for uri, _ in chosen)
    assert {row["uri"]: row["true_label"] for row in rows} == dict(chosen)
    assert errors == []
    assert summary["rows"] == len(chosen) and summary["errors"] == 0
    assert summary["input"] == str(dataset / "manifests" / "test.csv")
    # top_k is capped at the number of classes.
    assert summary["top_k"] == 4
    assert all(len(row["top_k"]) == 4 for row in rows)


@pytest.mark.parametrize(
    ("input_uris", "dataset_dir"), [("", ""), ("/some/list.csv", "/some/dataset")]
)
def test_exactly_one_input(input_uris, dataset_dir, exported_model, tmp_path):
    with pytest.raises(ValueError, match="exactly one input: input_uris .* or dataset_dir"):
        beam_pipeline.run(
            exported_model, str(tmp_path), input_uris=input_uris, dataset_dir=dataset_dir
        )


def test_missing_listing(exported_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="test manifest"):
        beam_pipeline.run(exported_model, str(tmp_path / "out"), dataset_dir=str(tmp_path))


def test_error_share_above_threshold_fails_after_writing(
    exported_model, sample_data, bad_files, tmp_path
):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{_sample_rows(sample_data)[0][0]}\n{bad_files['missing_file']}\n")
    out = tmp_path / "out"
    with pytest.raises(
        ValueError, match=r"1 of 2 inputs .*max_error_fraction=0\.25.*errors\.jsonl"
    ):
        beam_pipeline.run(
            exported_model, str(out), input_uris=str(listing), max_error_fraction=0.25
        )
    rows, errors, _ = _read_output(str(out))
    assert len(rows) == 1
    assert [error["reason"] for error in errors] == ["missing_file"]


def test_cli_args():
    args, beam_args = parse_args(
        ["--model-dir", "m", "--output-dir", "o", "--dataset-dir", "d", "--top-k", "2",
         "--project=p", "--region=r"]
    )  # fmt: skip
    assert (args.model_dir, args.output_dir) == ("m", "o")
    assert (args.dataset_dir, args.input_uris) == ("d", "")
    assert args.top_k == 2 and args.batch_size == 32 and args.runner == "DirectRunner"
    assert beam_args == ["--project=p", "--region=r"]
    with pytest.raises(SystemExit):
        parse_args(
            ["--model-dir", "m", "--output-dir", "o", "--input-uris", "a", "--dataset-dir", "d"]
        )


def test_cli_run(exported_model, sample_data, tmp_path, capsys):
    uris = [uri for uri, _ in _sample_rows(sample_data)[:2]]
    listing = tmp_path / "uris.txt"
    listing.write_text("\n".join(uris) + "\n")
    out = tmp_path / "out"
    cli_main(
        ["--model-dir", exported_model, "--output-dir", str(out), "--input-uris", str(listing),
         "--top-k", "1", "--batch-size", "1", "--runner", "FnApiRunner"]
    )  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"] == 2 and printed["errors"] == 0
    rows, _, _ = _read_output(str(out))
    assert sorted(row["uri"] for row in rows) == sorted(uris)
    assert all(len(row["top_k"]) == 1 and "true_label" not in row for row in rows)


def test_component_in_kfp_local(kfp_local, exported_model, sample_data, bad_files, tmp_path):
    from kfp import dsl

    from components.batch_predict.component import batch_predict

    chosen = _sample_rows(sample_data)[:5]
    listing = tmp_path / "listing.csv"
    listing.write_text(
        "".join(f"{uri},{label}\n" for uri, label in chosen) + bad_files["undecodable_image"] + "\n"
    )

    @dsl.pipeline
    def predict_pipeline(listing: str) -> dsl.Dataset:
        model = dsl.importer(artifact_uri=exported_model, artifact_class=dsl.Model, reimport=False)
        task = batch_predict(
            model=model.output, input_uris=listing, top_k=2, batch_size=4, max_error_fraction=0.5
        )
        return task.outputs["predictions"]

    artifact = predict_pipeline(listing=str(listing)).output
    assert artifact.metadata["rows"] == 5 and artifact.metadata["errors"] == 1

    # What kfp local wrote: <pipeline_root>/<run>/<task>/{executor_output.json,predictions/}.
    (run_dir,) = glob.glob(str(kfp_local / "*"))
    with open(os.path.join(run_dir, "batch-predict", "executor_output.json")) as f:
        (written,) = json.load(f)["artifacts"]["predictions"]["artifacts"]
    assert written["uri"] == artifact.uri == os.path.join(run_dir, "batch-predict", "predictions")
    metadata = written["metadata"]
    assert (metadata["rows"], metadata["errors"], metadata["top_k"]) == (5, 1, 2)
    assert metadata["errors_by_reason"] == {"undecodable_image": 1}
    assert metadata["input"] == str(listing)
    rows, errors, _ = _read_output(written["uri"])
    assert sorted(row["uri"] for row in rows) == sorted(uri for uri, _ in chosen)
    assert all(len(row["top_k"]) == 2 for row in rows)
    assert [(e["uri"], e["reason"]) for e in errors] == [
        (bad_files["undecodable_image"], "undecodable_image")
    ]
    assert metadata["prediction_files"] == sorted(
        glob.glob(os.path.join(written["uri"], "predictions-*-of-*.jsonl"))
    )
    assert metadata["errors_path"] == os.path.join(written["uri"], "errors.jsonl")


def test_component_reads_the_dataset_when_no_input_uris(exported_model, sample_data, tmp_path):
    """The component body's dataset branch (kfp local runs the same function in a
    subprocess; one kfp local run above covers the launcher, this one the other input)."""
    from kfp import dsl

    from components.batch_predict.component import batch_predict

    chosen = _sample_rows(sample_data)[1:3]
    dataset = tmp_path / "dataset"
    (dataset / "manifests").mkdir(parents=True)
    (dataset / "manifests" / "test.csv").write_text(
        "uri,label\n" + "".join(f"{uri},{label}\n" for uri, label in chosen)
    )
    predictions = dsl.Dataset(name="predictions", uri=str(tmp_path / "predictions"), metadata={})
    batch_predict.python_func(
        model=dsl.Model(name="model", uri=exported_model, metadata={}),
        predictions=predictions,
        dataset=dsl.Dataset(name="dataset", uri=str(dataset), metadata={}),
        runner="FnApiRunner",
    )
    assert predictions.metadata["rows"] == 2
    assert predictions.metadata["input"] == str(dataset / "manifests" / "test.csv")
    rows, _, _ = _read_output(predictions.path)
    assert sorted((row["uri"], row["true_label"]) for row in rows) == sorted(chosen)
