"""Input formats (Parquet, CSV, NDJSON, Arrow IPC file and stream), hive
columns, empty shards and how INPUT arguments become shards. Predictions are
compared with onnxruntime on the rows as pyarrow itself reads each file."""

from __future__ import annotations

import gzip
import os
import shutil

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.json as pajson
import pyarrow.parquet as pq
import pytest

import batchscore
from batchscore.sources import discover
from tests.helpers import Data, assert_predictions, output_files, read_output, reference

SIZES = [5, 8, 3]


def read_with_pyarrow(path: str, fmt: str) -> pa.Table:
    """The file as pyarrow's own readers see it."""
    if fmt == "parquet":
        return pq.read_table(path)
    if fmt == "csv":
        return pacsv.read_csv(path)
    if fmt == "ndjson":
        return pajson.read_json(path)
    if fmt == "ipc_file":
        return feather.read_table(path)
    with pa.OSFile(path) as fh:
        return pa.ipc.open_stream(fh).read_all()


@pytest.mark.parametrize("fmt", Data.FORMATS)
@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_each_format_scores_like_onnxruntime(data, model, fmt, batch_size):
    folder, _ = data.shards("in", SIZES, fmt)
    files = sorted(os.listdir(folder))
    source = pa.concat_tables(
        [read_with_pyarrow(os.path.join(folder, f), fmt).select(["id", "f0", "f1", "f2"]) for f in files]
    )
    summary = batchscore.score(folder, model, "out", batch_size=batch_size, quiet=True)

    assert summary.rows_written == 16
    assert output_files("out") == ["part-000.parquet", "part-001.parquet", "part-002.parquet"]
    assert_predictions(read_output("out"), source, reference(model, source))
    start = 0
    for i, n in enumerate(SIZES):
        assert pq.read_table(f"out/part-{i:03d}.parquet").column("id").to_pylist() == list(range(start, start + n))
        start += n


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_text_formats_keep_their_inferred_column_types(data, model, fmt):
    folder, _ = data.shards("in", [4], fmt)
    path = os.path.join(folder, os.listdir(folder)[0])
    batchscore.score(folder, model, "out.parquet", keep="id,name,count", quiet=True)
    expected = read_with_pyarrow(path, fmt).schema
    out = pq.read_schema("out.parquet")
    for name in ("id", "name", "count"):
        assert out.field(name).type == expected.field(name).type


def test_mixed_formats_in_one_run(data, model):
    tables = [data.table(3, 0), data.table(4, 3), data.table(2, 7), data.table(5, 9)]
    data.write("in/a.parquet", tables[0])
    data.write("in/b.csv", tables[1], "csv")
    data.write("in/c.ndjson", tables[2], "ndjson")
    data.write("in/d.arrow", tables[3], "ipc_file")
    batchscore.score(str(data.root / "in"), model, "out", batch_size=3, quiet=True)
    assert output_files("out") == ["a.parquet", "b.parquet", "c.parquet", "d.parquet"]
    src = pa.concat_tables([t.select(["id", "f0", "f1", "f2"]) for t in tables])
    assert_predictions(read_output("out"), src, reference(model, src))


