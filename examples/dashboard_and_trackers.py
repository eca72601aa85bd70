"""Watch federations in the dashboard, log them to TensorBoard and MLflow, write a report.

Needs the extras: pip install 'covey[dashboard,tensorboard,mlflow]'

    python examples/dashboard_and_trackers.py            # two runs and their reports
    python examples/dashboard_and_trackers.py --serve    # two more, watched live

Each invocation names its runs by the time it started (runs/digits-alpha0.1-20261201-101500,
with the same name under tb/ and in MLflow), so the dashboard compares them with earlier ones.

Afterwards:
    covey dashboard runs/                  # http://127.0.0.1:8765/
    tensorboard --logdir tb/
    MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri mlruns/
"""

import argparse
import time

import numpy as np

import covey
from covey.core import RoundRecord
from covey.dashboard import DashboardServer, write_report
from covey.data import dirichlet, load_digits
from covey.models import logistic_evaluate, logistic_init, logistic_sgd_epoch
from covey.trackers import MLflowLogger, TensorBoardLogger

data = load_digits()


class DigitsClient(covey.Client):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def fit(self, weights, config):
        order = np.random.default_rng(config["round"]).permutation(len(self.y))
        new = logistic_sgd_epoch(weights, self.x, self.y, lr=0.5, batch_size=16, order=order)
        return covey.FitResult(weights=new, num_examples=len(self.y))

    def evaluate(self, weights, config):
        loss, accuracy = logistic_evaluate(weights, self.x, self.y)
        return covey.EvaluateResult(
            loss=loss, num_examples=len(self.y), metrics={"accuracy": accuracy}
        )


def central(round, weights):
    loss, accuracy = logistic_evaluate(weights, data.x_test, data.y_test)
    return loss, {"accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true", help="serve the dashboard during the runs")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    serve, rounds = args.serve, args.rounds
    started = time.strftime("%Y%m%d-%H%M%S")  # a run folder holding a run is never written over
    dashboard = DashboardServer("runs", port=8765).start() if serve else None
    if dashboard is not None:
        print(f"dashboard: {dashboard.url}")

    for alpha in (0.1, 1.0):  # strong and mild label skew: compare them in the dashboard
        name = f"digits-alpha{alpha}-{started}"
        parts = dirichlet(data.y_train, num_clients=50, alpha=alpha, seed=0)
        settings = {"clients": 50, "alpha": alpha, "strategy": "FedAvg", "fraction_fit": 0.2}
        with (
            TensorBoardLogger(f"tb/{name}") as tensorboard,
            MLflowLogger("mlruns", experiment="digits", run_name=name, params=settings) as mlflow,
        ):

            def log(record: RoundRecord) -> None:
                tensorboard(record)
                mlflow(record)
                if serve:
                    time.sleep(0.3)  # slow enough to watch the rounds arrive

            def client_fn(cid: int, parts: list[np.ndarray] = parts) -> DigitsClient:
                return DigitsClient(*data.client(parts[cid]))

            result = covey.simulate(
                client_fn=client_fn,
                num_clients=50,
                rounds=rounds,
                strategy=covey.FedAvg(fraction_fit=0.2, fraction_evaluate=0.1),
                initial_weights=logistic_init(64, 10),
                evaluate_fn=central,
                on_round=log,
                run_dir=f"runs/{name}",
            )
        print(f"{name}: test accuracy {result.history.metric('accuracy')[-1][1]:.3f}")
        print(f"report: {write_report(f'runs/{name}', f'{name}-report.html')}")

    if dashboard is not None:
        try:
            input("press Enter to stop the dashboard ")
        except (EOFError, KeyboardInterrupt):  # no terminal to read (stdin closed), or Ctrl-C
            print()
        finally:
            dashboard.stop()


if __name__ == "__main__":
    main()
