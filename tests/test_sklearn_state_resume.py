"""SklearnClient keeps an MLP's optimiser on disk: a killed and resumed run ends bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _procs import killed_then_resumed

SCRIPT = """
import os, signal, sys
from pathlib import Path
import numpy as np
import pytest
import covey
from sklearn.linear_model import SGDClassifier
from sklearn.neural_network import MLPClassifier, MLPRegressor
from covey.sklearn import SklearnClient, initial_params

REGRESSOR = os.environ.get("COVEY_TEST_MODEL") == "mlp-regressor"
CLASSES = None if REGRESSOR else [0, 1]


def data(cid):
    rng = np.random.default_rng(cid)
    x = rng.normal(size=(20 + 5 * cid, 4)) + 0.3 * cid
    if REGRESSOR:
        return x, x @ [1.0, -2.0, 0.5, 0.0] + 0.1 * rng.normal(size=len(x))
    return x, (x[:, 0] + x[:, 1] > 0.3 * cid).astype(int)


class Killed(SklearnClient):
    def fit(self, weights, config):
        result = super().fit(weights, config)  # client 0's state of round 3 is on disk
        if __name__ == "__main__" and config["round"] == 3 and self.cid == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return result


def make(cid=0):
    if os.environ.get("COVEY_TEST_MODEL") == "sgd-average":
        return SGDClassifier(loss="log_loss", average=True, learning_rate="invscaling",
                             eta0=0.1, random_state=cid)
    if REGRESSOR:
        return MLPRegressor(hidden_layer_sizes=(5,), solver="adam", learning_rate_init=0.01,
                            random_state=cid)
    return MLPClassifier(hidden_layer_sizes=(5,), solver="adam", learning_rate_init=0.01,
                         random_state=cid)


def client(cid, states):
    model = make(cid)
    made = Killed(model, *data(cid), classes=CLASSES,
                  state_path=None if states is None else Path(states) / f"s{cid}.bin")
    made.cid = cid
    return made


