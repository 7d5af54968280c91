"""Data in, bounded: downloads streamed under a size cap and a deadline, fetched copies removed, one download
for main and load, only regular files, no nested Parquet columns."""

from __future__ import annotations

import http.server
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from steps.lib.cache import data_digest, fetched_once
from steps.lib.errors import PipelineError
from steps.lib.tables import MAX_DOWNLOAD_BYTES, local_copy, read_data, read_frame, write_parquet
from tests.conftest import PROJECT_DIR, run_step_cli, serving_on_loopback
from tests.unit.test_bad_input_steps import assert_failed_cleanly, newest_run

CSV = b"x,y\n" + b"".join(f"{i},{'ab'[i % 2]}\n".encode() for i in range(2000))


@contextmanager
def serving(body: bytes, length: bool = True, pause: float = 0.0) -> Iterator[dict]:
    """`body` at http://127.0.0.1:<port>/data.csv, with or without a Content-Length, in 4 KiB pieces `pause`
    seconds apart; yields {"url", "gets"} (gets: how many downloads were asked for)."""
    state = {"gets": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            state["gets"] += 1
            self.send_response(200)
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for start in range(0, len(body), 4096):
                    self.wfile.write(body[start : start + 4096])
                    self.wfile.flush()
                    time.sleep(pause)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: object) -> None:
            pass

    with serving_on_loopback(Handler) as address:
        yield state | {"url": f"http://{address}/data.csv", "state": state}