def test_compressed_csv_and_tsv(data, model):
    t1, t2 = data.table(4, 0), data.table(3, 4)
    plain = data.write("tmp/a.csv", t1, "csv")
    with open(plain, "rb") as src, gzip.open(data.path("in/a.csv.gz"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    pacsv.write_csv(t2, data.path("in/b.tsv"), pacsv.WriteOptions(delimiter="\t"))
    batchscore.score(str(data.root / "in"), model, "out", quiet=True)
    assert output_files("out") == ["a.parquet", "b.parquet"]
    src = pa.concat_tables([t1, t2])
    assert_predictions(read_output("out"), src, reference(model, src))


def test_input_format_flag_reads_other_extensions(data, model):
    t = data.table(5)
    p = data.write("rows.txt", t, "csv")
    batchscore.score(p, model, "out", input_format="csv", quiet=True)
    assert output_files("out") == ["rows.txt.parquet"]  # only known extensions are replaced
    assert_predictions(read_output("out"), t, reference(model, t))


def test_ipc_stream_and_file_with_many_record_batches(data, model):
    t = data.table(23)
    a = data.write("in/a.arrow", t, "ipc_file", chunk=2)
    b = data.write("in/b.ipc", data.table(9, 23), "ipc_stream", chunk=1)
    summary = batchscore.score([a, b], model, "out", batch_size=4, quiet=True)
    assert summary.rows_written == 32
    src = pa.concat_tables([t, data.table(9, 23)])
    assert_predictions(read_output("out"), src, reference(model, src))


def test_compressed_ndjson(data, model):
    t = data.table(4)
    plain = data.write("tmp/a.ndjson", t, "ndjson")
    with open(plain, "rb") as src, gzip.open(data.path("in/a.ndjson.gz"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    batchscore.score(str(data.root / "in"), model, "out", quiet=True)
    assert output_files("out") == ["a.parquet"]
    assert_predictions(read_output("out"), t, reference(model, t))


def test_input_format_flag_takes_every_file_of_a_directory(data, model):
    data.write("in/a.data", data.table(3, 0), "csv")
    data.write("in/b.txt", data.table(3, 3), "csv")
    data.write("in/.c.txt", data.table(3, 6), "csv")
    summary = batchscore.score(str(data.root / "in"), model, "out", input_format="csv", quiet=True)
    assert summary.rows_written == 6
    assert output_files("out") == ["a.data.parquet", "b.txt.parquet"]


def test_int64_in_one_shard_and_double_in_another_is_read_as_double(data, model):
    a = data.table(3, 0)
    a = a.set_column(a.schema.get_field_index("f0"), "f0", pa.array([1, 2, 3], pa.int64()))
    b = data.table(3, 3)
    data.write("in/a.parquet", a)
    data.write("in/b.parquet", b)
    batchscore.score(str(data.root / "in"), model, "out.parquet", keep="id,f0", quiet=True)
    out = pq.read_table("out.parquet")
    assert out.schema.field("f0").type == pa.float64()
    assert out.column("f0").to_pylist()[:3] == [1.0, 2.0, 3.0]
    src = pa.concat_tables([a.set_column(4, "f0", a.column("f0").cast(pa.float64())), b])
    assert_predictions(out, src, reference(model, src))


def test_a_column_missing_from_some_shards_is_not_kept(data, model):
    data.write("in/a.parquet", data.table(3, 0).append_column("extra", pa.array(["p", "q", "r"])))
    data.write("in/b.parquet", data.table(3, 3))
    summary = batchscore.score(str(data.root / "in"), model, "out.parquet", quiet=True)
    assert summary.warnings == ["column(s) extra are missing from some shards and are not kept"]
    assert "extra" not in pq.read_schema("out.parquet").names


# -- hive columns ------------------------------------------------------------------------------
def _hive(data) -> tuple[str, dict[str, pa.Table]]:
    parts = {
        "day=2026-12-01/region=eu/part-0.parquet": data.table(3, 0),
        "day=2026-12-01/region=us/part-0.parquet": data.table(4, 3),
        "day=2026-12-02/region=eu/part-0.parquet": data.table(2, 7),
    }
    for rel, t in parts.items():
        data.write(f"hive/{rel}", t)
    return str(data.root / "hive"), parts


def test_hive_folders_stay_folders_in_a_directory_output(data, model):
    folder, parts = _hive(data)
    summary = batchscore.score(folder, model, "out", quiet=True)
    assert summary.keep == ["id", "name", "ts", "count", "day", "region"]
    assert output_files("out") == sorted(parts)
    for rel, t in parts.items():
        out = pq.read_table(os.path.join("out", rel))
        assert out.column_names == ["id", "name", "ts", "count", "score"]
        assert_predictions(out, t, reference(model, t))
    # Readers that infer partitions see each column once.
    ds = pq.read_table("out", partitioning="hive")
    assert sorted(ds.column_names) == sorted(["id", "name", "ts", "count", "score", "day", "region"])


def test_hive_folders_become_columns_in_a_single_file(data, model):
    folder, parts = _hive(data)
    batchscore.score(folder, model, "all.parquet", quiet=True)
    out = pq.read_table("all.parquet")
    assert out.schema.field("day").type == pa.string()
    assert out.schema.field("region").type == pa.string()
    assert out.column("day").to_pylist() == ["2026-12-01"] * 7 + ["2026-12-02"] * 2
    assert out.column("region").to_pylist() == ["eu"] * 3 + ["us"] * 4 + ["eu"] * 2
    src = pa.concat_tables(parts.values())
    assert_predictions(out, src, reference(model, src))


def test_integer_hive_values_are_int64_and_usable_in_where(data, model):
    for shard in (1, 2, 3):
        data.write(f"hive/shard={shard}/a.parquet", data.table(4, 4 * (shard - 1)))
    summary = batchscore.score(str(data.root / "hive"), model, "out.parquet", where="shard >= 2", quiet=True)
    out = pq.read_table("out.parquet")
    assert out.schema.field("shard").type == pa.int64()
    assert out.column("shard").to_pylist() == [2] * 4 + [3] * 4
    assert out.column("id").to_pylist() == list(range(4, 12))
    assert summary.rows_filtered == 4


def test_hive_column_as_a_feature(data, model):
    for k in (1, 2):
        data.write(f"hive/k={k}/a.parquet", data.table(3, 3 * (k - 1)))
    batchscore.score(str(data.root / "hive"), model, "out.parquet", features="f0,f1,k", keep="id,k", quiet=True)
    out = pq.read_table("out.parquet")
    src = pa.concat_tables([data.table(3, 0), data.table(3, 3)]).append_column("k", pa.array([1] * 3 + [2] * 3))
    assert_predictions(out, src, reference(model, src, ["f0", "f1", "k"]))


def test_glob_over_hive_folders_keeps_the_partition_values(data, model, cli):
    for day in ("2026-12-01", "2026-12-02"):
        data.write(f"hive/day={day}/part-0.parquet", data.table(2))
    cli.run(f"{data.root}/hive/day=*/*.parquet", "--model", model, "--output", "scored", "--quiet")
    out = pq.read_table("scored", partitioning="hive")
    assert sorted(out.column("day").to_pylist()) == ["2026-12-01"] * 2 + ["2026-12-02"] * 2


# -- empty shards -----------------------------------------------------------------------------------
def test_empty_shards_of_every_kind(data, model):
    t1, t2 = data.table(4, 0), data.table(5, 4)
    data.write("in/a.parquet", t1)
    data.write("in/b.parquet", t1.slice(0, 0))  # 0 rows, with a schema
    data.path("in/c.csv").write_bytes(b"")  # 0 bytes
    pacsv.write_csv(t1.slice(0, 0), data.path("in/d.csv"))  # a header only
    data.path("in/e.ndjson").write_bytes(b"")
    data.write("in/f.csv", t2, "csv")
    summary = batchscore.score(str(data.root / "in"), model, "out", batch_size=3, quiet=True)

    assert summary.shards_done == 6
    assert summary.rows_written == 9
    assert output_files("out") == [f"{c}.parquet" for c in "abcdef"]
    schema = pq.read_schema("out/a.parquet")
    for name in "bcde":
        empty = pq.read_table(f"out/{name}.parquet")
        assert empty.num_rows == 0
        assert empty.schema == schema
    src = pa.concat_tables([t1.select(["id", "f0", "f1", "f2"]), pacsv.read_csv(data.path("in/f.csv")).select(["id", "f0", "f1", "f2"])])
    assert_predictions(read_output("out"), src, reference(model, src))


def test_only_empty_parquet_shards_give_empty_outputs(data, model):
    t = data.table(0)
    data.write("in/a.parquet", t)
    data.write("in/b.parquet", t)
    summary = batchscore.score(str(data.root / "in"), model, "out", quiet=True)
    assert summary.status == "ok"
    assert (summary.rows_written, summary.shards_done, summary.shards_empty) == (0, 2, 2)
    assert [pq.read_table(f"out/{f}").num_rows for f in output_files("out")] == [0, 0]
    assert os.path.exists("out/_SUCCESS")


def test_header_only_csv_alone(data, model):
    # No rows, so no column types: the features must be named.
    pacsv.write_csv(data.table(0), data.path("in/a.csv"))
    summary = batchscore.score(str(data.root / "in"), model, "out", features="f*", quiet=True)
    assert summary.rows_written == 0
    assert pq.read_table("out/a.parquet").num_rows == 0


def test_empty_shard_in_a_single_file_output(data, model):
    folder, table = data.shards("in", [0, 3, 0, 2, 0])
    batchscore.score(folder, model, "all.parquet", batch_size=2, quiet=True)
    out = pq.read_table("all.parquet")
    assert out.column("id").to_pylist() == list(range(5))
    assert_predictions(out, table, reference(model, table))


# -- which files are shards -----------------------------------------------------------------------
def test_hidden_and_marker_files_are_skipped(data, model):
    folder, table = data.shards("in", [3, 2])
    data.write("in/.hidden.parquet", data.table(9, 100))
    data.write("in/_tmp/part.parquet", data.table(9, 100))
    data.path("in/_SUCCESS").write_bytes(b"")
    data.path("in/notes.txt").write_text("not data")
    batchscore.score(folder, model, "out", quiet=True)
    assert output_files("out") == ["part-000.parquet", "part-001.parquet"]
    assert_predictions(read_output("out"), table, reference(model, table))


def test_directory_output_mirrors_nested_folders(data, model):
    data.write("in/a/b/one.parquet", data.table(2, 0))
    data.write("in/a/two.csv", data.table(2, 2), "csv")
    data.write("in/three.ndjson", data.table(2, 4), "ndjson")
    batchscore.score(str(data.root / "in"), model, "out", quiet=True)
    assert output_files("out") == ["a/b/one.parquet", "a/two.parquet", "three.parquet"]


def test_file_and_glob_arguments_give_file_names(data, model):
    a = data.write("x/deep/one.parquet", data.table(2, 0))
    data.write("y/two.csv", data.table(2, 2), "csv")
    data.write("y/three.csv", data.table(2, 4), "csv")
    batchscore.score([a, f"{data.root}/y/*.csv"], model, "out", quiet=True)
    assert output_files("out") == ["one.parquet", "three.parquet", "two.parquet"]
    ids = [pq.read_table(f"out/{f}").column("id").to_pylist() for f in ("one.parquet", "three.parquet", "two.parquet")]
    assert ids == [[0, 1], [4, 5], [2, 3]]


def test_discover_order_and_duplicates(data):
    a = data.write("in/b.parquet", data.table(1))
    data.write("in/a.parquet", data.table(1))
    shards = discover([str(data.root / "in"), a])
    assert [os.path.basename(s.path) for s in shards] == ["a.parquet", "b.parquet"]  # b is read once
    assert [s.index for s in shards] == [0, 1]
    assert [s.format for s in shards] == ["parquet", "parquet"]


def test_discover_reads_key_value_folders(data):
    folder, parts = _hive(data)
    shards = discover([folder])
    assert [s.output_name for s in shards] == sorted(parts)
    assert [s.partitions for s in shards] == [
        (("day", "2026-12-01"), ("region", "eu")),
        (("day", "2026-12-01"), ("region", "us")),
        (("day", "2026-12-02"), ("region", "eu")),
    ]
