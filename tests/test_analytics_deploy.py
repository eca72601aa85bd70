"""A deployed query: three `covey site` processes over gRPC with mutual TLS equal the simulation."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _ports import unused_port
from _procs import site_answers
from covey.analytics import Policy, Site, query
from covey.deploy import tls_from_dir
from covey.deploy.certs import init_federation, issue_client
from covey.transport.grpc import GrpcServerTransport

SQL = (
    "SELECT sex, COUNT(*), AVG(age), STDDEV_SAMP(age), MEDIAN(age) "
    "FROM patients WHERE age > 20 GROUP BY sex"
)
POLICY_TOML = """
[policy]
columns = ["sex", "age"]
min_group_size = 5
bounds = { age = [0, 120] }
domains = { sex = ["F", "M", "X"] }
"""


def _frames() -> list[pd.DataFrame]:
    rng = np.random.default_rng(21)
    return [
        pd.DataFrame(
            {
                "sex": rng.choice(["F", "M"], n),
                "age": rng.normal(55, 15, n).round(1),
                "id": np.arange(n),
            }
        )
        for n in (120, 200, 80)
    ]


@pytest.fixture
def site_processes(tmp_path: Path) -> Iterator[tuple[Path, int, list[subprocess.Popen[bytes]]]]:
    certs = tmp_path / "certs"
    init_federation(certs, hosts=("localhost", "127.0.0.1"))
    frames = _frames()
    frames[0].to_parquet(tmp_path / "patients.parquet")
    frames[1].to_csv(tmp_path / "patients.csv", index=False)
    with closing(sqlite3.connect(tmp_path / "h.db")) as con, con:
        frames[2].to_sql("patients", con, index=False)
    sources = [
        str(tmp_path / "patients.parquet"),
        str(tmp_path / "patients.csv"),
        f"sqlite:///{tmp_path / 'h.db'}",
    ]
    (tmp_path / "policy.toml").write_text(POLICY_TOML)
    port = unused_port()  # the sites dial it before the query server listens there
    procs = []
    for i, source in enumerate(sources):
        issue_client(certs, f"site-{i}")
        log = open(tmp_path / f"site-{i}.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(
            subprocess.Popen(
                [
                    sys.executable, "-m", "covey", "site",
                    "--table", f"patients={source}",
                    "--policy", str(tmp_path / "policy.toml"),
                    "--server", f"127.0.0.1:{port}",
                    "--certs", str(certs),
                    "--name", f"site-{i}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env=dict(os.environ),
            )
        )  # fmt: skip
        log.close()
    try:
        yield tmp_path, port, procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


@pytest.mark.slow
def test_a_deployed_query_with_three_site_processes_equals_the_simulated_one(
    site_processes: tuple[Path, int, list[subprocess.Popen[bytes]]],
) -> None:
    tmp, port, procs = site_processes
    policy = Policy(
        columns=["sex", "age"],
        min_group_size=5,
        bounds={"age": (0, 120)},
        domains={"sex": ["F", "M", "X"]},
    )
    simulated = query(
        [Site({"patients": f}, policy, name=f"site-{i}") for i, f in enumerate(_frames())],
        SQL,
        secure=True,
    )
    transport = GrpcServerTransport(f"127.0.0.1:{port}", tls=tls_from_dir(tmp / "certs"))
    try:
        assert transport.wait_for_clients(3, 120), [
            (tmp / f"site-{i}.log").read_text(errors="replace") for i in range(3)
        ]
        deployed = query(transport, SQL, secure=True, timeout=60)
        noisy = query(transport, "SELECT COUNT(*) FROM patients", epsilon=1.0, timeout=60)
    finally:
        transport.close("the query is answered")
    pd.testing.assert_frame_equal(deployed, simulated, rtol=1e-12)
    assert sorted(deployed.attrs["sites"]) == ["site-0", "site-1", "site-2"]
    assert deployed.attrs["suppressed"] == [("X",)]
    spent = noisy.attrs["privacy"]["site_spent"]  # each site's ledger, read after the query
    assert sorted(spent) == ["site-0", "site-1", "site-2"]
    assert all(0.0 < value <= 1.0 + 1e-9 for value in spent.values())

    # the sites join again: now the analyst asks from the command line
    out = tmp / "answer.json"
    cli = subprocess.run(
        [
            sys.executable, "-m", "covey", "query", SQL,
            "--server", f"127.0.0.1:{port}",
            "--sites", "3",
            "--certs", str(tmp / "certs"),
            "--wait-timeout", "120",
            "--json", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert "AVG(age)" in cli.stdout
    answer = json.loads(out.read_text())
    got = pd.DataFrame(answer["data"], columns=answer["columns"])
    assert answer["sql"] == SQL
    assert sorted(answer["attrs"]["sites"]) == ["site-0", "site-1", "site-2"]
    assert answer["attrs"]["suppressed"] == [["X"]]
    np.testing.assert_allclose(
        got["AVG(age)"].astype(float), simulated["AVG(age)"], rtol=1e-12, equal_nan=True
    )
    for p in procs:
        assert p.poll() is None  # a site stays for the next query until it is stopped


def test_a_site_dialling_an_address_its_certificate_does_not_name_gives_server_name(
    tmp_path: Path,
) -> None:
    """``covey site --server-name``, as ``covey client``: the certificate names another host."""
    certs = tmp_path / "certs"
    init_federation(certs, hosts=("query.example.org",))  # not the address dialled
    issue_client(certs, "site-0")
    _frames()[0].to_parquet(tmp_path / "patients.parquet")
    (tmp_path / "policy.toml").write_text(POLICY_TOML)
    transport = GrpcServerTransport("127.0.0.1:0", tls=tls_from_dir(certs))
    command = [
        sys.executable, "-m", "covey", "site",
        "--table", f"patients={tmp_path / 'patients.parquet'}",
        "--policy", str(tmp_path / "policy.toml"),
        "--server", f"127.0.0.1:{transport.port}",
        "--server-name", "query.example.org",
        "--certs", str(certs),
        "--name", "site-0",
        "--once",
    ]  # fmt: skip
    sql = "SELECT COUNT(*) FROM patients"
    answer, out, status = site_answers(transport, command, sql, tmp_path)
    assert answer is not None, out
    assert answer["COUNT(*)"].tolist() == [120.0]
    assert status == 0, out


@pytest.mark.parametrize(
    ("option", "value"), [("--timeout", "-1"), ("--timeout", "nan"), ("--wait-timeout", "-5")]
)
def test_covey_query_refuses_a_bad_timeout_before_it_listens(
    tmp_path: Path, option: str, value: str
) -> None:
    # checked only once the sites had joined (exit status 1), the sites gone by then
    timeouts = {"--timeout": "120", "--wait-timeout": "1", option: value}
    cli = subprocess.run(
        [
            sys.executable, "-m", "covey", "query", "SELECT COUNT(*) FROM t",
            "--server", "127.0.0.1:0", "--insecure", "--no-secure",
            *(part for pair in timeouts.items() for part in pair),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert cli.returncode == 2, cli.stderr
    assert f"{option} must be a positive number of seconds" in cli.stderr
    assert "waiting for" not in cli.stderr
