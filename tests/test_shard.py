"""shard=i/n: one run split across processes; the shards' files merge into the unsharded run's files."""
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import harness.runner as runner
from harness.shard import Shard, merge_shards, parse_shard, shard_records
from svdprune.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# metrics that describe the process that wrote them (timings, questions answered by it), not the run's result
PER_PROCESS = {"wall_time_s", "generation_time_s", "tokens_per_s", "questions_per_s", "newly_answered"}


def make_cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def cfg(shapes_folder, out, *extra):
    return make_cfg(["model=tiny", "model.vision_layers=3", "model.text_layers=4", "dataset=local", f"dataset.path={shapes_folder}", f"output_dir={out}",
                     "max_new_tokens=6", "progress=false", "method=svd", "budget=16", "limit=5", *extra])


@pytest.fixture(scope="module")
def unsharded(shapes_folder, tmp_path_factory):
    """The same run without shards: its run folder, predictions.jsonl lines and metrics."""
    out = tmp_path_factory.mktemp("unsharded")
    runner.run(cfg(shapes_folder, out))
    return run_files(out)


def run_files(out: Path) -> tuple[Path, list[str], dict]:
    [folder] = list(out.glob("local/svd/*"))
    metrics = json.loads((folder / "metrics.json").read_text())
    return folder, (folder / "predictions.jsonl").read_text().splitlines(), metrics


def test_parse_shard():
    assert parse_shard(None) is None
    assert parse_shard("1/3") == Shard(1, 3) and str(Shard(1, 3)) == "1/3"
    for bad in ("2/2", "-1/2", "1", "a/b", "1/0", "0/2/3"):
        with pytest.raises(UserError, match=f"shard={bad!r} must be i/n"):
            parse_shard(bad)


@pytest.mark.parametrize("n, count", [(11, 2), (11, 3), (2, 3), (0, 2)])
def test_shard_blocks_partition_the_questions(n, count):
    records = list(range(n))
    blocks = [shard_records(records, Shard(i, count)) for i in range(count)]
    assert sum(blocks, []) == records
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_two_shards_merge_into_the_unsharded_run(shapes_folder, tmp_path, capsys, unsharded):
    first = runner.run(cfg(shapes_folder, tmp_path / "two", "shard=1/2"))  # either order: here the last block first
    folder = next((tmp_path / "two").glob("local/svd/*"))
    assert first == {"shard": "1/2", "n": 3, "newly_answered": 3, "run_folder": str(folder)}
    assert not (folder / "predictions.jsonl").exists() and not (folder / "metrics.json").exists()
    assert len((folder / "shard-1-of-2" / "predictions.jsonl").read_text().splitlines()) == 3
    assert "shard 1/2 answered its 3 questions" in capsys.readouterr().out

    runner.run(cfg(shapes_folder, tmp_path / "two", "shard=0/2"))  # completes the run: merges, writes metrics
    one_folder, one_lines, one_metrics = unsharded
    two_folder, two_lines, two_metrics = run_files(tmp_path / "two")
    assert two_folder.name == one_folder.name  # the shard setting is not part of the run's identity
    assert two_lines == one_lines  # question for question, byte for byte, in question order
    assert {k: v for k, v in two_metrics.items() if k not in PER_PROCESS} == \
        {k: v for k, v in one_metrics.items() if k not in PER_PROCESS}
    assert sorted(p.name for p in two_folder.iterdir()) == ["metrics.json", "predictions.jsonl"]

    # rerunning a shard (or the unsharded command) after the merge answers nothing new
    again = runner.run(cfg(shapes_folder, tmp_path / "two", "shard=1/2"))
    assert again["newly_answered"] == 0 and (two_folder / "predictions.jsonl").read_text().splitlines() == one_lines


def test_interrupted_shard_resumes_from_its_own_file(shapes_folder, tmp_path, unsharded):
    """A shard killed mid-run (half a line on disk) continues from its shard file; nothing is answered twice."""
    runner.run(cfg(shapes_folder, tmp_path / "two", "shard=0/2"))
    folder = next((tmp_path / "two").glob("local/svd/*"))
    shard_file = folder / "shard-0-of-2" / "predictions.jsonl"
    lines = shard_file.read_text().splitlines()
    assert len(lines) == 2
    shard_file.write_text(lines[0] + "\n" + lines[1][:15])  # as if killed while writing the second line
    resumed = runner.run(cfg(shapes_folder, tmp_path / "two", "shard=0/2"))
    assert resumed["newly_answered"] == 1
    runner.run(cfg(shapes_folder, tmp_path / "two", "shard=1/2"))
    assert (folder / "predictions.jsonl").read_text().splitlines() == unsharded[1]


def test_merge_keeps_rows_already_in_predictions(tmp_path):
    """Rows the run's predictions.jsonl already has stay first and are not duplicated."""
    def row(qid):
        return {"question_id": qid, "prediction": qid.upper(), "config_hash": "h"}

    (tmp_path / "shard-0-of-2").mkdir()
    (tmp_path / "shard-1-of-2").mkdir()
    (tmp_path / "predictions.jsonl").write_text(json.dumps(row("c")) + "\n")
    (tmp_path / "shard-0-of-2" / "predictions.jsonl").write_text(json.dumps(row("a")) + "\n")
    assert merge_shards(tmp_path, ["a", "b", "c"], "h", 2) is None  # b missing: nothing changes
    assert (tmp_path / "shard-0-of-2").is_dir()
    (tmp_path / "shard-1-of-2" / "predictions.jsonl").write_text(
        json.dumps({**row("z"), "config_hash": "other"}) + "\n" + json.dumps(row("b")) + "\n" + json.dumps(row("c")) + "\n")
    merged = merge_shards(tmp_path, ["a", "b", "c"], "h", 2)
    assert [r["question_id"] for r in merged] == ["a", "b", "c"]
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert lines == [row("c"), row("a"), row("b")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl"]


def test_bad_shard_is_a_one_line_error_before_anything_is_written(shapes_folder, tmp_path):
    with pytest.raises(UserError, match=r"shard='3/2' must be i/n"):
        runner.run(cfg(shapes_folder, tmp_path, "shard=3/2"))
    assert not any(tmp_path.iterdir())
