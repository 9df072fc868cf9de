import pytest

from services.common.healthcheck import health_url, main


@pytest.mark.parametrize("host", [None, "", "0.0.0.0", "::"])
def test_a_service_on_every_interface_is_asked_over_loopback(host: str | None) -> None:
    environ = {"MODEL_PORT": "8002"} | ({} if host is None else {"HTTP_HOST": host})
    assert health_url(environ, "MODEL_PORT") == "http://127.0.0.1:8002/health"


def test_a_service_on_one_address_is_asked_there() -> None:
    assert health_url({"HTTP_HOST": "model-api", "PLOT_PORT": "9000"}, "PLOT_PORT") == "http://model-api:9000/health"
    assert health_url({"HTTP_HOST": "::1", "PLOT_PORT": "9000"}, "PLOT_PORT") == "http://[::1]:9000/health"


@pytest.mark.parametrize("environ", [{}, {"METRIC_PORT": ""}, {"METRIC_PORT": "80a"}])
def test_a_missing_or_bad_port_setting_is_named(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="METRIC_PORT"):
        health_url(environ, "METRIC_PORT")


def test_the_setting_must_be_given(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "PORT_SETTING" in capsys.readouterr().err


def test_an_unset_port_setting_fails_the_check_with_its_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEATURES_PORT", raising=False)
    assert main(["FEATURES_PORT"]) == 1
    assert "FEATURES_PORT" in capsys.readouterr().err
