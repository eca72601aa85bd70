"""LogisticClient keeps SCAFFOLD's c_i on disk: a killed and resumed run ends bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import covey
from _procs import killed_then_resumed
from covey.models import LogisticClient, logistic_init

SCRIPT = """
import os, signal, sys
from pathlib import Path
import numpy as np
import covey
from covey.models import LogisticClient, logistic_init


def data(cid):
    rng = np.random.default_rng(cid)
    x = rng.normal(size=(10 + 7 * cid, 3)) + cid  # shifted inputs: drift between clients
    return x, (x[:, 0] + rng.normal(size=len(x)) > cid).astype(int)


class Killed(LogisticClient):
    def fit(self, weights, config):
        result = super().fit(weights, config)  # its new c_i is on disk, pending
        if __name__ == "__main__" and config["round"] == 3 and self.cid == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return result


def run(run_dir, controls, resume):
    return covey.simulate(
        lambda cid: Killed(
            cid, *data(cid), lr=0.2, batch_size=4, scaffold_path=Path(controls) / f"c{cid}.bin"
        ),
        num_clients=3,
        rounds=5,
        strategy=covey.Scaffold(num_clients=3, fraction_evaluate=0.0),
        initial_weights=logistic_init(3, 2),
        run_dir=run_dir,
        resume=resume,
    )


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], False)
"""


def test_a_killed_scaffold_run_resumes_with_its_clients_control_variates(
    tmp_path: Path,
) -> None:
    # LogisticClient kept c_i in memory only: a run resumed after a kill started every
    # client's c_i from zero again, and ended elsewhere than the run never stopped.
    namespace, whole = killed_then_resumed(tmp_path, SCRIPT, "scaffold_run", "c")
    # Without the files, the resumed clients start c_i from zero: the weights differ.
    assert not np.array_equal(whole["W"], _memoryless(tmp_path, namespace)["W"])


def _memoryless(tmp_path: Path, namespace: dict[str, Any]) -> dict[str, np.ndarray]:
    """The killed run resumed by clients that keep c_i in memory only."""
    data = namespace["data"]

    def run(resume: bool) -> Any:
        return covey.simulate(
            lambda cid: LogisticClient(cid, *data(cid), lr=0.2, batch_size=4),
            num_clients=3,
            rounds=5 if resume else 2,
            strategy=covey.Scaffold(num_clients=3, fraction_evaluate=0.0),
            initial_weights=logistic_init(3, 2),
            run_dir=tmp_path / "lost_run",
            resume=resume,
        )

    run(False)
    return dict(run(True).weights)


# The run kills itself in the first fit of round 3 while round 2's checkpoint is still
# being written (held here for good): it resumes from round 1 and sends round 2 again, to
# a client that has kept its c_i after round 2 and trained round 3 already.
IN_FLIGHT = SCRIPT.replace(
    'config["round"] == 3 and self.cid == 1', 'config["round"] == 3'
).replace(
    'if __name__ == "__main__":\n',
    """if __name__ == "__main__":
    import threading
    from covey.server._store import RunStore

    real = RunStore.save_round

    def held(self, round, *args, **kwargs):
        if round == 2:
            threading.Event().wait()
        return real(self, round, *args, **kwargs)

    RunStore.save_round = held
""",
)


def test_a_run_killed_while_its_checkpoint_is_written_resumes_with_the_control_variates(
    tmp_path: Path,
) -> None:
    # The c_i file held c_i alone: a client built again from it started round 2 again
    # from its c_i after round 2, and the run ended elsewhere than the one never stopped.
    assert IN_FLIGHT.count("threading.Event().wait()") == 1
    assert 'config["round"] == 3:' in IN_FLIGHT
    killed_then_resumed(tmp_path, IN_FLIGHT, "scaffold_in_flight", "c", saved=1)