@pytest.fixture
def own_tmp(tmp_path, monkeypatch) -> Path:
    """A temp folder of this test's own, to see what a download leaves behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_download_is_streamed_to_disk_and_removed_after_use(own_tmp):
    with serving(CSV) as served:
        with local_copy(served["url"]) as path:
            assert path.read_bytes() == CSV and path.is_relative_to(own_tmp)
        assert list(own_tmp.iterdir()) == []
        assert len(read_data(served["url"])) == 2000
        assert list(own_tmp.iterdir()) == []


def test_a_download_is_held_a_chunk_at_a_time_not_whole(own_tmp):
    """32 MiB through local_copy: Python's allocations peak near one 1 MiB chunk, not at the body's size."""
    import tracemalloc

    body = CSV * (32 * 2**20 // len(CSV))
    with serving(body) as served:
        tracemalloc.start()
        try:
            with local_copy(served["url"]) as path:
                peak = tracemalloc.get_traced_memory()[1]
                assert path.stat().st_size == len(body)
        finally:
            tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak:,} bytes held while downloading {len(body):,}"


@pytest.mark.parametrize("length", [True, False], ids=["announced", "chunked"])
def test_a_download_past_the_cap_is_refused_in_one_line_and_leaves_nothing(own_tmp, monkeypatch, length):
    monkeypatch.setenv(MAX_DOWNLOAD_BYTES, "10000")
    with serving(CSV, length=length) as served, pytest.raises(PipelineError) as raised:
        read_data(served["url"])
    message = str(raised.value)
    assert "larger than the cap of 10,000 bytes; raise PIPELINE_MAX_DOWNLOAD_BYTES" in message and "\n" not in message
    assert list(own_tmp.iterdir()) == []


def test_a_download_past_the_deadline_is_refused_in_one_line(own_tmp, monkeypatch):
    monkeypatch.setenv("PIPELINE_DOWNLOAD_SECONDS", "0.5")
    started = time.monotonic()
    # The whole body would take ~14 s to arrive (4 KiB pieces 0.1 s apart): the deadline ends it while it trickles.
    with serving(CSV * 40, pause=0.1) as served, pytest.raises(PipelineError, match=r"took over 0\.5 s") as raised:
        read_data(served["url"])
    assert time.monotonic() - started < 3 and "raise PIPELINE_DOWNLOAD_SECONDS" in str(raised.value)
    assert list(own_tmp.iterdir()) == []


@pytest.mark.parametrize("value", ["lots", "-1", "0"])
def test_a_bad_limit_is_named(monkeypatch, value):
    monkeypatch.setenv(MAX_DOWNLOAD_BYTES, value)
    with serving(CSV) as served, pytest.raises(PipelineError, match="PIPELINE_MAX_DOWNLOAD_BYTES must be a positive"):
        read_data(served["url"])


def test_a_download_past_the_cap_fails_load_and_main_in_one_line_after_one_get(
    own_tmp, tracking_uri, capsys, monkeypatch
):
    """load: one line, FAILED, no artifact; main: the same before any step runs (it keeps the params it
    resolved), and no second download (for the digest) or third (in load) that would wait out the limits again."""
    monkeypatch.setenv(MAX_DOWNLOAD_BYTES, "10000")
    message = "larger than the cap of 10,000 bytes; raise PIPELINE_MAX_DOWNLOAD_BYTES"
    with serving(CSV) as served:
        assert_failed_cleanly(capsys, "load", ["--data-uri", served["url"], "--target", "y"], message)
        assert served["state"]["gets"] == 1
        code, stderr = run_step_cli(capsys, "main", "--data-uri", served["url"], "--target", "y")
        assert served["state"]["gets"] == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1 and errors[0].startswith("error: main: ") and message in errors[0]
    assert "Traceback" not in stderr
    main = newest_run("main")
    assert main.info.status == "FAILED" and message in main.data.tags["pipeline.error"]
    client = MlflowClient()
    assert [a.path for a in client.list_artifacts(main.info.run_id)] == ["card.html", "logs", "profile"]
    assert client.search_runs([main.info.experiment_id], f"tags.`mlflow.parentRunId` = '{main.info.run_id}'") == []
    assert list(own_tmp.iterdir()) == []


def test_duplicate_headers_fail_load_in_one_line(tracking_uri, capsys, tmp_path):
    (tmp_path / "twice.csv").write_text("id,Income ($),id,y\n1,2,3,a\n2,3,4,b\n")
    assert_failed_cleanly(
        capsys, "load", ["--data-uri", str(tmp_path / "twice.csv"), "--target", "y"], "duplicate column names: 'id'"
    )


def test_main_and_load_read_one_download(own_tmp, tracking_uri, capsys):
    """main fetches once for the cache digest and hands load that copy: the server sees one GET."""
    with serving(CSV) as served:
        with fetched_once(served["url"]) as copy:
            digest = data_digest(served["url"], copy)
            code, stderr = run_step_cli(
                capsys, "load", "--data-uri", served["url"], "--target", "y", "--data-copy", str(copy)
            )
            assert code == 0, stderr
        assert served["state"]["gets"] == 1
        assert list(own_tmp.iterdir()) == []
        assert data_digest(served["url"]) == digest  # the same bytes, fetched again
        assert served["state"]["gets"] == 2 and list(own_tmp.iterdir()) == []
    assert fetched_once("sklearn:iris").__enter__() is None


def test_only_regular_files_are_read(tracking_uri, capsys, tmp_path):
    fifo = tmp_path / "stream.csv"
    os.mkfifo(fifo)
    assert_failed_cleanly(capsys, "load", ["--data-uri", str(fifo), "--target", "y"], "is a FIFO, not a regular file")
    assert_failed_cleanly(
        capsys, "load", ["--data-uri", "/dev/zero", "--target", "y"], "is a device, not a regular file"
    )
    folder = tmp_path / "folder"
    folder.mkdir()
    os.mkfifo(folder / "inside.csv")
    with pytest.raises(PipelineError, match="is a FIFO"):
        read_data(str(folder))
    assert data_digest(str(fifo)).startswith("unavailable:")  # main's digest does not hang on it either


def test_nested_parquet_columns_are_refused_naming_them(tracking_uri, capsys, tmp_path):
    table = pa.table({"x": [1, 2, 3], "tags": [[1], [2, 3], []], "where": [{"a": 1}] * 3, "y": ["a", "b", "a"]})
    pq.write_table(table, tmp_path / "nested.parquet")
    message = "nested Parquet column(s) 'tags' (list<element: int64>), 'where' (struct<a: int64>)"
    assert_failed_cleanly(capsys, "load", ["--data-uri", str(tmp_path / "nested.parquet"), "--target", "y"], message)
    pd.DataFrame({"x": [1, 2], "y": ["a", "b"]}).to_parquet(tmp_path / "flat.parquet")
    assert len(read_data(str(tmp_path / "flat.parquet"))) == 2


def test_reading_in_batches_holds_a_batch_not_the_file(tmp_path):
    """Arrow memory stays flat over a Parquet file of several row groups of a users-like table (pyarrow's
    pre_buffer kept the column chunks read so far: here +25 % by the fourth group; at 10,000,000 rows predict
    reached 1.76 GB)."""
    import importlib.util

    from steps.lib.tables import read_batches

    spec = importlib.util.spec_from_file_location("scale", PROJECT_DIR / "bench" / "scale.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    writer = None
    for group in range(4):
        part = pa.Table.from_pandas(scale.users_table(100_000, seed=group), preserve_index=False)
        writer = writer or pq.ParquetWriter(tmp_path / "big.parquet", part.schema)
        writer.write_table(part)
    writer.close()
    held = [pa.total_allocated_bytes() for frame in read_batches(str(tmp_path / "big.parquet"), {}, 20_000)]
    assert len(held) == 20 and max(held) <= 1.05 * held[0]


@pytest.mark.parametrize("rows, sizes", [(30, [10, 10, 10]), (25, [10, 10, 5]), (0, [0])])
def test_a_csv_in_batches_is_its_rows_and_no_empty_frame_after_them(tmp_path, rows, sizes):
    """Batches of exactly `batch_rows`, the rest last; an empty frame only for a file of no rows (the checks
    then say so), not after a file whose rows fill its batches exactly."""
    from steps.lib.tables import read_batches

    pd.DataFrame({"x": np.arange(rows, dtype=float), "y": ["a"] * rows}).to_csv(tmp_path / "t.csv", index=False)
    frames = list(read_batches(str(tmp_path / "t.csv"), {"x": "double"}, 10))
    assert [len(frame) for frame in frames] == sizes
    assert list(frames[0].columns) == ["x", "y"]
    if rows:
        assert pd.concat(frames)["x"].tolist() == list(range(rows))


def test_reading_in_batches_makes_the_checks_reading_whole_makes(tmp_path):
    """An empty file, repeated headers and nested columns: the same one-line errors batch by batch."""
    from steps.lib.tables import read_batches

    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "twice.csv").write_text("a,b,a\n1,2,3\n")
    (tmp_path / "semicolons.csv").write_text("Income ($);city;y\n1234,5;Lyon;0\n2.5;Paris;1\n")
    (tmp_path / "tabs.csv").write_text("a\tb\ta\n1\t2\t3\n")
    pq.write_table(pa.table({"tags": [[1], [2]]}), tmp_path / "nested.parquet")
    for name, message in (
        ("empty.csv", "is empty: it has no header and no rows"),
        ("twice.csv", "has duplicate column names: 'a' (2 times)"),
        ("nested.parquet", "nested Parquet column(s) 'tags'"),
        ("semicolons.csv", "writes numbers with decimal commas ('1234,5') and with decimal points ('2.5')"),
        ("tabs.csv", "has duplicate column names: 'a' (2 times)"),
    ):
        with pytest.raises(PipelineError, match=re.escape(message)):
            list(read_batches(str(tmp_path / name), {}, 10))
        with pytest.raises(PipelineError, match=re.escape(message)):
            read_data(str(tmp_path / name))


def test_a_steps_input_is_read_in_place_from_a_local_store_and_a_download_is_removed(own_tmp, tracking_uri, tmp_path):
    """MLflow's own download of a runs:/ URI goes to a temporary folder nobody removes: every step left its
    inputs behind (13 GB of /tmp here). A local store's artifact is read where it is; a download is removed."""
    import mlflow

    import steps.lib.artifacts as artifacts

    source = tmp_path / "out"
    source.mkdir()
    (source / "a.json").write_text('{"x": 1}')
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(source), "data")
    uri = f"runs:/{run.info.run_id}/data"
    with artifacts.fetched(uri, "the data") as path:
        assert (path / "a.json").read_text() == '{"x": 1}'
        assert path == Path(mlflow.get_run(run.info.run_id).info.artifact_uri.removeprefix("file://")) / "data"
    with artifacts.fetched(f"{uri}/a.json", "the data") as path:
        assert path.name == "a.json" and path.is_file()
    assert list(own_tmp.iterdir()) == []
    with pytest.raises(PipelineError, match=r"(?i)cannot fetch the data from .*: no such artifact"):
        artifacts.fetched(f"{uri}/missing.json", "the data").__enter__()

    downloaded = []
    with pytest.MonkeyPatch.context() as patch:  # as for a remote store: downloaded, then removed
        patch.setattr(artifacts, "local_artifact_path", lambda artifact_uri: None)
        with artifacts.fetched(uri, "the data") as path:
            downloaded.append(path)
            assert path.is_relative_to(own_tmp) and (path / "a.json").read_text() == '{"x": 1}'
        with pytest.raises(ValueError, match="stopped"), artifacts.fetched(uri, "the data") as path:
            downloaded.append(path)
            raise ValueError("stopped")
        with pytest.raises(PipelineError, match="cannot fetch the data from"):
            artifacts.fetched(f"{uri}/missing.json", "the data").__enter__()
    assert len(downloaded) == 2 and not any(path.exists() for path in downloaded)
    assert list(own_tmp.iterdir()) == []


