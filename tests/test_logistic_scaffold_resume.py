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
