"""lepton search: the space a recipe declares, trials on a tiny model, storage shared by workers."""

from __future__ import annotations

import json
import logging
import os
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


def _journal_states(path: Path) -> list[str]:
    try:
        study = optuna.load_study(study_name="lepton-search", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(path))))
    except KeyError:  # the journal file is there, the study not yet
        return []
    return [t.state.name for t in study.trials]


@pytest.mark.slow
def test_ctrl_c_keeps_finished_trials_and_a_second_run_continues_without_redoing_them(tmp_path, tiny_model_dir):
    # Enough trials that a quiet machine (about 0.6 s a trial) is still searching when Ctrl-C comes.
    path = _recipe(tmp_path, tiny_model_dir, trials=12)
    out = tmp_path / "out"
    cmd = _cli("search", str(path), "-o", str(out), "--no-progress")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while (not (out / "study.journal").is_file() or "COMPLETE" not in _journal_states(out / "study.journal")) \
            and proc.poll() is None:
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    first = optuna.load_study(study_name="lepton-search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    done = {t.number: (t.params, t.values) for t in first.trials if t.state.name == "COMPLETE"}
    assert done and len(done) < 12
    assert json.loads((out / "pareto.json").read_text())["trials_complete"] == len(done)

    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="lepton-search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "FAIL")
                and t.user_attrs.get("failure_kind") != "interrupted"]  # one Ctrl-C cut short does not count
    assert len(finished) == 12
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
