"""lepton search: the space a recipe declares, trials on a tiny model, storage shared by workers."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lepton.core.errors import RecipeError
from tests.conftest import ROOT, tiny_recipe, write_sentiment_tsv

optuna = pytest.importorskip("optuna", reason="lepton[search] is not installed")

from lepton.search import parse_space, search  # noqa: E402

# ---------------------------------------------------------------------------------------------
# The space


def _space_tree(tmp_path: Path, *stages: dict) -> dict:
    train = write_sentiment_tsv(tmp_path / "train.tsv", 8)
    tree = tiny_recipe(tmp_path / "model", train, train, tmp_path / "out")
    tree["stages"] += list(stages)
    return tree


def test_choices_ranges_and_optional_stages_become_optuna_distributions(tmp_path):
    tree = _space_tree(tmp_path,
                       {"kind": "drop_layers", "strategy": "top", "layers": {"choices": [1, 2]}},
                       {"kind": "prune", "method": "ffn", "optional": True, "sparsity": {"low": 0.2, "high": 0.6}},
                       {"kind": "prune", "method": "heads", "sparsity": {"low": 0, "high": 1, "step": 1}},
                       {"kind": "drop_layers", "keep": {"choices": [[0], [0, 1]]}})
    tree["stages"][3]["sparsity"] = {"low": 0.1, "high": 0.5, "log": True}
    space = parse_space(tree)
    dists = {p.name: p.distribution() for p in space.params}
    assert list(dists) == ["drop_layers.layers", "prune.enabled", "prune.sparsity", "prune-3.sparsity",
                           "drop_layers-4.keep"]
    assert isinstance(dists["drop_layers.layers"], optuna.distributions.CategoricalDistribution)
    assert dists["drop_layers.layers"].choices == (1, 2)
    assert dists["prune.enabled"].choices == (True, False)
    assert isinstance(dists["prune.sparsity"], optuna.distributions.FloatDistribution)
    assert (dists["prune.sparsity"].low, dists["prune.sparsity"].high) == (0.2, 0.6)
    assert dists["prune-3.sparsity"].log
    # Lists are stored as JSON text (Optuna keeps only plain values) and come back as lists.
    keep = space.param("drop_layers-4.keep")
    assert keep.value_of(dists["drop_layers-4.keep"].choices[1]) == [0, 1]

    off = space.plain_recipe({"drop_layers.layers": 2, "prune.enabled": False, "prune-3.sparsity": 0.3,
                              "drop_layers-4.keep": [0]})
    assert [s.name for s in off.stages] == ["finetune", "drop_layers", "prune-3", "drop_layers-4"]
    assert off.stages[1].layers == 2 and off.stages[2].sparsity == 0.3 and off.stages[3].keep == [0]
    on = space.plain_recipe({"prune.enabled": True, "prune.sparsity": 0.25})
    assert [s.name for s in on.stages][:3] == ["finetune", "drop_layers", "prune"]
    assert on.stages[2].sparsity == 0.25


@pytest.mark.parametrize("stage, message", [
    ({"kind": "drop_layers", "strategy": "top", "layers": {"choises": [1, 2]}},
     "stages.1.layers: unknown key 'choises'; did you mean 'choices'?"),
    ({"kind": "prune", "method": "ffn", "sparsity": {"low": 0.2, "hihg": 0.5}},
     "stages.1.sparsity: unknown key 'hihg' in a search space; did you mean 'high'?"),
    ({"kind": "prune", "method": "ffn", "sparsity": {"low": 0.6, "high": 0.2}}, "low must be below high"),
    ({"kind": "prune", "method": "ffn", "sparsity": {"choices": []}}, "give a non-empty list"),
    ({"kind": "prune", "method": "ffn", "sparsity": 0.5, "optional": "yes"}, "stages.1.optional: expected true"),
    ({"kind": {"choices": ["prune", "drop_layers"]}, "method": "ffn"}, "a stage's kind cannot be searched"),
    # Every value is checked: 1.5 is no valid sparsity, and the error names the space and value.
    ({"kind": "prune", "method": "ffn", "sparsity": {"choices": [0.5, 1.5]}},
     "stages.1.sparsity: Input should be less than 1 (got 1.5) [search space prune.sparsity = 1.5]"),
    ({"kind": "prune", "method": "ffn", "sparsity": 0.5, "sparsty": {"choices": [0.5]}},
     "unknown key 'stages.1.sparsty'; did you mean 'sparsity'?"),
    ("drop_layers", "stages.1: each stage is a mapping with a 'kind'"),  # not a ValueError from dict()
])
def test_a_bad_search_space_is_a_recipe_error_naming_the_key(tmp_path, stage, message):
    with pytest.raises(RecipeError) as err:
        parse_space(_space_tree(tmp_path, stage), source="s.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("s.yaml: ")


def test_search_section_and_spaces_outside_stages_are_checked(tmp_path):
    tree = _space_tree(tmp_path, {"kind": "drop_layers", "strategy": "top", "layers": {"choices": [1]}})
    with pytest.raises(RecipeError, match="unknown key 'search.trails'; did you mean 'trials'"):
        parse_space({**tree, "search": {"trails": 3}})
    with pytest.raises(RecipeError, match="seed: only stage settings can be searched"):
        parse_space({**tree, "seed": {"choices": [0, 1]}})


# ---------------------------------------------------------------------------------------------
# Searches on a tiny model


def _recipe(tmp_path: Path, tiny_model_dir: Path, *stages: dict, trials: int = 4, **search: object) -> Path:
    train = write_sentiment_tsv(tmp_path / "train.tsv", 160, seed=1)
    dev = write_sentiment_tsv(tmp_path / "dev.tsv", 48, seed=2)
    tree = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "out", epochs=4)  # learns it: >= 0.9
    tree["evaluate"].update({"robustness": False, "rounds": 1, "memory": False})
    tree["stages"] += list(stages) or [
        {"kind": "drop_layers", "strategy": "top", "layers": {"choices": [1, 2]}},
        {"kind": "prune", "method": "ffn", "importance": "magnitude", "optional": True,
         "sparsity": {"low": 0.2, "high": 0.6}},
    ]
    tree["search"] = {"trials": trials, "sampler": "random", "sampler_seed": 0, **search}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level(logging.INFO, logger="lepton")  # OUT/search.log gets what the CLI would log


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lepton", *args]


def _stage_runs(out: Path, stage: str = "stage 0 (finetune) starts") -> int:
    return (out / "search.log").read_text().count(stage)


def test_a_small_search_finishes_with_front_best_model_and_plain_recipe(tmp_path, tiny_model_dir):
    from lepton import load, load_recipe

    result = search(_recipe(tmp_path, tiny_model_dir), out_dir=tmp_path / "out", progress=False)
    data = json.loads((tmp_path / "out" / "pareto.json").read_text())
    assert data["trials_complete"] + data["trials_failed"] == 4 == result.summary["trials_complete"]
    assert data["front"] and data["best"] in {r["trial"] for r in data["front"]}
    # The fine-tuned baseline was trained once; every trial started from its cached snapshot.
    assert _stage_runs(tmp_path / "out") == 1
    assert all(r["metrics"] and r["speedup_b1"] > 0 for r in data["trials"])
    study = optuna.load_study(study_name="lepton-search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "out" / "study.journal"))))
    reused = [t.user_attrs["stages_reused"] for t in study.trials if "same_as" not in t.user_attrs]
    assert reused and min(reused) >= 1
    # The best model is a normal artifact with its report, and its recipe runs without search.
    best = tmp_path / "out" / "best"
    predictor = load(best / "model")
    assert predictor.predict(["good great movie"])[0]["label"] in ("0", "1")
    report = json.loads((best / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["finetune", f"trial-{data['best']}"]
    plain = load_recipe(best / "recipe.yaml")
    row = next(r for r in data["front"] if r["trial"] == data["best"])
    assert plain.stages[1].layers == row["settings"]["drop_layers.layers"]
    assert "{" not in (best / "recipe.yaml").read_text().split("stages:")[1]  # no space left
    assert (tmp_path / "out" / "pareto.html").read_text().count("<svg") == 1


def test_the_budget_is_a_constraint_and_the_best_model_respects_it(tmp_path, tiny_model_dir):
    # Zeroing 95% of the encoder's weights wrecks the tiny model; 5% leaves it as it was.
    path = _recipe(tmp_path, tiny_model_dir,
                   {"kind": "prune", "method": "magnitude", "sparsity": {"choices": [0.05, 0.95]}},
                   {"kind": "drop_layers", "strategy": "top", "layers": {"choices": [1, 2]}},
                   trials=6, max_drop={"accuracy": 1.0}, sampler="tpe")
    result = search(path, out_dir=tmp_path / "out", progress=False)
    rows = result.summary["trials"]
    outside = [r for r in rows if r["drop_points"]["accuracy"] > 1.0]
    inside = [r for r in rows if r["drop_points"]["accuracy"] <= 1.0]
    assert outside and inside, [(r["settings"], r["drop_points"]) for r in rows]
    assert not any(r["within_budget"] for r in outside)
    assert all(r["within_budget"] for r in inside)
    assert {r["trial"] for r in result.summary["front"]} <= {r["trial"] for r in inside}
    best = next(r for r in rows if r["trial"] == result.summary["best"])
    assert best["drop_points"]["accuracy"] <= 1.0
    # The sampler saw the budget as a constraint (<= 0 within it).
    study = optuna.load_study(study_name="lepton-search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "out" / "study.journal"))))
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        (value,) = t.constraints.values()
        assert (value <= 0) == (t.user_attrs["drop_points"]["accuracy"] <= 1.0)


def test_failed_trials_are_recorded_with_their_reason_and_the_search_goes_on(tmp_path, tiny_model_dir):
    # Layer 7 does not exist in a 2-layer model (found only when the stage runs); an ONNX parity
    # tolerance of 1e-12 cannot be met.
    path = _recipe(tmp_path, tiny_model_dir,
                   {"kind": "drop_layers", "keep": {"choices": [[0], [0, 7]]}},
                   {"kind": "export", "parity_items": 8, "atol": {"choices": [1.0e-12, 0.01]}},
                   trials=6, sampler_seed=10, max_drop={"accuracy": 100.0})  # the seed draws all outcomes
    result = search(path, out_dir=tmp_path / "out", progress=False)
    data = json.loads((tmp_path / "out" / "pareto.json").read_text())
    kinds = {f["kind"] for f in data["failures"]}
    assert kinds == {"stage_error", "parity"}, data["failures"]
    assert all(f["reason"] for f in data["failures"])
    assert any("7" in f["reason"] for f in data["failures"] if f["kind"] == "stage_error")
    assert any("parity" in f["reason"] for f in data["failures"] if f["kind"] == "parity")
    assert data["trials_complete"] >= 1 and data["trials_complete"] + data["trials_failed"] == 6
    assert result.best_dir is not None
    md = (tmp_path / "out" / "pareto.md").read_text()
    assert "## Failed trials" in md and "parity" in md


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# In a process of its own: after the rest of the slow tier, every trial finished before the
# signal could come (seen twice in CI, never alone); .ci/run runs it with pytest -m solo.
@pytest.mark.solo
def test_ctrl_c_keeps_finished_trials_and_a_second_run_continues_without_redoing_them(tmp_path, tiny_model_dir):
    # Enough trials that a quiet machine (about 0.6 s a trial; 12 trials once all finished before the
    # signal in CI) is still searching when Ctrl-C comes.
    path = _recipe(tmp_path, tiny_model_dir, trials=30)
    out = tmp_path / "out"
    cmd = _cli("search", str(path), "-o", str(out), "--no-progress")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    # A finished trial is logged ("trial N: ...") after the journal records it: read the log, a
    # plain file, rather than opening the study while the search writes it.
    while not re.search(r"\btrial \d+: ", _read(out / "search.log")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    first = optuna.load_study(study_name="lepton-search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    done = {t.number: (t.params, t.values) for t in first.trials if t.state.name == "COMPLETE"}
    assert done and len(done) < 30
    assert json.loads((out / "pareto.json").read_text())["trials_complete"] == len(done)

    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="lepton-search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "FAIL")
                and t.user_attrs.get("failure_kind") != "interrupted"]  # one Ctrl-C cut short does not count
    assert len(finished) == 30
    for number, (params, values) in done.items():  # kept as they were, not run again
        assert (study.trials[number].params, study.trials[number].values) == (params, values)
    log = (out / "search.log").read_text()
    for number in done:
        assert log.count(f"trial {number}: ") == 1
    assert _stage_runs(out) == 1  # the baseline came from the cache the second time


def test_a_finished_study_is_not_run_again(tmp_path, tiny_model_dir):
    path = _recipe(tmp_path, tiny_model_dir, trials=2)
    search(path, out_dir=tmp_path / "out", progress=False)
    before = (tmp_path / "out" / "study.journal").read_bytes()
    again = search(path, out_dir=tmp_path / "out", progress=False)
    assert again.summary["trials_complete"] + again.summary["trials_failed"] == 2
    assert (tmp_path / "out" / "study.journal").read_bytes()[:len(before)] == before
    assert "nothing to run" in (tmp_path / "out" / "search.log").read_text()


def _two_workers(cmd: list[str], out: Path) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return results


@pytest.mark.slow
def test_two_workers_fill_one_study_through_the_journal_file(tmp_path, tiny_model_dir):
    path = _recipe(tmp_path, tiny_model_dir, trials=6)
    out = tmp_path / "out"
    results = _two_workers(_cli("search", str(path), "-o", str(out), "--no-progress"), out)
    assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
    study = optuna.load_study(study_name="lepton-search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "FAIL")]
    assert 6 <= len(finished) <= 7  # a worker may finish the trial it started as the other hit 6
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both workers ran trials
    assert _stage_runs(out) == 1  # one worker trained the baseline, the other waited and loaded it


# ---------------------------------------------------------------------------------------------
# PostgreSQL: two workers against a real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    """LEPTON_TEST_POSTGRES_URL if set; else a throwaway server from the installed PostgreSQL
    binaries in a temp folder (as the postgres user when run as root); else skip, saying why."""
    given = os.environ.get("LEPTON_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    pytest.importorskip("psycopg", reason="psycopg (lepton[search]) is not installed")
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    # Debian keeps the server tools out of PATH, in /usr/lib/postgresql/<version>/bin.
    initdb = bins[-1] if bins else Path(shutil.which("initdb") or "initdb").resolve()
    if not initdb.is_file():
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql), and "
                    "LEPTON_TEST_POSTGRES_URL is not set")
    # Not under pytest's temp folder: that one is private to this user, and the server runs as postgres.
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="lepton-pg-"))
    data, port = folder / "data", _free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
        folder.chmod(0o755)
    run = lambda *c: subprocess.run([*as_user, *map(str, c)], capture_output=True, text=True, timeout=120)  # noqa: E731
    made = run(initdb, "-D", data, "-A", "trust", "-U", "lepton", "--no-sync")
    if made.returncode != 0:
        pytest.skip(f"initdb failed: {made.stderr.strip()[-300:]}")
    started = run(initdb.parent / "pg_ctl", "-D", data, "-l", folder / "log", "-w", "-o",
                  f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off", "start")
    if started.returncode != 0:
        pytest.skip(f"PostgreSQL did not start: {started.stderr.strip()[-300:]}")
    try:
        created = run(initdb.parent / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "lepton", "search")
        assert created.returncode == 0, created.stderr
        yield f"postgresql://lepton@127.0.0.1:{port}/search"
    finally:
        run(initdb.parent / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_fill_one_study_in_postgresql(tmp_path, tiny_model_dir, postgres_url):
    path = _recipe(tmp_path, tiny_model_dir, trials=6)
    out = tmp_path / "out"
    cmd = _cli("search", str(path), "-o", str(out), "--no-progress", "--storage", postgres_url,
               "--study-name", f"pg-{os.getpid()}-{time.time_ns()}")
    results = _two_workers(cmd, out)
    assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
    from lepton.search.study import database_url

    study = optuna.load_study(study_name=cmd[-1], storage=database_url(postgres_url))
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "FAIL")]
    assert 6 <= len(finished) <= 7
    assert len({t.user_attrs["worker"] for t in finished}) == 2
    assert not (out / "study.journal").exists()  # the database held the study, not a file
    assert json.loads((out / "pareto.json").read_text())["trials_complete"] >= 1


def test_an_unreachable_database_is_one_clear_error(tmp_path, tiny_model_dir):
    path = _recipe(tmp_path, tiny_model_dir, trials=1)
    r = subprocess.run(_cli("search", str(path), "-o", str(tmp_path / "out"), "--storage",
                            f"postgresql://u:secret@127.0.0.1:{_free_port()}/none"),
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.startswith("lepton: error: --storage postgresql://u:***@127.0.0.1")
    assert "secret" not in r.stderr and "Traceback" not in r.stderr


def test_a_study_refuses_trials_of_another_search_space(tmp_path, tiny_model_dir):
    from lepton.core.errors import SearchError

    search(_recipe(tmp_path, tiny_model_dir, trials=1), out_dir=tmp_path / "out", progress=False)
    other = _recipe(tmp_path, tiny_model_dir,
                    {"kind": "drop_layers", "strategy": "top", "layers": {"choices": [1]}}, trials=2)
    with pytest.raises(SearchError, match="was made for a different search space"):
        search(other, out_dir=tmp_path / "out", progress=False)
    with pytest.raises(SearchError, match="unknown objective 'latncy'; did you mean 'latency'"):
        search(other, out_dir=tmp_path / "other", objectives=["accuracy", "latncy"], progress=False)


def test_cli_search_help_and_bad_flags(tmp_path):
    help_ = subprocess.run(_cli("search", "--help"), env=_env(), capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0 and "--max-drop" in help_.stdout and "example: lepton search" in help_.stdout
    tree = _space_tree(tmp_path, {"kind": "drop_layers", "strategy": "top", "layers": {"choises": [1]}})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(tree))
    bad = subprocess.run(_cli("search", str(tmp_path / "s.yaml")), env=_env(), capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "did you mean 'choices'" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run(_cli("search", str(tmp_path / "s.yaml"), "--max-drop", "accuracy"), env=_env(),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "expected METRIC=POINTS" in bad.stderr


def test_durations_parse():
    from lepton.core.errors import SearchError
    from lepton.search.study import parse_duration

    assert [parse_duration(t) for t in ("2h", "90m", "1h30m", "45s", "3600")] == [7200, 5400, 5400, 45, 3600]
    with pytest.raises(SearchError, match="expected a duration like 2h"):
        parse_duration("two hours")


# ---------------------------------------------------------------------------------------------
# Reliability: bad input is one line before anything trains; a search's own files are checked


def _small_recipe(tmp_path: Path, tiny_model_dir: Path, trials: int = 2, **search_: object) -> Path:
    """A search that trains in about a second: 32 rows, one epoch, two settings."""
    train = write_sentiment_tsv(tmp_path / "train.tsv", 32, seed=1)
    dev = write_sentiment_tsv(tmp_path / "dev.tsv", 16, seed=2)
    tree = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "out", epochs=1)
    tree["evaluate"].update({"robustness": False, "rounds": 1, "memory": False})
    tree["stages"].append({"kind": "drop_layers", "strategy": "top", "layers": {"choices": [1, 2]}})
    tree["search"] = {"trials": trials, "sampler": "random", "sampler_seed": 0, **search_}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    """(recipe, output folder) of a finished two-trial search; tests work on copies."""
    folder = tmp_path_factory.mktemp("finished-search")
    recipe = _small_recipe(folder, tiny_model_dir)
    search(recipe, out_dir=folder / "out", progress=False)
    return recipe, folder / "out"


def _copy_search(finished_search: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished_search[1], tmp_path / "out"))


def _main(capsys, *argv: str) -> tuple[int, str]:
    from lepton.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    return code, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("lepton: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _digests(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_search_writes_only_into_a_folder_it_created(tmp_path, tiny_model_dir, capsys):
    recipe = _small_recipe(tmp_path, tiny_model_dir)
    mine = tmp_path / "mine"
    (mine / "trials" / "3" / "model").mkdir(parents=True)
    (mine / "trials" / "3" / "model" / "weights.bin").write_bytes(b"my own work")
    (mine / "best").mkdir()
    (mine / "best" / "notes.txt").write_text("keep me")
    before = _digests(mine)
    code, err = _main(capsys, "search", str(recipe), "-o", str(mine), "--no-progress")
    assert code == 2 and "is not a Lepton search folder (no lepton-search.json)" in _one_error_line(err)
    assert _digests(mine) == before  # nothing written, nothing removed
    run = tmp_path / "run"
    run.mkdir()
    (run / "lepton-run.json").write_text("{}")
    (run / "report.md").write_text("a run")
    code, err = _main(capsys, "search", str(recipe), "-o", str(run))
    assert code == 2 and "holds a lepton run (lepton-run.json), not a search" in _one_error_line(err)
    (tmp_path / "a-file").write_text("x")
    code, err = _main(capsys, "search", str(recipe), "-o", str(tmp_path / "a-file"))
    assert code == 2 and "is a file, not a folder" in _one_error_line(err)
    code, err = _main(capsys, "search", str(recipe), "-o", "")
    assert code == 2 and "empty name" in _one_error_line(err)
    assert sorted(p.name for p in run.iterdir()) == ["lepton-run.json", "report.md"]


def test_a_search_folder_is_marked_and_continued(finished_search, tmp_path):
    from lepton.search.folder import MARKER

    out = _copy_search(finished_search, tmp_path)
    assert json.loads((out / MARKER).read_text())["what"].startswith("a Lepton search folder")
    again = search(finished_search[0], out_dir=out, trials=3, progress=False)  # continues the study
    assert again.summary["trials_complete"] + again.summary["trials_failed"] == 3
    # A search folder from before the marker (its log beside its study) is recognised too.
    (out / MARKER).unlink()
    search(finished_search[0], out_dir=out, trials=3, progress=False)
    assert (out / MARKER).is_file()


def test_an_alias_bomb_search_recipe_is_refused_at_once(tmp_path, capsys):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\ntask: {kind: sequence_classification}\nstages: [{kind: finetune}]\n")
    (tmp_path / "rec.yaml").write_text("a: &a [*a]\nstages: [{kind: finetune}]\n")
    started = time.monotonic()
    for path in (bomb, tmp_path / "rec.yaml"):
        code, err = _main(capsys, "search", str(path), "-o", str(tmp_path / "out"))
        assert code == 2 and "expands to more than 100,000 values" in _one_error_line(err)
        with pytest.raises(RecipeError, match="expands to more than"):
            parse_space(yaml.safe_load(path.read_text()))
    assert time.monotonic() - started < 20
    assert not (tmp_path / "out").exists()


def _damage(journal: Path, how: str) -> None:
    data = journal.read_bytes()
    lines = data.split(b"\n")
    if how == "garbage appended":
        journal.write_bytes(data + b"garbage\n")
    elif how == "garbage appended, no line end":
        journal.write_bytes(data + b"garbage")
    elif how == "garbage inserted":
        journal.write_bytes(b"\n".join([*lines[:3], b"{not json", *lines[3:]]))
    elif how == "random bytes":
        journal.write_bytes(os.urandom(400))
    elif how == "a JSON list line":
        journal.write_bytes(data + b"[1, 2]\n")
    elif how == "not UTF-8 in a line":
        journal.write_bytes(b"\n".join([*lines[:2], b'{"op_code": "\xff\xfe"}', *lines[2:]]))
    elif how == "truncated mid-record":
        journal.write_bytes(data[: len(data) - 40])


@pytest.mark.parametrize("how", ["garbage appended", "garbage appended, no line end", "garbage inserted",
                                 "random bytes", "a JSON list line", "not UTF-8 in a line"])
def test_a_damaged_journal_is_one_line_naming_it(finished_search, tmp_path, capsys, how):
    out = _copy_search(finished_search, tmp_path)
    journal = out / "study.journal"
    _damage(journal, how)
    damaged = journal.read_bytes()
    code, err = _main(capsys, "search", str(finished_search[0]), "-o", str(out), "--no-progress")
    line = _one_error_line(err)
    assert code == 2 and str(journal) in line and ("delete the file" in line), line
    assert journal.read_bytes() == damaged  # refused, not "repaired" by appending to it
    assert "stage 0 (finetune) starts" not in (out / "search.log").read_text().split("nothing to run")[-1]


def test_a_journal_cut_short_mid_record_loses_only_that_record(finished_search, tmp_path, caplog):
    out = _copy_search(finished_search, tmp_path)
    journal = out / "study.journal"
    intact = journal.read_bytes()
    _damage(journal, "truncated mid-record")
    kept = intact[: intact.rstrip(b"\n").rfind(b"\n") + 1]  # every complete record
    from lepton.search.study import open_storage

    storage = open_storage(None, out)
    assert journal.read_bytes() == kept
    assert "the last record was incomplete" in caplog.text
    assert optuna.load_study(study_name="lepton-search", storage=storage).trials
    result = search(finished_search[0], out_dir=out, progress=False)  # and the search goes on
    assert result.summary["trials_complete"] + result.summary["trials_failed"] == 2


def test_ctrl_c_in_a_trial_is_one_line_not_a_traceback(capfd):
    from lepton.search.study import require_optuna

    opt = require_optuna()

    def objective(trial):
        trial.suggest_int("x", 0, 3)
        raise KeyboardInterrupt

    study = opt.create_study()
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=1)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert study.trials[0].state.name == "FAIL"  # kept in the study, as a trial cut short


def test_ctrl_c_before_the_trials_exits_130_with_one_line(monkeypatch, capsys, tmp_path):
    import lepton.search

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lepton.search, "search", interrupted)
    code, err = _main(capsys, "search", str(tmp_path / "s.yaml"))
    assert code == 130
    assert err.strip().splitlines() == ["lepton: interrupted; run the same command again to continue the study"]


@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], "argument --trials: expected a whole number of 1 or more"),
    (["--trials", "-3"], "argument --trials: expected a whole number of 1 or more"),
    (["--trials", "2.5"], "argument --trials: expected a whole number of 1 or more"),
    (["--objectives", ","], "--objectives ',': an empty name"),
    (["--objectives", ""], "--objectives '': an empty name"),
    (["--objectives", "accuracy,,size"], "an empty name"),
    (["--objectives", "accuracy,accuracy"], "an objective appears twice"),
    (["--objectives", "accuracy,latncy"], "unknown objective 'latncy'; did you mean 'latency'"),
    (["--max-drop", "accuracy=-1"], "--max-drop 'accuracy=-1': expected METRIC=POINTS with POINTS >= 0"),
    (["--max-drop", "accuracy=nan"], "expected METRIC=POINTS with POINTS >= 0"),
    (["--max-drop", "accuracy=inf"], "expected METRIC=POINTS with POINTS >= 0"),
    (["--max-drop", "accuracy"], "expected METRIC=POINTS"),
    (["--max-drop", "=1"], "expected METRIC=POINTS"),
    (["--max-drop", "accuracy=1", "--max-drop", "accuracy=2"], "--max-drop accuracy: given twice"),
    (["--max-drop", "acuracy=1"], "--max-drop acuracy: not a metric of this task; did you mean 'accuracy'"),
    (["--timeout", "0"], "--timeout '0': give a duration above 0"),
    (["--timeout=-5m"], "--timeout '-5m': expected a duration"),
    (["--timeout", "soon"], "--timeout 'soon': expected a duration"),
    (["--storage", ""], "--storage '': empty"),
    (["--study-name", " "], "--study-name ' ': empty"),
    (["--set", "search.trials=0"], "search.trials: Input should be greater than or equal to 1"),
    (["--set", "search.trials=-2"], "search.trials: Input should be greater than or equal to 1"),
    (["--set", "search.max_drop={accuracy: -1}"], "search.max_drop: Value error, accuracy: give the points"),
    (["--set", "search.max_drop={}"], "give at least one METRIC"),
    (["--set", "search.objectives=[]"], "give at least one objective"),
    (["--set", "search.timeout=-1"], "search.timeout"),
    (["--set", "search.sampler_seed=-1"], "search.sampler_seed"),
    (["--set", "search=3"], "search: Input should be a valid dictionary"),
])
def test_bad_search_arguments_fail_before_anything_trains(tmp_path, tiny_model_dir, capsys, args, message):
    recipe = _small_recipe(tmp_path, tiny_model_dir)
    out = tmp_path / "o"
    code, err = _main(capsys, "search", str(recipe), "-o", str(out), "--no-progress", *args)
    assert code == 2, err
    assert message in err.strip().splitlines()[-1], err
    assert "Traceback" not in err
    log = out / "search.log"
    assert not log.exists() or "stage 0 (finetune) starts" not in log.read_text()


def test_a_damaged_prefix_snapshot_is_discarded_and_built_again(finished_search, tmp_path, caplog):
    from lepton.pipeline.artifact import read_manifest

    out = _copy_search(finished_search, tmp_path)
    (snapshot,) = (out / "cache" / "prefix").glob("*/snapshot")  # the fine-tuned baseline
    weights = snapshot / "model.safetensors"
    damaged = bytearray(weights.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    weights.write_bytes(bytes(damaged))
    result = search(finished_search[0], out_dir=out, trials=3, progress=False)
    assert "is damaged" in caplog.text and "checksum mismatch" in caplog.text
    assert read_manifest(snapshot, verify=True)  # rebuilt: its files match their checksums again
    assert weights.read_bytes() != bytes(damaged)
    assert caplog.text.count("stage 0 (finetune) starts") == 1  # trained again, not loaded damaged
    assert result.best_dir is not None and read_manifest(result.best_dir / "model", verify=True)
    # A damaged best model is not taken as written: it is written again.
    best_weights = result.best_dir / "model" / "model.safetensors"
    best_weights.write_bytes(best_weights.read_bytes()[:1000])
    search(finished_search[0], out_dir=out, trials=3, progress=False)
    assert read_manifest(result.best_dir / "model", verify=True)
    # An entry that lost its manifest is no cache entry either: built again, not an error.
    (snapshot / "lepton.json").unlink()
    search(finished_search[0], out_dir=out, trials=3, progress=False)
    assert read_manifest(snapshot, verify=True)