def test_a_steps_output_is_moved_into_a_local_store_and_uploaded_to_another(tracking_uri, tmp_path):
    import mlflow

    import steps.lib.artifacts as artifacts

    def output(name: str) -> Path:
        folder = tmp_path / name
        (folder / "part").mkdir(parents=True)
        (folder / "a.parquet").write_bytes(b"rows")
        (folder / "part" / "b.json").write_text("{}")
        return folder

    with mlflow.start_run() as run:
        moved = output("moved")
        artifacts.publish_artifacts(moved, "data")
        with pytest.MonkeyPatch.context() as patch:  # as for a remote store: logged through MLflow
            patch.setattr(artifacts, "local_artifact_path", lambda artifact_uri: None)
            uploaded = output("uploaded")
            artifacts.publish_artifacts(uploaded, "copy")
    assert not [p for p in moved.rglob("*") if p.is_file()]  # moved, not copied
    assert (uploaded / "a.parquet").exists()
    client = mlflow.MlflowClient()
    for folder in ("data", "copy"):
        assert [f.path for f in client.list_artifacts(run.info.run_id, folder)] == [
            f"{folder}/a.parquet",
            f"{folder}/part",
        ]
        with artifacts.fetched(f"runs:/{run.info.run_id}/{folder}", "the output") as path:
            assert (path / "a.parquet").read_bytes() == b"rows" and (path / "part" / "b.json").read_text() == "{}"


