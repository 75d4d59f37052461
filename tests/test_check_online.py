"""`etl check --online` tests both credentials against the (sandbox) APIs."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from etl.cli import cli
from tests.run_fixtures import IC_ENV, IC_TOKEN, KL_ENV, KL_KEY, sandboxes, write_config


def check(config: Path, **env: str) -> Result:
    return CliRunner().invoke(
        cli,
        ["--log-format", "text", "--config", str(config), "check", "--online"],
        env={IC_ENV: IC_TOKEN, KL_ENV: KL_KEY, "ETL_DATABASE_URL": "", **env},
    )


def test_check_online_accepts_good_credentials_and_names_a_bad_one(tmp_path: Path) -> None:
    """Good tokens pass; a wrong Intercom token is exit 3 and a wrong Klaviyo key exit 4, each naming its variable."""
    with sandboxes() as boxes:
        config = write_config(tmp_path / "jobs.yaml", f"sqlite:///{tmp_path}/state.db", boxes.job())
        good = check(config)
        assert good.exit_code == 0, good.output
        assert "shop: ok" in good.stdout and "credentials accepted" in good.stdout
        bad_intercom = check(config, **{IC_ENV: "wrong-intercom-token"})
        assert bad_intercom.exit_code == 3
        assert bad_intercom.stderr.startswith(
            f"etl: error: Intercom rejected the credentials (401): set {IC_ENV}"
        )
        bad_klaviyo = check(config, **{KL_ENV: "pk_wrong_key"})
        assert bad_klaviyo.exit_code == 4
        assert bad_klaviyo.stderr.startswith(
            f"etl: error: Klaviyo rejected the credentials (401): set {KL_ENV}"
        )
        for result in (good, bad_intercom, bad_klaviyo):
            assert (
                "wrong" not in result.output and IC_TOKEN not in result.output and KL_KEY not in result.output
            )