def run(run_dir, states, resume, rounds=5):
    return covey.simulate(
        lambda cid: client(cid, states),
        num_clients=3,
        rounds=rounds,
        strategy=covey.FedAvg(fraction_evaluate=0.0),
        initial_weights=initial_params(make(), 4, CLASSES, seed=0),
        run_dir=run_dir,
        resume=resume,
    )


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], False)
"""


@pytest.mark.parametrize("model", ["mlp", "sgd-average", "mlp-regressor"])
def test_a_killed_run_resumes_with_its_clients_optimiser_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    # The MLP's Adam moments lived in the model object only: a run resumed after a kill
    # started every client's optimiser afresh and ended elsewhere than the run never stopped.
    # SGDClassifier(average=True) averages from the global weights each round, by its t_.
    # An MLPRegressor keeps its Adam moments as the classifier does.
    monkeypatch.setenv("COVEY_TEST_MODEL", model)
    namespace, whole = killed_then_resumed(tmp_path, SCRIPT, "mlp_run", "s")
    run = namespace["run"]
    # Without the files, the resumed clients start their optimisers afresh.
    run(tmp_path / "lost", None, False, rounds=2)
    lost = dict(run(tmp_path / "lost", None, True).weights)
    assert any(not np.array_equal(lost[k], v) for k, v in whole.items())


def _client(path: Path | None, solver: str, schedule: str) -> Any:
    from sklearn.neural_network import MLPClassifier

    from covey.sklearn import SklearnClient

    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4))
    y = (x[:, 0] - x[:, 2] > 0).astype(int)
    model = MLPClassifier(
        hidden_layer_sizes=(4,),
        solver=solver,
        learning_rate=schedule,
        learning_rate_init=0.05,
        momentum=0.9,
        random_state=0,
    )
    return SklearnClient(model, x, y, classes=[0, 1], epochs=2, state_path=path)


def _configs() -> list[dict[str, Any]]:
    # a rate in some rounds only: a round without one puts the model's own back
    return [{"round": r, **({} if r == 3 else {"lr": 0.01 * r})} for r in range(1, 6)]


def _global(rnd: int, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + rnd)  # the server's model each round, made up
    return {k: (v + 0.01 * rng.normal(size=v.shape)).astype(v.dtype) for k, v in like.items()}


@pytest.mark.parametrize("resent", [3, 2])
@pytest.mark.parametrize(
    ("solver", "schedule"), [("adam", "constant"), ("sgd", "adaptive"), ("sgd", "invscaling")]
)
def test_a_rebuilt_client_trains_on_as_the_one_kept_built(
    tmp_path: Path, solver: str, schedule: str, resent: int
) -> None:
    # Round 2 sent again after round 3 trained: a kill in round 3 while round 2's
    # checkpoint was being written resumes from round 1 (the file kept two rounds only:
    # "is of rounds [3, 2], none before round 2").
    from sklearn.neural_network import MLPClassifier

    from covey.sklearn import initial_params

    start = initial_params(MLPClassifier(hidden_layer_sizes=(4,)), 4, [0, 1], seed=1)
    models = [_global(r, start) for r in range(1, 6)]
    kept = _client(None, solver, schedule)  # kept built: its state in memory only
    whole = [kept.fit(w, c).weights for w, c in zip(models, _configs(), strict=True)]
    path = tmp_path / "rebuilt.covey"
    first = _client(path, solver, schedule)
    for w, c in zip(models[:3], _configs()[:3], strict=True):
        first.fit(w, c)
    # Built again after round 3; round `resent` is sent again (the run resumed before it).
    again = _client(path, solver, schedule)
    for i in range(resent - 1, 5):
        got = again.fit(models[i], _configs()[i]).weights
        for name, value in whole[i].items():
            np.testing.assert_array_equal(got[name], value)
    with pytest.raises(ValueError, match="another run's; delete it"):
        _client(path, solver, schedule).fit(models[0], _configs()[0])


def test_a_model_whose_n_iter_is_an_array_keeps_its_state(tmp_path: Path) -> None:
    # Before: LogisticRegression's n_iter_ (an array) failed every fit with state_path:
    # "TypeError: only 0-dimensional arrays can be converted to Python scalars".
    from sklearn.linear_model import LogisticRegression

    from covey.sklearn import SklearnClient, initial_params

    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4))
    y = (x[:, 0] - x[:, 2] > 0).astype(int)

    def client(path: Path | None) -> Any:
        model = LogisticRegression(max_iter=3)
        return SklearnClient(model, x, y, classes=[0, 1], state_path=path)

    start = initial_params(LogisticRegression(), 4, [0, 1], seed=1)
    models = [_global(r, start) for r in range(1, 4)]
    kept = client(None)
    whole = [kept.fit(w, {"round": r + 1}).weights for r, w in enumerate(models)]
    path = tmp_path / "lr.covey"
    client(path).fit(models[0], {"round": 1})
    again = client(path)
    for r in (1, 2):
        got = again.fit(models[r], {"round": r + 1}).weights
        for name, value in whole[r].items():
            np.testing.assert_array_equal(got[name], value)


def test_a_state_file_not_of_this_client_is_refused_naming_it(tmp_path: Path) -> None:
    # Before: another model's optimiser arrays were set into this one's (failing deep in
    # scikit-learn, or training on from them), and a damaged file's codec error named no file.
    from sklearn.neural_network import MLPClassifier

    from covey.sklearn import initial_params

    path = tmp_path / "state.covey"
    first = _client(path, "adam", "constant")
    start = initial_params(MLPClassifier(hidden_layer_sizes=(4,)), 4, [0, 1], seed=1)
    first.fit(start, {"round": 1})
    other = _client(path, "sgd", "constant")  # momentum velocities, not Adam's moments
    with pytest.raises(ValueError, match="it is not this client's") as refused:
        other.fit(start, {"round": 2})
    assert str(path) in str(refused.value)
    path.write_bytes(path.read_bytes()[:-7])  # truncated
    with pytest.raises(ValueError, match=r"cannot be read .*delete it") as damaged:
        _client(path, "adam", "constant")
    assert str(path) in str(damaged.value)


def test_fits_whose_config_names_no_round_train_on(tmp_path: Path) -> None:
    # Before: every such fit was round 0, so the second one was refused as "of rounds [0],
    # none before round 0: it is another run's".
    from sklearn.neural_network import MLPClassifier

    from covey.sklearn import initial_params

    start = initial_params(MLPClassifier(hidden_layer_sizes=(4,)), 4, [0, 1], seed=1)
    models = [_global(r, start) for r in range(1, 4)]
    kept = _client(None, "adam", "constant")
    whole = [kept.fit(w, {}).weights for w in models]
    path = tmp_path / "state.covey"
    _client(path, "adam", "constant").fit(models[0], {})
    again = _client(path, "adam", "constant")
    for i in (1, 2):
        got = again.fit(models[i], {}).weights
        for name, value in whole[i].items():
            np.testing.assert_array_equal(got[name], value)


def test_a_clients_first_round_sent_again_starts_afresh(tmp_path: Path) -> None:
    # A run killed in a client's first round (round 1, say) and resumed sends that
    # round again: the state file holds that round's state only, and was refused as
    # another run's ("none before round 1"), so the resumed run could not go on.
    from sklearn.neural_network import MLPClassifier

    from covey.sklearn import initial_params

    weights = initial_params(MLPClassifier(hidden_layer_sizes=(4,)), 4, [0, 1], seed=1)
    path = tmp_path / "first.covey"
    first = _client(path, "adam", "constant").fit(weights, {"round": 1}).weights
    again = _client(path, "adam", "constant").fit(weights, {"round": 1}).weights
    for name, value in first.items():
        np.testing.assert_array_equal(again[name], value)
    second = _client(path, "adam", "constant").fit(first, {"round": 2}).weights
    # Killed in round 2 while round 1's checkpoint was written: the run resumes from
    # round 0 and sends round 1 again to a client that trained round 2 already.
    again = _client(path, "adam", "constant").fit(weights, {"round": 1}).weights
    for name, value in first.items():
        np.testing.assert_array_equal(again[name], value)
    replayed = _client(path, "adam", "constant").fit(again, {"round": 2}).weights
    for name, value in second.items():
        np.testing.assert_array_equal(replayed[name], value)
    for rnd in (3, 4):
        _client(path, "adam", "constant").fit(weights, {"round": rnd})
    with pytest.raises(ValueError, match="another run's; delete it"):  # rounds 2-4 kept
        _client(path, "adam", "constant").fit(weights, {"round": 1})


def test_one_state_path_shared_by_two_clients_is_refused(tmp_path: Path) -> None:
    # Before: clients built per task (client_cache=0) each read the state another
    # client had written, and trained on from its optimiser state silently.
    import covey
    from covey.sklearn import initial_params

    path = tmp_path / "shared.covey"
    with pytest.raises(covey.FederationError, match="client 1: ") as info:
        covey.simulate(
            lambda cid: _client(path, "adam", "constant"),
            2,
            1,
            covey.FedAvg(fraction_evaluate=0.0),
            initial_params(_client(None, "adam", "constant").model, 4, [0, 1], seed=1),
            client_cache=0,
            round_timeout=60,
        )
    assert f"the training state in {path} is client 0's, not client 1's" in str(info.value)