def test_an_output_changed_after_its_run_is_refused_by_the_step_that_reads_it(tracking_uri, tmp_path):
    import mlflow

    from steps.lib.artifacts import fetched
    from steps.lib.signing import file_manifest, record_manifest, run_root

    source = tmp_path / "out"
    source.mkdir()
    (source / "train.parquet").write_text("rows")
    (source / "feature_spec.json").write_text("{}")
    with mlflow.start_run() as run:
        record_manifest(run_root("splits"), file_manifest(source))
        mlflow.log_artifacts(str(source), "splits")
    uri = f"runs:/{run.info.run_id}/splits"
    for read in (uri, f"{uri}/train.parquet", f"runs:/{run.info.run_id}"):
        with fetched(read, "the splits"):
            pass
    stored = Path(run.info.artifact_uri.removeprefix("file://")) / "splits" / "train.parquet"
    stored.write_text("other rows")
    for read in (uri, f"{uri}/train.parquet"):
        with pytest.raises(PipelineError) as raised, fetched(read, "the splits"):
            pass
        assert str(raised.value) == (
            f"the splits at '{read}' does not match its run's manifest (splits/train.parquet changed after the run "
            "finished); re-run the step that made it"
        )
    with fetched(f"{uri}/feature_spec.json", "the spec"):  # a file the change did not touch
        pass


