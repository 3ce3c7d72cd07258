"""Run folders: shards, fingerprints, skip, invalidation and exact resume."""

import pytest

from constitutional.artifacts import StageDir, read_output, run_sharded
from constitutional.jsonio import write_atomic


def _process(calls):
    def process(chunk):
        calls.append(list(chunk))
        return [{"x": x, "sq": x * x} for x in chunk]
    return process


def test_complete_run_then_skip(tmp_path):
    stage = StageDir(tmp_path, "s")
    calls = []
    r = run_sharded(stage, config={"a": 1}, inputs={"f": "h"}, items=list(range(7)),
                    chunk_size=3, process=_process(calls))
    assert (r.rows, r.skipped) == (7, False)
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]
    assert [row["x"] for row in read_output(stage.output)] == list(range(7))
    m = stage.manifest()
    assert m["status"] == "complete" and m["rows"] == 7 and "versions" in m
    calls.clear()
    r2 = run_sharded(stage, config={"a": 1}, inputs={"f": "h"}, items=list(range(7)),
                     chunk_size=3, process=_process(calls))
    assert r2.skipped and calls == []


def test_model_stage_reused_whole_shows_no_bar_and_loads_no_model(tmp_path, monkeypatch):
    from contextlib import contextmanager

    import constitutional.progress as progress
    from constitutional.artifacts import run_model_stage

    bars, loads = [], []

    @contextmanager
    def spy_bar(description, total, unit="rows"):
        bar = {"total": total, "advanced": 0}
        bars.append(bar)
        yield lambda n=1: bar.update(advanced=bar["advanced"] + n)
    monkeypatch.setattr(progress, "progress_bar", spy_bar)

    def run():
        def work(backend, chunk, advance):
            advance(len(chunk))
            return [{"x": x} for x in chunk]
        return run_model_stage(StageDir(tmp_path, "s"), config={"a": 1}, inputs={},
                               items=list(range(5)), chunk_size=2,
                               get_backend=lambda: loads.append(1) or "model", work=work,
                               total=5,
                               unit="rows", log=lambda m: None)

    first = run()
    assert not first.skipped and bars == [{"total": 5, "advanced": 5}] and loads == [1]
    (tmp_path / "s" / "shards" / "00002.jsonl").unlink()     # the last chunk left to redo
    manifest = StageDir(tmp_path, "s").manifest()
    StageDir(tmp_path, "s").write_manifest({**manifest, "status": "running"})
    resumed = run()
    assert not resumed.skipped and bars[1] == {"total": 5, "advanced": 5} and loads == [1, 1]
    again = run()
    assert again.skipped and again.rows == 5 and len(bars) == 2 and loads == [1, 1]


def test_changed_config_or_input_recomputes(tmp_path):
    stage = StageDir(tmp_path, "s")
    run_sharded(stage, config={"a": 1}, inputs={"f": "h"}, items=[1, 2], chunk_size=1,
                process=_process([]))
    for config, inputs in (({"a": 2}, {"f": "h"}), ({"a": 2}, {"f": "changed"})):
        calls = []
        r = run_sharded(stage, config=config, inputs=inputs, items=[1, 2], chunk_size=1,
                        process=_process(calls), log=lambda m: None)
        assert not r.skipped and calls == [[1], [2]]


def test_resume_skips_finished_shards_and_matches_unbroken_run(tmp_path):
    items = list(range(10))
    unbroken = StageDir(tmp_path / "a", "s")
    run_sharded(unbroken, config={}, inputs={}, items=items, chunk_size=4, process=_process([]))

    broken = StageDir(tmp_path / "b", "s")

    def dies_on_second_chunk(chunk):
        if chunk[0] == 4:
            raise KeyboardInterrupt  # as a kill would, between shards
        return _process([])(chunk)
    with pytest.raises(KeyboardInterrupt):
        run_sharded(broken, config={}, inputs={}, items=items, chunk_size=4,
                    process=dies_on_second_chunk)
    assert broken.manifest()["status"] == "running" and not broken.output.exists()
    calls = []
    run_sharded(broken, config={}, inputs={}, items=items, chunk_size=4, process=_process(calls))
    assert calls == [[4, 5, 6, 7], [8, 9]]
    assert broken.output.read_bytes() == unbroken.output.read_bytes()


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "f.json"
    write_atomic(target, "old")
    with pytest.raises(TypeError):
        write_atomic(target, 12345)  # not str/bytes: fails mid-write
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
