"""Issue 14 through the CLI on tiny synthetic data: episode files named by the data's identity, --force,
`episodes import` / `episodes export`, `eval --ways 5 10` and `--episode-file`, `datasets`, and
`finetune`'s line per epoch."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fewshot_bench.cli import main
from fewshot_bench.data import class_structure, load_split
from fewshot_bench.episodes import EpisodeSet, EpisodeSpec, default_filename, structure_identity

import synth

SMALL = ["--ways", "2", "--shots", "1", "--queries", "2", "--episodes", "6"]


@pytest.fixture()
def world(tmp_path, monkeypatch):
    """Two image folders that share the dataset name image-folder but not their pixels (birds 12 px,
    cars 10 px, 3 classes x 6 images per split), and CIFAR-FS pickles (20 test classes x 3 images)."""
    monkeypatch.setenv("FEWSHOT_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    birds = synth.write_image_folder(tmp_path / "birds", style="split-folders", per_class=6, size=12)
    cars = synth.write_image_folder(tmp_path / "cars", style="csv", per_class=6, size=10)
    cifar = tmp_path / "cifar"
    synth.write_cifar_pickle(cifar, "cifar-fs", splits=("test",))
    return {"root": tmp_path, "birds": birds, "cars": cars, "cifar": cifar, "eps": tmp_path / "eps"}


def error_line(capsys, *fragments) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, err
    for frag in fragments:
        assert frag in lines[0], lines[0]
    return lines[0]


def draw(world, folder, *extra):
    """``episodes`` on an image folder, decoded at 12 px (``extra`` may give another --image-size)."""
    return main(["episodes", "--dataset", "image-folder", "--data-root", str(world[folder]), "--image-size", "12",
                 *SMALL, "--out-dir", str(world["eps"]), *extra])


# --------------------------------------------------------------------------- identity and --force
def test_two_image_folders_get_two_files_and_nothing_is_overwritten_silently(world, capsys):
    assert draw(world, "birds") == 0 and draw(world, "cars") == 0
    files = sorted(p.name for p in world["eps"].iterdir())
    assert len(files) == 2 and all(f.startswith("image-folder_test_data-") for f in files), files
    fingerprints = {load_split("image-folder", "test", world[f], image_size=12, progress=False).fingerprint[:12]
                    for f in ("birds", "cars")}
    assert {f.split("_")[2].removeprefix("data-") for f in files} == fingerprints
    capsys.readouterr()
    assert draw(world, "birds") == 0  # the same episodes again: left as they are
    assert capsys.readouterr().out.startswith("unchanged ")
    birds_file = next(p for p in world["eps"].iterdir() if p.name.split("_")[2][5:] in
                      load_split("image-folder", "test", world["birds"], image_size=12, progress=False).fingerprint)
    assert draw(world, "birds", "--seed", "1") == 0  # another seed is another name
    assert len(list(world["eps"].iterdir())) == 3
    other = EpisodeSet.load(birds_file)
    tampered = EpisodeSet(other.spec, other.dataset, other.split, other.class_names, other.class_sizes,
                          other.classes[::-1].copy(), other.support, other.query, other.data_fingerprint)
    birds_file.write_bytes(tampered.to_bytes())
    capsys.readouterr()
    assert draw(world, "birds") == 1
    error_line(capsys, birds_file.name, "already exists and holds other episodes", "add --force")
    assert birds_file.read_bytes() == tampered.to_bytes()
    assert draw(world, "birds", "--force") == 0 and capsys.readouterr().out.startswith("replaced ")
    assert birds_file.read_bytes() == other.to_bytes()


def test_episodes_without_dataset_or_action_says_what_to_give(capsys):
    assert main(["episodes"]) == 1
    error_line(capsys, "--dataset", "episodes import", "episodes export")


# --------------------------------------------------------------------------- import / export
def test_export_by_name_import_back_and_evaluate_on_it(world, capsys):
    assert draw(world, "cars", "--image-size", "16") == 0
    drawn = next(world["eps"].iterdir())
    listing = world["root"] / "cars.csv"
    assert main(["episodes", "export", str(drawn), "--by", "name", "--data-root", str(world["cars"]),
                 "--image-size", "16", "--out", str(listing)]) == 0
    rows = pd.read_csv(listing)
    assert list(rows.columns) == ["episode", "role", "class", "file"] and len(rows) == 6 * 2 * (1 + 2)
    assert rows["file"].str.startswith("images/").all()  # paths under --data-root (the split-csv layout)
    imported = world["root"] / "cars.episodes.zip"
    capsys.readouterr()
    assert main(["episodes", "import", str(listing), "--dataset", "image-folder", "--data-root", str(world["cars"]),
                 "--image-size", "16", "--out", str(imported)]) == 0
    out = capsys.readouterr().out
    assert "6 episodes, 2-way 1-shot 2-query" in out and f"--episode-file {imported}" in out
    a, b = EpisodeSet.load(drawn), EpisodeSet.load(imported)
    for name in ("classes", "support", "query"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert b.data_fingerprint == a.data_fingerprint and b.origin["file"] == "cars.csv" and b.origin["by"] == "name"
    run = world["root"] / "run"
    assert main(["eval", "--checkpoint", "none", "--arch", "conv4", "--dataset", "image-folder", "--data-root",
                 str(world["cars"]), "--image-size", "16", "--transform", "unit", "--episode-file", str(imported),
                 "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert [(r["ways"], r["shots"], r["queries"], r["n_episodes"]) for r in summary["results"]] == [(2, 1, 2, 6)]
    assert summary["episode_files"][0]["sha256"] == b.sha256()
    assert summary["config"]["episode_files"] == [str(imported)]
    # the same list by bare file names (unique in the split) reads back the same episodes
    rows["file"] = rows["file"].str.rsplit("/", n=1).str[-1]
    rows.drop(columns="class").to_csv(listing, index=False)
    assert main(["episodes", "import", str(listing), "--dataset", "image-folder", "--data-root", str(world["cars"]),
                 "--image-size", "16", "--out", str(world["root"] / "bare.episodes.zip")]) == 0
    np.testing.assert_array_equal(EpisodeSet.load(world["root"] / "bare.episodes.zip").support, a.support)


def test_json_by_name_round_trip_on_split_folders(world, capsys):
    assert draw(world, "birds") == 0
    drawn = next(world["eps"].iterdir())
    listing = world["root"] / "birds.json"
    assert main(["episodes", "export", str(drawn), "--format", "json", "--by", "name", "--data-root",
                 str(world["birds"]), "--image-size", "12", "--out", str(listing)]) == 0
    doc = json.loads(listing.read_text())
    assert doc["by"] == "name" and len(doc["episodes"]) == 6
    assert doc["episodes"][0]["support"][0][0].startswith("test/")
    out = world["root"] / "birds.episodes.zip"
    assert main(["episodes", "import", str(listing), "--dataset", "image-folder", "--data-root", str(world["birds"]),
                 "--image-size", "12", "--out", str(out)]) == 0
    np.testing.assert_array_equal(EpisodeSet.load(out).query, EpisodeSet.load(drawn).query)


def _write_list(path, rows):
    path.write_text("episode,role,class,file\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("rows, fragments", [
    ([(0, "support", "cat", "nope.png")], ["row 2: no image named 'nope.png'", "give its path under --data-root"]),
    ([(0, "support", "dog", "test/cat/cat_test_0.png")], ["row 2: test/cat/cat_test_0.png is an image of class cat, "
                                                          "not dog"]),
    ([(0, "support", "cat", "cat_test_0.png"), (0, "query", "cat", "test/cat/cat_test_0.png")],
     ["row 3:", "already in episode 0", "row 2, support", "support and query must not share an image"]),
    ([(0, "support", "cat", "cat_test_0.png"), (0, "query", "cat", "cat_test_1.png"),
      (1, "support", "cat", "cat_test_0.png"), (1, "support", "dog", "dog_test_0.png"),
      (1, "query", "cat", "cat_test_1.png"), (1, "query", "dog", "dog_test_1.png")],
     ["row 4: episode 1 has 2 classes, but episode 0 has 1", "(ways)"]),
    ([(0, "support", "cat", "cat_test_0.png"), (0, "query", "cat", "cat_test_1.png"),
      (1, "support", "cat", "cat_test_0.png"), (1, "support", "cat", "cat_test_2.png"),
      (1, "query", "cat", "cat_test_1.png")],
     ["row 4: episode 1, class cat has 2 support images, but episode 0's classes have 1", "(shots)"]),
])
def test_import_refuses_bad_lists_with_one_line_naming_file_and_row(world, capsys, rows, fragments):
    listing = _write_list(world["root"] / "bad.csv", rows)
    out = world["root"] / "x.episodes.zip"
    assert main(["episodes", "import", str(listing), "--dataset", "image-folder", "--data-root", str(world["birds"]),
                 "--image-size", "12", "--out", str(out)]) == 1
    error_line(capsys, str(listing), *fragments)
    assert not out.exists()


def test_import_by_index_needs_no_data_for_a_known_structure(world, capsys):
    names, sizes = class_structure("cifar-fs", "test")
    shipped = EpisodeSet.draw(EpisodeSpec(5, 1, 15, 4), dataset="cifar-fs", split="test", class_names=names,
                              class_sizes=sizes).save(world["root"] / "c.episodes.zip")
    listing = world["root"] / "c.json"
    assert main(["episodes", "export", str(shipped), "--format", "json", "--out", str(listing)]) == 0
    out = world["root"] / "back.episodes.zip"
    assert main(["episodes", "import", str(listing), "--dataset", "cifar-fs", "--out", str(out)]) == 0
    back = EpisodeSet.load(out)
    assert back.data_fingerprint is None and back.identity == structure_identity(names, sizes)
    np.testing.assert_array_equal(back.support, EpisodeSet.load(shipped).support)
    capsys.readouterr()
    assert main(["episodes", "import", str(listing), "--dataset", "cifar-fs", "--out", str(out)]) == 0  # same bytes
    assert main(["episodes", "import", str(listing), "--dataset", "fc100", "--out", str(out)]) == 1
    error_line(capsys, "c.json episode 0 support[0][0]: class", "is not one of the 20 classes of fc100/test")


def test_file_names_need_data_of_image_files(world, capsys):
    listing = _write_list(world["root"] / "names.csv", [(0, "support", "x", "a.png")])
    assert main(["episodes", "import", str(listing), "--dataset", "cifar-fs", "--out", "o.episodes.zip"]) == 1
    error_line(capsys, "names.csv names image files; pass --data-root DIR")
    assert main(["episodes", "import", str(listing), "--dataset", "cifar-fs", "--data-root", str(world["cifar"]),
                 "--out", "o.episodes.zip"]) == 1
    error_line(capsys, "metaoptnet-pickle (CIFAR_FS_test.pickle), which holds no file names; use --by index")


def test_export_flags_are_checked(world, capsys):
    assert draw(world, "birds") == 0
    drawn = next(world["eps"].iterdir())
    capsys.readouterr()
    assert main(["episodes", "export", str(drawn), "--by", "name"]) == 1
    error_line(capsys, "--by name needs --data-root DIR holding the image-folder test images")
    assert main(["episodes", "export", str(drawn)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "episode,role,class,position" and len(text.splitlines()) == 1 + 6 * 6
    target = world["root"] / "taken.csv"
    target.write_text("something else\n")
    assert main(["episodes", "export", str(drawn), "--out", str(target)]) == 1
    error_line(capsys, "--out", "taken.csv already exists; add --force")
    assert main(["episodes", "export", str(drawn), "--out", str(target), "--force"]) == 0
    assert target.read_text() == text
    assert main(["episodes", "export", str(drawn), "--by", "name", "--data-root", str(world["cars"]),
                 "--image-size", "12"]) == 1
    error_line(capsys, "was drawn from data with fingerprint")


# --------------------------------------------------------------------------- eval --ways
def _eval_cifar(world, run, *extra):
    return main(["eval", "--checkpoint", "none", "--arch", "conv4", "--dataset", "cifar-fs", "--data-root",
                 str(world["cifar"]), "--shots", "1", "--queries", "1", "--episodes", "8", "--episodes-dir",
                 str(world["eps"]), "--out", str(run), *extra])


def test_eval_ways_takes_several_values(world, capsys):
    run = world["root"] / "run"
    assert _eval_cifar(world, run, "--ways", "5", "10", "--shots", "1", "2") == 0
    out = capsys.readouterr().out
    assert "5-way 1-shot" in out and "10-way 2-shot" in out
    df = pd.read_csv(run / "per_episode.csv")
    assert sorted({(w, k) for w, k in zip(df["ways"], df["shots"])}) == [(5, 1), (5, 2), (10, 1), (10, 2)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["ways"] == [5, 10]
    assert [(r["ways"], r["shots"]) for r in summary["results"]] == [(5, 1), (5, 2), (10, 1), (10, 2)]
    assert list(pd.read_csv(run / "summary.csv")["ways"]) == [5, 5, 10, 10]
    assert len(list(world["eps"].iterdir())) == 4
    assert _eval_cifar(world, world["root"] / "dup", "--ways", "5", "5") == 1
    error_line(capsys, "--ways 5 5 lists a value twice")


def test_episode_file_of_another_dataset_is_refused(world, capsys):
    names, sizes = class_structure("fc100", "test")
    path = EpisodeSet.draw(EpisodeSpec(2, 1, 1, 3), dataset="fc100", split="test", class_names=names,
                           class_sizes=sizes).save(world["root"] / default_filename(
                               "fc100", "test", EpisodeSpec(2, 1, 1, 3), structure_identity(names, sizes)))
    assert _eval_cifar(world, world["root"] / "run", "--episode-file", str(path)) == 1
    error_line(capsys, f"--episode-file {path} holds fc100/test episodes", "--dataset fc100")


# --------------------------------------------------------------------------- datasets, finetune
def test_datasets_says_splits_counts_layouts_where_it_looked_and_what_it_found(world, capsys):
    assert main(["datasets", "--data-root", str(world["cifar"])]) == 0
    out = capsys.readouterr().out
    assert f"data root: {world['cifar']}" in out and "FEWSHOT_BENCH_CACHE" in out
    block = out[out.index("cifar-fs (CIFAR-FS)"):out.index("digits (Digits)")]
    assert "splits: train 64, val 16, test 20 classes; 600 images per class" in block
    assert "CIFAR_FS_{split}.pickle" in block and "learn2learn-folders" in block
    assert f"looked in: {world['cifar']}" in block and "CIFAR-FS/" in block
    assert f"found: metaoptnet-pickle (test) in {world['cifar']}" in block
    assert "missing: train, val split(s)" in block
    fc = out[out.index("fc100 (FC100)"):out.index("image-folder (image folder)")]
    assert "found: nothing" in fc
    assert main(["datasets"]) == 0
    assert "data root: none given; pass --data-root DIR" in capsys.readouterr().out


def test_finetune_prints_one_line_per_epoch(world, capsys):
    out = world["root"] / "ck" / "m.pt"
    assert main(["finetune", "--arch", "conv4", "--dataset", "image-folder", "--data-root", str(world["birds"]),
                 "--image-size", "16", "--epochs", "2", "--batch-size", "6", "--loss", "clce", "--val-every", "2",
                 "--val-episodes", "4", "--val-ways", "2", "--val-shots", "1", "--val-queries", "2",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("seed 0 epoch")]
    assert [ln.split()[3] for ln in lines] == ["1/2", "2/2"], err
    assert all("loss " in ln and "(ce " in ln and "contrastive " in ln and " lr " in ln and " s (" in ln
               for ln in lines)
    assert "val " not in lines[0] and " %" in lines[1].split("val ")[1]
    from fewshot_bench.train import read_log

    record = read_log(out.with_name("m.log.jsonl"))[1]
    assert f"loss {record['loss']:.4f}" in lines[1] and f"val {100 * record['val_accuracy']:.2f}" in lines[1]