@contextmanager
def redirecting(location: str) -> Iterator[str]:
    """http://127.0.0.1:<port>/data.csv answering 302 to `location`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with serving_on_loopback(Handler) as address:
        yield f"http://{address}/data.csv"


def test_a_redirect_is_followed_to_http_s_only_and_never_down_from_https(own_tmp):
    import urllib.request

    from steps.lib.tables import SafeRedirects

    with serving(CSV) as served, redirecting(served["url"]) as url:  # http to http: followed
        assert len(read_data(url)) == 2000
    with redirecting("ftp://127.0.0.1:1/data.csv?token=t0k") as url, pytest.raises(PipelineError) as raised:
        read_data(url)
    assert str(raised.value) == (
        f"'{url}' redirects to 'ftp://127.0.0.1:1/data.csv?token=***' (to ftp: only http(s) is followed); "
        "use the final https URL directly"
    )
    assert list(own_tmp.iterdir()) == []
    request = urllib.request.Request("https://data.example/x.csv")
    with pytest.raises(PipelineError, match=r"\(from https down to http: the data would travel unencrypted\)"):
        SafeRedirects("https://data.example/x.csv").redirect_request(
            request, None, 302, "Found", {}, "http://data.example/x"
        )


def test_a_table_written_for_the_steps_reads_back_as_it_was(tmp_path):
    frame = pd.DataFrame(
        {
            "Income ($)": [1.5, None, 3.25, 1.5],
            "seniority (years)": [1, 2, 3, 4],
            "city": ["a", None, "b", "a"],
            "class": pd.Categorical(["<=50K", ">50K", "<=50K", None]),
            "when": pd.to_datetime(["2024-01-01 00:00", None, "2024-03-01 10:00", "2024-04-01 00:00"]),
            "ok": [True, False, True, True],
        },
        index=[10, 11, 12, 13],  # a filtered frame's index: not written
    )
    write_parquet(frame, tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), frame.reset_index(drop=True))
    read = read_frame(tmp_path / "t.parquet")  # as the steps read it back: a block per column, not copied into one
    pd.testing.assert_frame_equal(read, frame.reset_index(drop=True))
    assert len(read._mgr.blocks) == len(frame.columns)
    chunk = pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0)
    columns = {chunk.column(i).path_in_schema: chunk.column(i) for i in range(chunk.num_columns)}
    dictionary = {name for name, column in columns.items() if column.dictionary_page_offset is not None}
    assert dictionary == {"city", "class"}  # text only: numbers and times are written plain
    assert all(column.statistics is None for column in columns.values())


def test_a_users_parquet_file_reads_as_pandas_reads_it_a_block_per_column(tmp_path):
    """load reads a user's Parquet file as every step reads a table: pandas' own result (a stored index, nullable
    integers), each column its own block; categories as their values and zoned times as UTC times, as MLflow's
    signatures take them (column_types.py)."""
    frame = pd.DataFrame(
        {
            "Income ($)": [1.5, None, 3.25],
            "x": [0.5, 1.5, 2.5],
            "visits": pd.array([1, None, 3], dtype="Int64"),
            "class": pd.Categorical(["<=50K", ">50K", None]),
            "when": pd.to_datetime(["2024-01-01", None, "2024-03-01"]).tz_localize("Europe/Paris"),
        },
        index=pd.Index(["a", "b", "c"], name="customer id"),
    )
    frame.to_parquet(tmp_path / "users.parquet")
    read = read_data(str(tmp_path / "users.parquet"))
    as_pandas_reads = pd.read_parquet(tmp_path / "users.parquet")
    plain = as_pandas_reads.assign(
        **{"class": pd.Series(["<=50K", ">50K", None], dtype="str", index=frame.index)},
        when=as_pandas_reads["when"].dt.tz_convert("UTC").dt.tz_localize(None),
    )
    pd.testing.assert_frame_equal(read, plain)
    pd.testing.assert_frame_equal(read.drop(columns=["class", "when"]), frame.drop(columns=["class", "when"]))
    assert read["when"].tolist()[0] == pd.Timestamp("2023-12-31 23:00")  # midnight in Paris
    assert len(read._mgr.blocks) == len(frame.columns)


def test_a_table_written_with_its_digest_is_listed_in_the_manifest_as_hashed_after(tmp_path):
    """The writer thread's digest of the file it wrote is the manifest's entry; the other files are hashed."""
    from steps.lib.signing import file_manifest, sha256_file
    from steps.lib.tables import write_parquet_digest

    folder = tmp_path / "data"
    folder.mkdir()
    digest = write_parquet_digest(pd.DataFrame({"x": [1.5, None], "y": ["a", "b"]}), folder / "raw.parquet")
    (folder / "meta.json").write_text("{}")
    assert digest == sha256_file(folder / "raw.parquet")
    assert file_manifest(folder, known={"raw.parquet": digest}) == file_manifest(folder)
    told = file_manifest(folder, known={"raw.parquet": "0" * 64})  # taken as given: not hashed again
    assert told == {"raw.parquet": "0" * 64, "meta.json": sha256_file(folder / "meta.json")}


def test_a_parquet_files_types_mlflow_refuses_are_read_plain(tmp_path):
    """Times with a time zone as UTC times, a categorical as its values, unsigned 64-bit integers as int64 (floats
    past int64), decimals as floats; a column without a name as pandas names an empty CSV header, in batches too."""
    import decimal

    from steps.lib.tables import read_batches

    table = pa.table(
        {
            "seen at": pa.array(pd.to_datetime(["2024-01-01 01:00", None]).tz_localize("Europe/Berlin")),
            "region": pa.array(["north", None]).dictionary_encode(),
            "level": pd.Categorical([3, None]),
            "count": pa.array([7, 9], pa.uint64()),
            "huge": pa.array([2**63 + 5, 1], pa.uint64()),
            "price": pa.array([decimal.Decimal("12.50"), None], pa.decimal128(10, 2)),
            "": [1.5, 2.5],
        }
    )
    pq.write_table(table, tmp_path / "types.parquet")
    frame = read_data(str(tmp_path / "types.parquet"))
    assert list(frame.columns) == ["seen at", "region", "level", "count", "huge", "price", "Unnamed: 6"]
    assert frame["seen at"].tolist()[0] == pd.Timestamp("2024-01-01 00:00") and frame["seen at"].dt.tz is None
    assert frame["region"].tolist()[0] == "north" and pd.api.types.is_string_dtype(frame["region"])
    assert frame["level"].dtype == "float64" and frame["level"].tolist()[0] == 3.0
    assert frame["count"].dtype == "int64" and frame["huge"].dtype == "float64"
    nullable = pd.DataFrame({"n": pd.array([1, None], dtype="UInt64"), "y": ["a", "b"]})
    nullable.to_parquet(tmp_path / "nullable.parquet")
    assert str(read_data(str(tmp_path / "nullable.parquet"))["n"].dtype) == "Int64"
    assert frame["price"].dtype == "float64" and frame["price"].tolist()[0] == 12.5
    [batch] = list(read_batches(str(tmp_path / "types.parquet"), {}, 10))
    assert list(batch.columns) == list(frame.columns)
    pq.write_table(pa.table({"": [1], "Unnamed: 0": [2]}), tmp_path / "clash.parquet")
    with pytest.raises(PipelineError, match=re.escape("has a column without a name and another named 'Unnamed: 0'")):
        read_data(str(tmp_path / "clash.parquet"))
