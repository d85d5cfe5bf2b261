"""`python -m jobs.serve`: expected errors are one line on stderr and exit code 2, before Ray is touched."""

import pytest

from jobs.serve import main


def test_missing_config_is_one_line_exit_2(tmp_path, capsys):
    assert main(["up", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config file not found:") and err.count("\n") == 1


def test_invalid_config_lists_problems_exit_2(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("members: []\npolicy: {name: nope}\n")
    assert main(["up", str(p)]) == 2
    err = capsys.readouterr().err
    assert "data: Field required" in err and "members: List should have at least 1 item" in err
    assert "policy.name" in err and "Traceback" not in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["deploy"])
    assert e.value.code == 2


def test_online_rejects_bad_thresholds_before_touching_ray(capsys):
    assert main(["online", "--name", "x", "--tolerance", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tolerance 1.5 must be in [0, 1]") and err.count("\n") == 1
